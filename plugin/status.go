package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/docker/cli/cli"
	"github.com/docker/cli/cli/command"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// Space thresholds: warn at the first, urge at the second.
const (
	spaceWarn     = 80
	spaceCritical = 90
)

type statusOptions struct {
	root string
	json bool
}

func newStatusCommand(dockerCLI command.Cli) *cobra.Command {
	var opts statusOptions
	cmd := &cobra.Command{
		Use:   "status [OPTIONS]",
		Short: "Show the devicemapper pool, its space and a quick health verdict",
		Long: `Show docker's storage driver and, for devicemapper, the thin pool: its loop
files or devices, data and metadata space used, whether the daemon and the
pool are active, and a quick health verdict from the metadata superblock and
space maps (read-only) and, for an active pool, the kernel's view of it.

When dockerd runs, the daemon is asked (docker info). When it does not, the
daemon is left alone (a request could start it by socket activation) and
docker's data root is searched instead (--root, by default the data-root of
daemon.json or /var/lib/docker).

The quick verdict reads one block; 'docker devmapper check' reads them all.
A daemon that does not use devicemapper is reported as such (exit 0).

` + exitCodesHelp,
		Example: `  # where the pool is and how full it is
  docker devmapper status

  # for a script or a monitoring agent
  docker devmapper status --json

  # docker stopped, data root elsewhere
  docker devmapper status --root /srv/docker`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runStatus(cmd.Context(), dockerCLI, newSystem(dockerCLI), opts)
		},
		DisableFlagsInUseLine: true,
	}
	flags := cmd.Flags()
	flags.StringVar(&opts.root, "root", "", "Docker's data root, searched when the daemon is not running (default /var/lib/docker)")
	flags.BoolVar(&opts.json, "json", false, "Print the status as JSON")
	return cmd
}

// statusReport is what status prints, as text or JSON.
type statusReport struct {
	Driver        string       `json:"driver"` // "" when unknown
	DeviceMapper  bool         `json:"devicemapper"`
	Source        string       `json:"source"` // "daemon" or "root"
	Root          string       `json:"root"`
	EngineVersion string       `json:"engine_version,omitempty"`
	Daemon        daemonReport `json:"daemon"`
	Pool          *poolReport  `json:"pool,omitempty"`
	Health        string       `json:"health"` // ok, warning, damaged, unknown, or none without a pool
	Problems      []string     `json:"problems"`
	Warnings      []string     `json:"warnings"`
	Unknowns      []string     `json:"unknowns"`
	code          int
	notes         []string
}

type daemonReport struct {
	Running  bool   `json:"running"`
	Why      string `json:"why,omitempty"`
	Service  string `json:"service,omitempty"`
	Socket   string `json:"socket,omitempty"`
	APIError string `json:"api_error,omitempty"`
}

type poolReport struct {
	Name           string            `json:"name"`
	Layout         string            `json:"layout"`
	DataFile       string            `json:"data_file,omitempty"`
	MetadataFile   string            `json:"metadata_file,omitempty"`
	DataDevice     string            `json:"data_device,omitempty"`
	MetadataDevice string            `json:"metadata_device,omitempty"`
	Metadata       string            `json:"metadata"`
	Active         *bool             `json:"active"` // null when unknown
	Data           *spaceReport      `json:"data_space,omitempty"`
	MetadataSpace  *spaceReport      `json:"metadata_space,omitempty"`
	Kernel         *kernelReport     `json:"kernel,omitempty"`
	Superblock     *superblockReport `json:"superblock,omitempty"`
	Docker         *deviceSet        `json:"docker_devices,omitempty"`
}

type spaceReport struct {
	Used    uint64  `json:"used"`
	Total   uint64  `json:"total"`
	Percent float64 `json:"percent"`
	Source  string  `json:"source"` // kernel, daemon or superblock
}

type kernelReport struct {
	Mode          string `json:"mode"` // rw, ro, out_of_data_space, or fail
	NeedsCheck    bool   `json:"needs_check"`
	TransactionID uint64 `json:"transaction_id"`
	HeldRoot      uint64 `json:"held_metadata_root"`
	Raw           string `json:"raw"`
}

