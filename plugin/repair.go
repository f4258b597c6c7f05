package plugin

import (
	"context"
	"errors"
	"fmt"

	"github.com/docker/cli/cli/command"
	"github.com/spf13/cobra"

	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/repair"
)

// ExitRepaired: repair fixed the metadata (fsck's "errors corrected").
const ExitRepaired = 1

type repairOptions struct {
	metadata string // a file or device; "" repairs docker's own pool
	root     string // docker's data root, when the daemon is not running
	output   string
	inPlace  bool
	backup   string
	force    bool
	dryRun   bool
	quiet    bool
	json     bool

	stopDaemon    bool
	yes           bool
	reconcile     bool
	reconcileSet  bool // --reconcile was given
	removeOrphans bool

	transactionID uint64
	dataBlockSize uint32
	nrDataBlocks  uint64
	valuesFrom    string
}

const repairExitCodes = `Repair's outcome, as fsck reports it:
  0    nothing to repair: the metadata checks clean
  1    repaired (with --dry-run: repair would change the metadata); the
       result checks clean
  4    damage left: repair cannot fix it yet, or the result does not check
       clean (nothing is installed then); for docker's pool also: docker's
       records still name devices that images or containers use and the
       pool lacks, or holds older than the records say (what repair could
       fix is fixed)
  8    also: the input is locked by another repair, or in use by the kernel

` + exitCodesHelp

