package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/docker/cli/cli"
	"github.com/docker/cli/cli/command"
	"github.com/spf13/cobra"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/plugin/dockerroot"
)

type checkOptions struct {
	metadata     string // explicit file or device; otherwise find docker's pool
	root         string // docker's data root, when the daemon is not running
	metadataSnap bool
	skipMappings bool
	quiet        bool
	json         bool
}

func newCheckCommand(dockerCLI command.Cli) *cobra.Command {
	var opts checkOptions
	cmd := &cobra.Command{
		Use:   "check [--metadata FILE] [OPTIONS]",
		Short: "Verify the thin-pool metadata behind the devicemapper driver",
		Long: `Verify the thin-pool metadata behind the devicemapper driver: the superblock,
the device details, every mapping, and the reference counts of both space
maps. The metadata is opened read-only and never changed.

Give the pool's metadata device, or a copy of it, with --metadata. Check a
pool that is not in use (docker stopped), or a copy taken while it was
stopped: live metadata changes under the reader.

Without --metadata, check finds docker's pool as 'docker devmapper status'
does: it asks the daemon when dockerd runs, and otherwise looks under the
data root (--root). A pool that is not active is checked directly. An
active pool is checked through a metadata snapshot that check reserves in
the kernel and always releases; that needs root, and only one snapshot can
be held at a time. A snapshot check covers the trees, not the space maps:
for a full check, stop docker first.

` + exitCodesHelp,
		Example: `  # check a copy of the metadata device
  docker devmapper check --metadata /var/tmp/pool-meta.img

  # check docker's own pool, found through the daemon or under /var/lib/docker
  sudo docker devmapper check

  # check the metadata device of a stopped pool, for a script
  docker devmapper check --quiet --metadata /dev/mapper/docker-thinpool_tmeta

  # a report a program can read
  docker devmapper check --json --metadata /var/tmp/pool-meta.img`,
		// Flag combinations are checked with the arguments, before the
		// docker CLI is set up: usage errors come first, even with --quiet.
		Args: func(cmd *cobra.Command, args []string) error {
			if err := noArgs(cmd, args); err != nil {
				return err
			}
			if msg := opts.invalid(); msg != "" {
				return usageError(cmd, msg)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCheck(cmd.Context(), dockerCLI, opts)
		},
		DisableFlagsInUseLine: true,
	}
	flags := cmd.Flags()
	flags.StringVar(&opts.metadata, "metadata", "", "Check this metadata file or device")
	flags.BoolVar(&opts.metadataSnap, "metadata-snap", false, "Check the held metadata snapshot instead of the live trees")
	flags.BoolVar(&opts.skipMappings, "skip-mappings", false, "Check only the top of the trees (quick; skips the space maps)")
	flags.StringVar(&opts.root, "root", "", "Without --metadata: docker's data root, searched when the daemon is not running (default /var/lib/docker)")
	addQuietFlag(flags, &opts.quiet)
	flags.BoolVar(&opts.json, "json", false, "Print the report as JSON")
	return cmd
}

// reconcileReport adds to report how docker's records under root differ
// from the pool's devices.
func reconcileReport(report *check.Report, r *block.Reader, root string) error {
	rec, err := dockerroot.Load(root)
	if err != nil {
		return err
	}
	trans, pool, err := poolDevices(r)
	if err != nil {
		return err
	}
	for _, f := range dockerroot.Reconcile(rec, trans, pool) {
		sev := check.Warning
		if f.Severe {
			sev = check.Fatal
		}
		report.Add(check.Finding{Severity: sev, Area: check.AreaDockerRecords, Dev: f.DeviceID, Message: f.Message})
	}
	return nil
}

// poolDevices reads the pool's transaction id and its thin devices, as
// docker's records are compared with them.
func poolDevices(r *block.Reader) (uint64, []dockerroot.PoolDevice, error) {
	sb, err := thin.ReadSuperblock(r, 0)
	if err != nil {
		return 0, nil, err
	}
	w := thin.NewWalker(r, sb)
	w.Damaged = func(error) {} // the report already says what is damaged
	devs, err := w.Devices()
	if err != nil {
		return 0, nil, err
	}
	pool := make([]dockerroot.PoolDevice, 0, len(devs))
	for _, d := range devs {
		pool = append(pool, dockerroot.PoolDevice{ID: uint32(d.ID), TransactionID: d.Details.TransactionID})
	}
	return sb.TransactionID, pool, nil
}

// invalid says what is wrong with a combination of flags, or "".
func (opts checkOptions) invalid() string {
	switch {
	case opts.quiet && opts.json:
		return "--quiet and --json exclude each other: --quiet prints nothing, --json the full report"
	case opts.metadata == "" && opts.metadataSnap:
		return "--metadata-snap needs --metadata FILE: without --metadata, check reserves a metadata snapshot itself when the pool is active"
	case opts.metadata != "" && opts.root != "":
		return "--root and --metadata exclude each other: --root is searched for the pool, --metadata names its metadata"
	}
	return ""
}

func runCheck(ctx context.Context, dockerCLI command.Cli, opts checkOptions) error {
	if opts.metadata == "" {
		return runCheckPool(ctx, dockerCLI, newSystem(dockerCLI), opts)
	}
	return checkFile(ctx, dockerCLI, opts.metadata, opts.metadata, false, "", opts)
}

// checkFile checks the metadata in path, naming it label in the report.
// live says the pool is active: cached pages are dropped first, and
// opts.metadataSnap must be set.
// checkFile checks the metadata at path. records, when set, is a docker
// data root whose records of the thin devices are compared with the pool
// (only for a pool docker is not using: a running daemon's records move).
func checkFile(ctx context.Context, dockerCLI command.Cli, path, label string, live bool, records string, opts checkOptions) error {
	f, err := block.Open(path)
	if err != nil {
		hint := "check the path given to --metadata and that you may read it"
		if opts.metadata == "" {
			hint = "run as root, or give a copy of the metadata with --metadata FILE"
		}
		return operational(fmt.Errorf("cannot open the metadata: %w", err), hint, opts.quiet)
	}
	defer f.Close()
	if live {
		dropCache(f)
	}

	copts := check.Options{MetadataSnap: opts.metadataSnap, SkipMappings: opts.skipMappings}
	var prog *progressLine
	if !opts.quiet && !opts.json && dockerCLI.Err().IsTerminal() {
		prog = newProgressLine(dockerCLI.Err(), 100*time.Millisecond)
		copts.Progress = prog.update
	}
	report, err := check.Run(ctx, f.Reader, copts)
	prog.clear()
	switch {
	case errors.Is(err, check.ErrNotMetadata):
		return operational(fmt.Errorf("%s: %w", label, err),
			"give --metadata the pool's metadata device or a copy of it, not the data device", opts.quiet)
	case errors.Is(err, thin.ErrNoSnapshot):
		return operational(fmt.Errorf("%s: cannot check: %w", label, err),
			"drop --metadata-snap to check the live metadata", opts.quiet)
	case err != nil:
		return operational(fmt.Errorf("%s: cannot check: %w", label, err),
			"if this is a copy, make sure it holds the whole metadata device", opts.quiet)
	}
	if report.Input == "" {
		report.Input = label
	}
	if records != "" && !opts.metadataSnap && report.Outcome() < check.TreesDamaged {
		if err := reconcileReport(report, f.Reader, records); err != nil && !opts.quiet {
			fmt.Fprintf(dockerCLI.Err(), "check: docker's records were not compared with the pool: %v\n", err)
		}
	}

	switch {
	case opts.quiet:
	case opts.json:
		err = report.WriteJSON(dockerCLI.Out())
	default:
		err = report.WriteText(dockerCLI.Out())
	}
	if err != nil {
		return operational(fmt.Errorf("cannot print the report: %w", err), "", opts.quiet)
	}
	if report.Outcome() == check.Clean {
		return nil
	}
	// The report already ends with the summary; main prints nothing more.
	return cli.StatusError{StatusCode: ExitDamage, Cause: errDamage}
}

// errDamage is the cause behind ExitDamage, for callers using errors.Is.
var errDamage = errors.New("damage found in the metadata")

// progressLine shows how far a check has come on one terminal line,
// rewritten in place with \r at most once per interval.
type progressLine struct {
	w        io.Writer
	interval time.Duration

	mu    sync.Mutex
	last  time.Time
	shown bool
}

func newProgressLine(w io.Writer, interval time.Duration) *progressLine {
	return &progressLine{w: w, interval: interval}
}

// update is a check.Options.Progress callback.
func (p *progressLine) update(phase string, done, total uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if p.shown && now.Sub(p.last) < p.interval && done != total {
		return
	}
	p.last, p.shown = now, true
	if total == 0 {
		fmt.Fprintf(p.w, "\r\x1b[Kchecking %s: %d", phase, done)
		return
	}
	// The engine may count a block read twice; never show more than 100%.
	fmt.Fprintf(p.w, "\r\x1b[Kchecking %s: %d%%", phase, min(done, total)*100/total)
}

// clear erases the progress line, if one was shown. Safe on a nil receiver,
// so callers need not know whether progress was on.
func (p *progressLine) clear() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.shown = false
	}
}