type superblockReport struct {
	TransactionID     uint64 `json:"transaction_id"`
	DataBlockSize     uint64 `json:"data_block_size"` // bytes
	NeedsCheck        bool   `json:"needs_check"`
	MetadataSnap      uint64 `json:"metadata_snap"`
	DataBlocks        uint64 `json:"data_blocks"`
	DataAllocated     uint64 `json:"data_allocated"`
	MetadataBlocks    uint64 `json:"metadata_blocks"`
	MetadataAllocated uint64 `json:"metadata_allocated"`
}

func runStatus(ctx context.Context, dockerCLI command.Cli, sys *machine, opts statusOptions) error {
	loc := locate(ctx, sys, opts.root)
	if err := ctx.Err(); err != nil {
		return status(ExitError, err, "", false)
	}
	r := assess(loc)
	var err error
	if opts.json {
		enc := json.NewEncoder(dockerCLI.Out())
		enc.SetIndent("", "  ")
		err = enc.Encode(r)
	} else {
		err = r.writeText(dockerCLI.Out())
	}
	if err != nil {
		return operational(fmt.Errorf("cannot print the status: %w", err), "", false)
	}
	switch r.code {
	case ExitClean:
		return nil
	case ExitDamage:
		return cli.StatusError{StatusCode: ExitDamage, Cause: errDamage}
	default:
		// The reasons were printed with the status.
		return cli.StatusError{StatusCode: r.code, Cause: errors.New("status incomplete")}
	}
}