func newRepairCommand(dockerCLI command.Cli) *cobra.Command {
	var opts repairOptions
	cmd := &cobra.Command{
		Use:   "repair [--metadata FILE (-o OUT | --in-place | --dry-run)] [OPTIONS]",
		Short: "Repair thin-pool metadata, keeping every mapping that can be read",
		Long: `Repair dm-thin pool metadata: docker's own pool, or a metadata file or
device given with --metadata.

Without --metadata, repair finds docker's pool as 'docker devmapper check'
does and repairs its metadata in place, in these steps:
  1. preflight: docker is stopped (--stop-daemon stops it through systemd
     or docker's init script, after confirmation, and starts it again at
     the end) and docker.socket does not listen, the pool is not active,
     no loop device holds the metadata file, and there is room for a
     backup
  2. a backup of the metadata goes to DATA-ROOT/devicemapper/repair-TIME
     (or --backup DIR)
  3. the repair, shown first and confirmed on the terminal (--yes answers
     for scripts; without a terminal and without --yes it refuses)
  4. the repaired metadata is checked before it replaces the original
  5. docker's records (DATA-ROOT/devicemapper/metadata) are compared with
     the repaired pool: a transaction docker would roll back at start-up,
     deleting a thin device the pool holds, is set back to the pool's
     transaction id (the record is backed up first); devices docker has no
     record of (leaked space) are listed, and dropped from the pool with
     --remove-orphans after confirmation; devices docker still uses are
     never touched; --reconcile=false skips this step
  6. a report
This handles docker's own loop-lvm pool; a pool given to docker
(dm.thinpooldev) belongs to the volume manager that made it. Where the
superblock is lost, the pool's values come from docker's side: the
transaction record, the daemon's block size (or dm.blocksize, or docker's
default) and the data file's size; the report names each source.

With --metadata, repair writes the result to a new file (-o), or replaces
the input (--in-place). The input is never written otherwise, and when
there is nothing to repair nothing is written at all.

What it repairs, least invasive way first:
  - wrong reference counts and leaked blocks, trees intact: both space maps
    are rebuilt from the trees; every tree block stays where it is, so
    snapshots keep sharing and nothing is lost
  - wrong mapped_blocks: corrected from the real count
  - damaged mapping-tree nodes, lost device details, mappings past the end
    of the data device: the trees are rebuilt from every readable mapping,
    keeping leaves that snapshots share shared; ranges lost with damaged
    nodes are filled from older copies of the device's tree where the
    metadata still holds them; the report lists what each device kept,
    lost and took from older trees
  - lost roots (an unreadable top level of the mapping tree or details
    root): a scan of every block finds the trees, and the report says which
    devices were recovered that way and when the state found may be older
It always keeps the pool's transaction id, time, data block size, size and
each device's details, so docker keeps its thin devices. Where the
superblock is lost it never guesses them: give --transaction-id,
--data-block-size and --nr-data-blocks, or --values-from with a dump
(thin_dump's or 'docker devmapper dump' output) or a metadata backup made
before the damage (exit 4 until you do). Options beat the file. A file
older than the damage may hold a lower transaction id than the pool
reached; where a device's details show a higher one, that is used and the
report says so (docker forgets the thin devices it recorded at a later
transaction than the pool's). A size given that way which the mappings
pass is raised to the smallest that holds them, and the report says so:
the kernel never maps past the data device nor lets a pool shrink, so the
size is too small, and dropping those mappings would lose data (a pool so
sized will not activate on a smaller data device). With the superblock's
own size, mappings past it are dropped and listed.

--in-place writes a backup first (FILE.bak, or --backup PATH), then the
repair to a temporary file that is checked before it replaces FILE; killed
at any moment, it leaves the original or the complete repair. Stop docker
and deactivate the pool ('dmsetup remove') before repairing its device.
A device cannot be replaced that way, so --in-place on a device needs
--backup FILE and is done only when it is as safe: the repair is made and
checked in memory, and written only if every block it changes but the
superblock is one the current metadata does not use (so it is for the
usual repair, wrong counts with the trees intact); those blocks go first,
then the superblock, which switches to the repair in one write. Killed at
any moment, the device holds the old metadata or the repair. A repair that
must rewrite blocks in use (a tree rebuild) is refused, nothing written:
repair to a spare device or file with -o and swap it in.

` + repairExitCodes,
		Example: `  # repair docker's pool: stop docker, repair after confirmation, start docker
  sudo docker devmapper repair --stop-daemon

  # the same from a script, with docker already stopped
  sudo docker devmapper repair --yes

  # also drop thin devices docker has no record of, after listing them
  sudo docker devmapper repair --stop-daemon --remove-orphans

  # repair a copy of the metadata into a new file, then check it
  docker devmapper repair --metadata pool-meta.img -o pool-meta.fixed
  docker devmapper check --metadata pool-meta.fixed

  # see what repair would do, writing nothing
  docker devmapper repair --dry-run --metadata pool-meta.img

  # replace the file, keeping a backup beside it
  docker devmapper repair --in-place --metadata pool-meta.img

  # repair the metadata device of a pool made with dmsetup, once removed
  docker devmapper repair --in-place --metadata /dev/sdb1 --backup pool-meta.bak

  # the superblock is lost: take the pool's values from an older dump
  docker devmapper repair --metadata pool-meta.img -o pool-meta.fixed --values-from pool.xml`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.reconcileSet = cmd.Flags().Changed("reconcile")
			if msg := opts.invalid(); msg != "" {
				return usageError(cmd, msg)
			}
			return runRepair(cmd.Context(), dockerCLI, cmd, opts)
		},
		DisableFlagsInUseLine: true,
	}
	flags := cmd.Flags()
	flags.StringVar(&opts.metadata, "metadata", "", "Repair this metadata file or device instead of docker's pool")
	flags.StringVar(&opts.root, "root", "", "Without --metadata: docker's data root, searched when the daemon is not running (default /var/lib/docker)")
	flags.BoolVar(&opts.stopDaemon, "stop-daemon", false, "Without --metadata: stop docker for the repair, and start it again afterwards")
	flags.BoolVarP(&opts.yes, "yes", "y", false, "Without --metadata: do not ask for confirmation")
	flags.BoolVar(&opts.reconcile, "reconcile", true, "Without --metadata: fix docker's records against the repaired pool")
	flags.BoolVar(&opts.removeOrphans, "remove-orphans", false, "Without --metadata: drop thin devices docker has no record of, after listing them")
	flags.StringVarP(&opts.output, "output", "o", "", "Write the repaired metadata to this new file or device")
	flags.BoolVar(&opts.inPlace, "in-place", false, "Replace the metadata file, or rewrite the device where that is safe, after writing a backup")
	flags.StringVar(&opts.backup, "backup", "", "Where --in-place puts the backup (default FILE.bak; needed for a device); without --metadata, the backup folder")
	flags.BoolVar(&opts.force, "force", false, "Let -o overwrite a file or device that holds thin metadata")
	flags.BoolVar(&opts.dryRun, "dry-run", false, "Report what repair would change, and write nothing")
	addQuietFlag(flags, &opts.quiet)
	flags.BoolVar(&opts.json, "json", false, "Print the report as JSON")
	flags.Uint64Var(&opts.transactionID, "transaction-id", 0, "The pool's transaction id, used only if the superblock is lost")
	flags.Uint32Var(&opts.dataBlockSize, "data-block-size", 0, "The pool's data block size in sectors, used only if the superblock is lost")
	flags.Uint64Var(&opts.nrDataBlocks, "nr-data-blocks", 0, "The data device's size in blocks, used only if the superblock is lost")
	flags.StringVar(&opts.valuesFrom, "values-from", "", "Take the pool's transaction id, data block size and size from this dump or metadata backup when the superblock is lost")
	return cmd
}

