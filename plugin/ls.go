package plugin

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"text/template"

	"github.com/docker/cli/cli"
	"github.com/docker/cli/cli/command"
	"github.com/docker/go-units"
	"github.com/spf13/cobra"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/usage"
	"github.com/docker-devmapper/docker-devmapper/plugin/dockerroot"
)

type lsOptions struct {
	metadata     string
	root         string
	format       string
	sort         string
	metadataSnap bool
	// live: the metadata is the active pool's device, read through a
	// metadata snapshot ls reserved; the running daemon names the owners.
	live bool
	// loc is where runLsPool found the pool; nil with --metadata.
	loc *located
}

func newLsCommand(dockerCLI command.Cli) *cobra.Command {
	var opts lsOptions
	cmd := &cobra.Command{
		Use:   "ls [--metadata FILE] [OPTIONS]",
		Short: "List the pool's thin devices, what owns each and the space it holds",
		Long: `List every thin device in the pool with docker's device hash, what owns it
(an image layer, a container, the base device), its size, and its data as
thin_ls counts it: mapped, exclusive (no other device maps it) and shared
blocks. Totals and a one-line answer to "what uses the pool" close the list.

Owners come from docker's records under --root (the daemon's data root):
devicemapper/metadata/ and the image layer store. Devices the pool holds but
docker does not know (orphans: leaked space), docker devices missing from the
pool, and transaction-id gaps that make docker delete a device at start-up
are reported after the list, on stderr with --format json.

Without --metadata, ls finds docker's pool as 'docker devmapper check'
does: an inactive pool is read directly, an active one through a metadata
snapshot ls reserves and always releases (that needs root), and the running
daemon is asked who owns each device.

The metadata is opened read-only.

` + exitCodesHelp + `
ls exits with 4 when docker's records and the pool disagree in a way that
loses data (a missing device, or a roll-back at start-up).`,
		Example: `  # every device of a stopped pool, biggest first
  docker devmapper ls --metadata /var/lib/docker/devicemapper/devicemapper/metadata --sort size

  # for scripts: one JSON object per device
  docker devmapper ls --metadata pool-meta.img --root /var/lib/docker --format json

  # a Go template per device
  docker devmapper ls --metadata pool-meta.img --format '{{.DeviceID}} {{.Owner}} {{.ExclusiveBlocks}}'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.metadata == "" && opts.metadataSnap {
				return usageError(cmd, "--metadata-snap needs --metadata FILE: without --metadata, ls reserves a metadata snapshot itself when the pool is active")
			}
			if opts.sort != "id" && opts.sort != "size" {
				return usageError(cmd, fmt.Sprintf("--sort %q: use id or size", opts.sort))
			}
			sys := newSystem(dockerCLI)
			if opts.metadata == "" {
				return runLsPool(cmd.Context(), dockerCLI, sys, opts, cmd.Flags().Changed("root"))
			}
			return runLs(cmd.Context(), dockerCLI, sys, opts, cmd.Flags().Changed("root"))
		},
		DisableFlagsInUseLine: true,
	}
	flags := cmd.Flags()
	flags.StringVar(&opts.metadata, "metadata", "", "List the devices of this metadata file or device")
	flags.StringVar(&opts.root, "root", "/var/lib/docker", "Docker's data root, for the owners of the devices (--root= for none)")
	flags.StringVar(&opts.format, "format", "table", "Output format: table, json, or a Go template")
	flags.StringVar(&opts.sort, "sort", "id", "Order: id, or size (most mapped data first)")
	flags.BoolVarP(&opts.metadataSnap, "metadata-snap", "m", false, "List the held metadata snapshot's devices")
	return cmd
}

// lsRow is one device as ls prints it; the JSON names are stable.
type lsRow struct {
	DeviceID        uint32             `json:"device_id"`
	Hash            string             `json:"hash"`
	Owner           *dockerroot.Owner  `json:"owner"`
	Size            uint64             `json:"size"` // docker's virtual size, bytes; 0 unknown
	MappedBlocks    uint64             `json:"mapped_blocks"`
	ExclusiveBlocks uint64             `json:"exclusive_blocks"`
	SharedBlocks    uint64             `json:"shared_blocks"`
	MappedBytes     uint64             `json:"mapped_bytes"`
	ExclusiveBytes  uint64             `json:"exclusive_bytes"`
	SharedBytes     uint64             `json:"shared_bytes"`
	TransactionID   uint64             `json:"transaction_id"`
	CreationTime    uint32             `json:"creation_time"`
	SnapTime        uint32             `json:"snap_time"`
	Findings        []string           `json:"findings,omitempty"`
	record          *dockerroot.Device `json:"-"`
}

// runLsPool lists docker's own pool, found as check finds it.
func runLsPool(ctx context.Context, dockerCLI command.Cli, sys *machine, opts lsOptions, rootGiven bool) error {
	root := ""
	if rootGiven {
		root = opts.root
	}
	loc := locate(ctx, sys, root)
	if err := ctx.Err(); err != nil {
		return status(ExitError, err, "", false)
	}
	if err := poolProblem(loc, "ls", false); err != nil {
		return err
	}
	p := loc.Pool
	if opts.root != "" {
		opts.root = loc.Root // --root= lists the pool alone
	}
	opts.loc = loc
	switch {
	case p.ActiveErr != nil:
		return operational(fmt.Errorf("cannot tell whether the pool %s is active: %w", p.Name, p.ActiveErr), "give the metadata, or a copy of it, with --metadata FILE", false)
	case p.Name == "" && loc.Daemon.Running:
		return operational(errors.New("cannot tell whether the pool is active while dockerd runs: its name is not known"),
			"stop docker and run this again, or give the metadata, or a copy of it, with --metadata FILE", false)
	case !p.Active:
		opts.metadata = p.Metadata
		return runLs(ctx, dockerCLI, sys, opts, false)
	}
	return withSnapshot(ctx, dockerCLI, sys, p, "ls", false, func(dev string) error {
		opts.metadata, opts.metadataSnap, opts.live = dev, true, true
		return runLs(ctx, dockerCLI, sys, opts, false)
	})
}

func runLs(ctx context.Context, dockerCLI command.Cli, sys *machine, opts lsOptions, rootGiven bool) error {
	in, err := block.Open(opts.metadata)
	if err != nil {
		return operational(fmt.Errorf("cannot open the metadata: %w", err), "check the path given to --metadata and that you may read it", false)
	}
	defer in.Close()
	prefetch(in)
	res, err := usage.Run(ctx, in.Reader, usage.Options{MetadataSnap: opts.metadataSnap})
	switch {
	case errors.Is(err, context.Canceled):
		return status(ExitCancelled, err, "", false)
	case errors.Is(err, usage.ErrDamaged):
		return cli.StatusError{StatusCode: ExitDamage, Status: fmt.Sprintf("ls: %s: %v", opts.metadata, err)}
	case err != nil:
		return operational(fmt.Errorf("%s: %w", opts.metadata, err), "give --metadata the pool's metadata file or device", false)
	}

	var rec *dockerroot.Records
	if opts.root != "" { // --root= lists the pool alone
		rec, err = dockerroot.Load(opts.root)
		if err != nil {
			if rootGiven || !errors.Is(err, dockerroot.ErrNoRecords) {
				return operational(fmt.Errorf("reading docker's records: %w", err), "give --root the daemon's data root (docker info: Docker Root Dir), or --root= for the pool alone", false)
			}
			rec = nil // no docker here: list the pool alone
		}
	}
	bytesPer := uint64(res.Superblock.DataBlockSize) * 512
	rows := make([]lsRow, 0, len(res.Devices))
	pool := make([]dockerroot.PoolDevice, 0, len(res.Devices))
	for _, d := range res.Devices {
		r := lsRow{DeviceID: uint32(d.ID), MappedBlocks: d.Mapped, ExclusiveBlocks: d.Exclusive, SharedBlocks: d.Shared,
			MappedBytes: d.Mapped * bytesPer, ExclusiveBytes: d.Exclusive * bytesPer, SharedBytes: d.Shared * bytesPer,
			TransactionID: d.Details.TransactionID, CreationTime: d.Details.CreationTime, SnapTime: d.Details.SnapshottedTime}
		if rec != nil {
			if dr, ok := rec.ByID(r.DeviceID); ok {
				r.record = &dr
				r.Hash, r.Size = dr.Hash, dr.Size
				if o, ok := rec.Owners[dr.Hash]; ok {
					r.Owner = &o
				}
			}
		}
		rows = append(rows, r)
		pool = append(pool, dockerroot.PoolDevice{ID: uint32(d.ID), TransactionID: d.Details.TransactionID})
	}
	if opts.root != "" && (!opts.metadataSnap || opts.live) {
		if err := askOwners(ctx, sys, opts.loc, opts.root, opts.metadata, rows); err != nil {
			fmt.Fprintf(dockerCLI.Err(), "ls: the running daemon was not asked who owns the devices: %v\n", err)
		}
	}
	var findings []dockerroot.Finding
	// A running daemon's records move under the reader: they are compared
	// with the pool only when it is not in use.
	if rec != nil && !opts.live {
		findings = dockerroot.Reconcile(rec, res.Superblock.TransactionID, pool)
		for _, f := range findings {
			if f.DeviceID == nil {
				continue
			}
			if i := slices.IndexFunc(rows, func(r lsRow) bool { return r.DeviceID == *f.DeviceID }); i >= 0 {
				rows[i].Findings = append(rows[i].Findings, string(f.Kind))
			}
		}
	}
	if opts.sort == "size" {
		slices.SortStableFunc(rows, func(a, b lsRow) int { return cmp.Compare(b.MappedBlocks, a.MappedBlocks) })
	}

	out := dockerCLI.Out()
	switch opts.format {
	case "json":
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rows); err != nil {
			return operational(err, "", false)
		}
		printFindings(dockerCLI.Err(), findings)
	case "table", "":
		if err := printLsTable(out, rows, bytesPer, rec != nil); err != nil {
			return operational(err, "", false)
		}
		fmt.Fprintln(out, poolSummary(rows, res.InUse, bytesPer, rec != nil))
		printFindings(out, findings)
	default:
		tmpl, err := template.New("ls").Parse(opts.format)
		if err != nil {
			return cli.StatusError{StatusCode: ExitUsage, Status: fmt.Sprintf("ls: --format: %v", err)}
		}
		for _, r := range rows {
			if err := tmpl.Execute(out, r); err != nil {
				return cli.StatusError{StatusCode: ExitUsage, Status: fmt.Sprintf("ls: --format: %v", err)}
			}
			fmt.Fprintln(out)
		}
		printFindings(dockerCLI.Err(), findings)
	}
	if slices.ContainsFunc(findings, func(f dockerroot.Finding) bool { return f.Severe }) {
		return cli.StatusError{StatusCode: ExitDamage}
	}
	return nil
}

func printFindings(w io.Writer, fs []dockerroot.Finding) {
	for _, f := range fs {
		fmt.Fprintln(w, f.String())
	}
}

func size(b uint64) string {
	if b == 0 {
		return "0B"
	}
	return units.BytesSize(float64(b))
}

func printLsTable(w io.Writer, rows []lsRow, bytesPer uint64, records bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tHASH\tOWNER\tSIZE\tMAPPED\tEXCLUSIVE\tSHARED\tCREATED\tSNAPSHOT")
	var tm, te, ts uint64
	for _, r := range rows {
		hash, owner, sz := "-", "-", "-"
		if r.Hash != "" {
			hash = shortHash(r.Hash)
		}
		switch {
		case r.Owner != nil:
			owner = r.Owner.String()
		case records && r.record == nil:
			owner = "orphan (unknown to docker)"
		}
		if r.Size > 0 {
			sz = size(r.Size)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n", r.DeviceID, hash, owner, sz,
			size(r.MappedBytes), size(r.ExclusiveBytes), size(r.SharedBytes), r.CreationTime, r.SnapTime)
		tm, te, ts = tm+r.MappedBlocks, te+r.ExclusiveBlocks, ts+r.SharedBlocks
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "total: %d devices, %s mapped, %s exclusive, %s shared\n", len(rows), size(tm*bytesPer), size(te*bytesPer), size(ts*bytesPer))
	return err
}

// shortHash cuts docker's 64-digit device hash to 12, keeping a suffix
// such as -init that tells two devices apart.
func shortHash(h string) string {
	hex, suffix, _ := strings.Cut(h, "-")
	if len(hex) > 12 {
		hex = hex[:12]
	}
	if suffix != "" {
		return hex + "-" + suffix
	}
	return hex
}

// poolSummary answers "what uses the pool" in one line: the data in use,
// the part several devices share, and the rest by kind of owner.
func poolSummary(rows []lsRow, inUse, bytesPer uint64, records bool) string {
	byKind := map[string]uint64{}
	var exclusive uint64
	for _, r := range rows {
		kind := "devices"
		switch {
		case r.Owner != nil && strings.HasPrefix(r.Owner.Kind, "container"):
			kind = "containers"
		case r.Owner != nil && r.Owner.Kind == "image layer":
			kind = "image layers"
		case r.Owner != nil:
			kind = r.Owner.Kind
		case records && r.record == nil:
			kind = "orphans (leaked)"
		}
		byKind[kind] += r.ExclusiveBlocks
		exclusive += r.ExclusiveBlocks
	}
	kinds := make([]string, 0, len(byKind))
	for k := range byKind {
		kinds = append(kinds, k)
	}
	slices.SortFunc(kinds, func(a, b string) int { return cmp.Or(cmp.Compare(byKind[b], byKind[a]), strings.Compare(a, b)) })
	parts := []string{fmt.Sprintf("shared by several devices %s", size((inUse-min(inUse, exclusive))*bytesPer))}
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%s %s", k, size(byKind[k]*bytesPer)))
	}
	return fmt.Sprintf("what uses the pool: %s of data in use: %s", size(inUse*bytesPer), strings.Join(parts, ", "))
}