// assess builds the report and its verdict from what locate found.
func assess(loc *located) *statusReport {
	r := &statusReport{Driver: loc.Driver, Root: loc.Root, Source: "root",
		Problems: []string{}, Warnings: []string{}, Unknowns: []string{}}
	r.Daemon = daemonReport{Running: loc.Daemon.Running, Why: loc.Daemon.Why, Service: loc.Daemon.Service, Socket: loc.Daemon.Socket}
	if loc.DaemonErr != nil {
		r.Unknowns = append(r.Unknowns, fmt.Sprintf("whether dockerd runs: %v", loc.DaemonErr))
	}
	if loc.AskErr != nil {
		r.Daemon.APIError = loc.AskErr.Error()
	}
	if loc.Engine != nil {
		r.Source, r.EngineVersion = "daemon", loc.Engine.ServerVersion
	}
	r.DeviceMapper = loc.Driver == "devicemapper"
	if loc.Daemon.SocketActivated() {
		r.notes = append(r.notes, "docker.socket listens while docker.service is down: the daemon was not asked, so as not to start it")
	}
	if loc.Pool == nil {
		r.Health = "none"
		switch {
		case loc.AskErr != nil:
			r.Unknowns = append(r.Unknowns, "the storage driver: the daemon runs but did not answer, and no devicemapper state was found under "+loc.Root)
			r.code = ExitError
		case loc.RootErr != nil:
			msg := fmt.Sprintf("the storage under the data root: %v", loc.RootErr)
			if errors.Is(loc.RootErr, os.ErrPermission) {
				msg += ": run as root"
			}
			r.Unknowns = append(r.Unknowns, msg)
			r.code = ExitError
		case loc.Engine != nil && r.DeviceMapper:
			// FromInfo guarantees a pool for devicemapper; kept for safety.
			r.Unknowns = append(r.Unknowns, "the pool: the daemon named none")
			r.code = ExitError
		}
		return r
	}

	p := loc.Pool
	pr := &poolReport{Name: p.Name, Layout: p.Layout, DataFile: p.DataFile, MetadataFile: p.MetadataFile,
		DataDevice: p.DataDevice, MetadataDevice: p.MetadataDevice, Metadata: p.Metadata, Docker: p.Docker}
	r.Pool = pr
	switch {
	case p.Name == "":
		r.Unknowns = append(r.Unknowns, "the pool's name: docker names a dm.thinpooldev pool only in its configuration; start docker or give its data root with --root")
	case p.ActiveErr != nil:
		r.Unknowns = append(r.Unknowns, fmt.Sprintf("whether the pool is active: %v", p.ActiveErr))
	default:
		active := p.Active
		pr.Active = &active
	}
	if p.Active && !loc.Daemon.Running && p.Layout == layoutLoop {
		r.Warnings = append(r.Warnings, "the pool is active but dockerd is not running: docker did not stop cleanly; 'systemctl start docker' takes the pool over again")
	}

	// Space: the kernel's counts are exact; the daemon's are rounded; the
	// superblock's space maps are what was last committed.
	if k := p.Kernel; k != nil {
		kr := &kernelReport{Mode: k.Status.Mode, NeedsCheck: k.Status.NeedsCheck, TransactionID: k.Status.TransactionID, HeldRoot: k.Status.HeldRoot, Raw: k.Status.Raw}
		pr.Kernel = kr
		switch {
		case k.Status.Failed:
			kr.Mode = "fail"
			r.Problems = append(r.Problems, "the kernel failed the pool (status "+strings.TrimSpace(k.Status.Raw)+"): stop docker, then run 'docker devmapper check'")
		default:
			bs := k.Table.DataBlockSize * 512
			pr.Data = newSpace(k.Status.DataUsed*bs, k.Status.DataTotal*bs, "kernel")
			pr.MetadataSpace = newSpace(k.Status.MetaUsed*block.Size, k.Status.MetaTotal*block.Size, "kernel")
			if k.Status.NeedsCheck {
				r.Problems = append(r.Problems, "the kernel flagged the metadata needs_check: stop docker, then run 'docker devmapper check'")
			}
			switch k.Status.Mode {
			case "ro":
				r.Problems = append(r.Problems, "the kernel switched the pool to read-only after a metadata error: stop docker, then run 'docker devmapper check'")
			case "out_of_data_space":
				r.Warnings = append(r.Warnings, "the pool is out of data space: writes wait or fail; remove unused images and containers, or grow the data device")
			}
			if k.Status.HeldRoot != 0 {
				r.Warnings = append(r.Warnings, fmt.Sprintf("a metadata snapshot is held (block %d): once nothing reads it, release it with 'dmsetup message %s 0 release_metadata_snap'", k.Status.HeldRoot, p.Name))
			}
		}
	} else if p.Active {
		if errors.Is(p.KernelErr, errNotRoot) {
			r.Unknowns = append(r.Unknowns, "the kernel's view of the active pool: run as root to ask device-mapper")
		} else if p.KernelErr != nil {
			r.Unknowns = append(r.Unknowns, fmt.Sprintf("the kernel's view of the active pool: %v", p.KernelErr))
		}
	}
	if pr.Data == nil && loc.Engine != nil && loc.Engine.Pool != nil {
		e := loc.Engine.Pool
		pr.Data = newSpace(e.Data.Used, e.Data.Total, "daemon")
		pr.MetadataSpace = newSpace(e.Metadata.Used, e.Metadata.Total, "daemon")
	}

	sb, err := readSuperblock(p.Metadata, p.Active)
	switch {
	case err == nil:
		pr.Superblock = sb
		if pr.Data == nil {
			bs := sb.DataBlockSize
			pr.Data = newSpace(sb.DataAllocated*bs, sb.DataBlocks*bs, "superblock")
			pr.MetadataSpace = newSpace(sb.MetadataAllocated*block.Size, sb.MetadataBlocks*block.Size, "superblock")
		}
		if sb.NeedsCheck {
			r.Problems = append(r.Problems, "the superblock has needs_check set: the kernel met a metadata error; run 'docker devmapper check' with docker stopped")
		}
		if sb.DataAllocated > sb.DataBlocks {
			r.Problems = append(r.Problems, fmt.Sprintf("the data space map counts %d blocks allocated of %d: run 'docker devmapper check'", sb.DataAllocated, sb.DataBlocks))
		}
		if sb.MetadataAllocated > sb.MetadataBlocks {
			r.Problems = append(r.Problems, fmt.Sprintf("the metadata space map counts %d blocks allocated of %d: run 'docker devmapper check'", sb.MetadataAllocated, sb.MetadataBlocks))
		}
		if sb.MetadataSnap != 0 && p.Kernel == nil {
			r.Warnings = append(r.Warnings, fmt.Sprintf("the superblock records a held metadata snapshot (block %d)", sb.MetadataSnap))
		}
	case errors.Is(err, block.ErrCorrupt), errors.Is(err, errNotSuperblock):
		r.Problems = append(r.Problems, fmt.Sprintf("the superblock is damaged (%v): run 'docker devmapper check'", err))
	case errors.Is(err, os.ErrPermission):
		r.Unknowns = append(r.Unknowns, "the superblock: cannot read "+p.Metadata+": run as root")
	case errors.Is(err, os.ErrNotExist) && p.Layout == layoutDirect && !p.Active:
		r.Unknowns = append(r.Unknowns, "the superblock: the pool is not active, and "+p.Metadata+" is not there: LVM shows a thin pool's metadata volume only while the pool is active, and a pool made with dmsetup is named in docker's configuration without its devices; activate the pool, or give its metadata device with --metadata")
	default:
		r.Unknowns = append(r.Unknowns, fmt.Sprintf("the superblock: %v", err))
	}

	for _, s := range []struct {
		what string
		sp   *spaceReport
	}{{"data", pr.Data}, {"metadata", pr.MetadataSpace}} {
		switch {
		case s.sp == nil:
		case s.sp.Percent >= spaceCritical:
			r.Warnings = append(r.Warnings, fmt.Sprintf("%s space is %.0f%% used: the pool stops when it is full; remove unused images and containers now ('docker system prune'), or grow the pool", s.what, s.sp.Percent))
		case s.sp.Percent >= spaceWarn:
			r.Warnings = append(r.Warnings, fmt.Sprintf("%s space is %.0f%% used: plan to free space ('docker system prune') or grow the pool", s.what, s.sp.Percent))
		}
	}

	switch {
	case len(r.Problems) > 0:
		r.Health, r.code = "damaged", ExitDamage
	case pr.Superblock == nil && p.Kernel == nil:
		r.Health, r.code = "unknown", ExitError
	case len(r.Warnings) > 0:
		r.Health = "warning"
	default:
		r.Health = "ok"
	}
	return r
}