// invalid says what is wrong with a combination of flags, or "".
func (opts repairOptions) invalid() string {
	switch {
	case opts.quiet && opts.json:
		return "--quiet and --json exclude each other: --quiet prints nothing, --json the full report"
	case opts.metadata == "":
		return opts.invalidPool()
	}
	modes := 0
	for _, on := range []bool{opts.output != "", opts.inPlace, opts.dryRun} {
		if on {
			modes++
		}
	}
	switch {
	case opts.root != "":
		return "--root and --metadata exclude each other: --root is searched for the pool, --metadata names its metadata"
	case opts.stopDaemon || opts.yes || opts.reconcileSet || opts.removeOrphans:
		return "--stop-daemon, --yes, --reconcile and --remove-orphans go with the repair of docker's pool, without --metadata: a file given with --metadata is repaired without asking, and has no docker records beside it"
	case modes == 0:
		return "say where the repair goes: -o FILE for a new file, --in-place to replace the input, or --dry-run to write nothing"
	case modes > 1:
		return "-o, --in-place and --dry-run exclude each other: choose one"
	case opts.backup != "" && !opts.inPlace:
		return "--backup goes with --in-place"
	case opts.force && opts.output == "":
		return "--force goes with -o"
	}
	return ""
}

// invalidPool is invalid for the repair of docker's own pool.
func (opts repairOptions) invalidPool() string {
	switch {
	case opts.output != "":
		return "-o goes with --metadata: docker's pool is repaired in place, after a backup"
	case opts.force:
		return "--force goes with --metadata and -o"
	case opts.dryRun && (opts.stopDaemon || opts.backup != ""):
		return "--dry-run reads a stopped pool and writes nothing: it takes neither --stop-daemon nor --backup"
	case opts.transactionID != 0 || opts.dataBlockSize != 0 || opts.nrDataBlocks != 0 || opts.valuesFrom != "":
		return "--transaction-id, --data-block-size, --nr-data-blocks and --values-from go with --metadata"
	case opts.removeOrphans && !opts.reconcile:
		return "--remove-orphans goes with --reconcile: orphans are the devices docker's records do not name"
	}
	return ""
}

func runRepair(ctx context.Context, dockerCLI command.Cli, cmd *cobra.Command, opts repairOptions) error {
	if opts.metadata == "" {
		return runRepairPool(ctx, dockerCLI, newSystem(dockerCLI), opts)
	}
	fo := repair.FileOptions{
		Input:   opts.metadata,
		Output:  opts.output,
		InPlace: opts.inPlace,
		Backup:  opts.backup,
		Force:   opts.force,
		DryRun:  opts.dryRun,
	}
	flags := cmd.Flags()
	if flags.Changed("transaction-id") {
		fo.TransactionID = &opts.transactionID
	}
	if flags.Changed("data-block-size") {
		fo.DataBlockSize = &opts.dataBlockSize
	}
	if flags.Changed("nr-data-blocks") {
		fo.NrDataBlocks = &opts.nrDataBlocks
	}
	fo.ValuesFrom = opts.valuesFrom
	res, err := repair.RepairFile(ctx, fo)
	if res == nil {
		return repairError(opts.metadata, opts.quiet, err)
	}
	switch {
	case opts.quiet:
	case opts.json:
		if perr := res.WriteJSON(dockerCLI.Out()); perr != nil {
			return operational(fmt.Errorf("cannot print the report: %w", perr), "", opts.quiet)
		}
	default:
		if perr := res.WriteText(dockerCLI.Out()); perr != nil {
			return operational(fmt.Errorf("cannot print the report: %w", perr), "", opts.quiet)
		}
	}
	if err != nil && !errors.Is(err, repair.ErrNotClean) {
		return repairError(opts.metadata, opts.quiet, err)
	}
	return repairExit(res, err)
}

// errRepaired is the cause behind ExitRepaired: not a failure, but a
// change a script must notice.
var errRepaired = errors.New("the metadata was repaired")

// repairError maps an error that stopped a repair to its exit code and a
// message that says what to do next.
func repairError(input string, quiet bool, err error) error {
	switch {
	case errors.Is(err, check.ErrNotMetadata):
		return operational(fmt.Errorf("%s: %w", input, err),
			"give --metadata the pool's metadata device or a copy of it, not the data device", quiet)
	case errors.Is(err, repair.ErrLocked), errors.Is(err, repair.ErrBusy), errors.Is(err, repair.ErrOutputHasMetadata),
		errors.Is(err, repair.ErrBackupExists), errors.Is(err, repair.ErrSameFile), errors.Is(err, repair.ErrDeviceBackup):
		return operational(err, "", quiet)
	case errors.Is(err, repair.ErrDeviceWritten):
		return operational(err, "", quiet)
	case errors.Is(err, repair.ErrInPlaceUnsafe):
		return operational(err, "nothing was written and no backup taken: the device is as it was", quiet)
	}
	return operational(fmt.Errorf("repair failed: %w", err),
		"nothing was installed: the input is as it was; check the paths and free space, then try again", quiet)
}