// errNotSuperblock marks a block 0 that verifies but is not a
// dm-thin superblock (wrong magic).
var errNotSuperblock = errors.New("not a dm-thin superblock")

func newSpace(used, total uint64, source string) *spaceReport {
	s := &spaceReport{Used: used, Total: total, Source: source}
	if total > 0 {
		s.Percent = float64(used) * 100 / float64(total)
	}
	return s
}

// readSuperblock reads and verifies block 0 of the metadata, read-only.
// For an active pool the cached pages of the device are dropped first: the
// kernel writes the metadata past the page cache.
func readSuperblock(path string, live bool) (*superblockReport, error) {
	if path == "" {
		return nil, errors.New("no metadata file or device is known")
	}
	f, err := block.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if live {
		dropCache(f)
	}
	s, err := thin.ReadSuperblock(f.Reader, 0)
	if err != nil {
		return nil, err
	}
	if s.Magic != thin.Magic {
		return nil, fmt.Errorf("%w: magic %d", errNotSuperblock, s.Magic)
	}
	return &superblockReport{
		TransactionID:     s.TransactionID,
		DataBlockSize:     uint64(s.DataBlockSize) * 512,
		NeedsCheck:        s.Flags&thin.FlagNeedsCheck != 0,
		MetadataSnap:      uint64(s.MetadataSnap),
		DataBlocks:        s.DataSM.NrBlocks,
		DataAllocated:     s.DataSM.NrAllocated,
		MetadataBlocks:    s.MetadataSM.NrBlocks,
		MetadataAllocated: s.MetadataSM.NrAllocated,
	}, nil
}

// dropCache asks the kernel to forget cached pages of f, so that reads
// see what the pool wrote. Advice only: failure is harmless.
func dropCache(f *block.File) {
	_ = unix.Fadvise(int(f.OS().Fd()), 0, 0, unix.FADV_DONTNEED)
}

// writeText prints the report for a person.
func (r *statusReport) writeText(w io.Writer) error {
	var b strings.Builder
	line := func(k, format string, args ...any) {
		fmt.Fprintf(&b, "%-16s%s\n", k+":", fmt.Sprintf(format, args...))
	}
	drv := r.Driver
	if drv == "" {
		drv = "unknown"
	}
	switch {
	case r.Source == "daemon":
		line("storage driver", "%s (docker %s, from the daemon)", drv, r.EngineVersion)
	default:
		line("storage driver", "%s (from the files under the data root)", drv)
	}
	line("data root", "%s", r.Root)
	d := r.Daemon
	switch {
	case d.Running && d.APIError != "":
		line("daemon", "running (%s), but its API did not answer: %s", d.Why, d.APIError)
	case d.Running:
		line("daemon", "running (%s)", d.Why)
	case d.Socket == "active":
		line("daemon", "not running (docker.socket would start it on demand)")
	default:
		line("daemon", "not running")
	}
	p := r.Pool
	if p == nil {
		for _, n := range r.notes {
			fmt.Fprintf(&b, "note: %s\n", n)
		}
		switch {
		case r.code != ExitClean:
		case r.Source == "daemon":
			fmt.Fprintf(&b, "this daemon does not use devicemapper: there is no thin pool to look at\n")
		case r.Driver != "":
			fmt.Fprintf(&b, "no devicemapper storage under %s: docker uses %s there, not devicemapper\n", r.Root, r.Driver)
		default:
			fmt.Fprintf(&b, "no devicemapper storage under %s: docker does not use devicemapper there (give its data root with --root)\n", r.Root)
		}
		r.writeFindings(&b)
		_, err := io.WriteString(w, b.String())
		return err
	}
	name := p.Name
	if name == "" {
		name = "(name unknown)"
	}
	act := "activity unknown"
	if p.Active != nil && *p.Active {
		act = "active"
	} else if p.Active != nil {
		act = "not active"
	}
	line("pool", "%s (%s), %s", name, p.Layout, act)
	line("data", "%s", joinNonEmpty(p.DataFile, p.DataDevice))
	line("metadata", "%s", joinNonEmpty(p.MetadataFile, p.MetadataDevice))
	if p.Metadata != p.MetadataFile && p.Metadata != p.MetadataDevice {
		line("metadata read", "%s", p.Metadata)
	}
	for _, s := range []struct {
		k  string
		sp *spaceReport
	}{{"data space", p.Data}, {"metadata space", p.MetadataSpace}} {
		if s.sp == nil {
			line(s.k, "unknown")
			continue
		}
		line(s.k, "%s of %s used (%.1f%%, from the %s)", humanSize(s.sp.Used), humanSize(s.sp.Total), s.sp.Percent, s.sp.Source)
	}
	if k := p.Kernel; k != nil {
		held := "no held snapshot"
		if k.HeldRoot != 0 {
			held = fmt.Sprintf("snapshot held at block %d", k.HeldRoot)
		}
		if k.Mode == "fail" {
			line("kernel", "Fail")
		} else {
			line("kernel", "%s, transaction %d, %s, needs_check %s", k.Mode, k.TransactionID, held, onOff(k.NeedsCheck))
		}
	}
	if s := p.Superblock; s != nil {
		line("superblock", "checksum ok, transaction %d, data block %s, needs_check %s", s.TransactionID, humanSize(s.DataBlockSize), onOff(s.NeedsCheck))
	}
	if ds := p.Docker; ds != nil {
		del := ""
		if ds.Deleted > 0 {
			del = fmt.Sprintf(" (%d awaiting deletion)", ds.Deleted)
		}
		line("docker devices", "%d thin devices%s, last transaction %d", ds.Devices, del, ds.OpenTransactionID)
	}
	for _, n := range r.notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	line("health", "%s", r.Health)
	r.writeFindings(&b)
	_, err := io.WriteString(w, b.String())
	return err
}

func (r *statusReport) writeFindings(b *strings.Builder) {
	for _, p := range r.Problems {
		fmt.Fprintf(b, "damage: %s\n", p)
	}
	for _, x := range r.Warnings {
		fmt.Fprintf(b, "warning: %s\n", x)
	}
	for _, u := range r.Unknowns {
		fmt.Fprintf(b, "unknown: %s\n", u)
	}
}

func joinNonEmpty(file, dev string) string {
	switch {
	case file != "" && dev != "":
		return file + " on " + dev
	case file != "":
		return file
	case dev != "":
		return dev
	}
	return "unknown"
}

func onOff(b bool) string {
	if b {
		return "set"
	}
	return "clear"
}

// humanSize prints bytes in decimal units, as docker info does.
func humanSize(n uint64) string {
	units := []string{"B", "kB", "MB", "GB", "TB", "PB", "EB"}
	f := float64(n)
	i := 0
	for f >= 1000 && i < len(units)-1 {
		f /= 1000
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.4g %s", f, units[i])
}
