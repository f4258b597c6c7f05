package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/docker/cli/cli"
	"github.com/docker/cli/cli/command"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/repair"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/plugin/dockerroot"
	"github.com/docker-devmapper/docker-devmapper/plugin/engine"
)

// poolRepair is one repair of docker's own pool, from finding it to
// starting docker again.
type poolRepair struct {
	cli  command.Cli
	sys  *machine
	opts repairOptions
	loc  *located
	// stopped: this repair stopped docker, and starts it again.
	stopped bool
	// backupDir holds the backup of the metadata and of docker's records.
	backupDir string
	res       *repair.Result
	// records: the plan for docker's records, once made; recordsDone says
	// its changes were applied; dropped is the removal of orphans.
	records     *dockerroot.Plan
	recordsDone bool
	dropped     *repair.DropResult
	// started: docker was started again and answered.
	started bool
	stamp   string // the time the repair began, naming the backup folder
	// engine is the running daemon's answer before repair stopped it.
	engine *engine.Facts
	// values are dockerValues, once worked out.
	values *repair.Options
}

// runRepairPool repairs the metadata of docker's loop-lvm pool in place,
// found as check finds it: preflight (docker stopped, or stopped by us
// with --stop-daemon; the pool inactive; room for a backup), backup,
// repair, verify, reconcile docker's records with the repaired pool,
// start docker again if it was stopped here, and report.
func runRepairPool(ctx context.Context, dockerCLI command.Cli, sys *machine, opts repairOptions) error {
	r := &poolRepair{cli: dockerCLI, sys: sys, opts: opts, stamp: sys.now().UTC().Format("20060102T150405Z")}
	quiet := opts.quiet
	if sys.euid() != 0 {
		return operational(errors.New("repairing docker's pool needs root: it reads and replaces the pool's metadata, and may stop docker; nothing was changed"),
			"run it as root ('sudo docker devmapper repair'), or repair a copy of the metadata with --metadata FILE -o OUT", quiet)
	}
	if !opts.yes && !opts.dryRun && !dockerCLI.In().IsTerminal() {
		return cli.StatusError{StatusCode: ExitUsage, Status: "repair replaces the pool's metadata after asking, but there is no terminal to ask on and no --yes: nothing was changed\n" +
			"run it again with --yes to confirm from a script, or with --dry-run to see what it would change"}
	}
	r.loc = locate(ctx, sys, opts.root)
	if err := ctx.Err(); err != nil {
		return status(ExitError, err, "", quiet)
	}
	if err := poolProblem(r.loc, "repair", quiet); err != nil {
		return err
	}
	p := r.loc.Pool
	if p.Layout != layoutLoop {
		return operational(fmt.Errorf("the pool %s was given to docker (dm.thinpooldev or direct-lvm): repair replaces the metadata of docker's own loop-lvm pool only; nothing was changed", orUnknown(p.Name)),
			"for an LVM pool: stop docker, deactivate the pool ('lvchange -an VG/POOL') and have LVM repair it ('lvconvert --repair VG/POOL'), or repair a copy of its metadata with --metadata COPY -o NEW and swap NEW in ('lvconvert --thinpool VG/POOL --poolmetadata VG/NEW'); "+
				"for a pool made with dmsetup: stop docker, remove the pool ('dmsetup remove "+orUnknown(p.Name)+"'), repair its metadata device into a spare one (--metadata DEV -o SPARE) and create the pool again on SPARE", quiet)
	}
	if r.loc.DaemonErr != nil {
		return operational(fmt.Errorf("cannot tell whether dockerd runs: %w; nothing was changed", r.loc.DaemonErr), "", quiet)
	}
	if r.loc.Daemon.SocketActivated() && !opts.dryRun {
		return operational(errors.New("dockerd is stopped, but docker.socket listens: the first request to docker would start dockerd on this pool while repair writes it; nothing was changed"),
			"stop the socket ('systemctl stop docker.socket'), run this again, and start docker afterwards ('systemctl start docker.socket docker.service')", quiet)
	}
	var err error
	if r.loc.Daemon.Running {
		err = r.stopDaemon(ctx)
	}
	if err == nil {
		err = r.repairStopped(ctx)
	}
	if r.stopped {
		err = r.startDaemon(ctx, err)
	}
	if r.opts.json && r.res != nil {
		if perr := r.writeJSON(); perr != nil && err == nil {
			err = perr
		}
	}
	return err
}

// say logs a step on the error stream, unless --quiet.
func (r *poolRepair) say(format string, args ...any) {
	if !r.opts.quiet {
		fmt.Fprintf(r.cli.Err(), format+"\n", args...)
	}
}

// ask asks on the terminal, unless --yes answered already. A "no" and a
// Ctrl-C come back as the error to return.
func (r *poolRepair) ask(ctx context.Context, question string) error {
	if r.opts.yes {
		return nil
	}
	ok, err := confirm(ctx, r.cli.In(), r.cli.Err(), question)
	if err != nil {
		return status(ExitCancelled, err, "", r.opts.quiet)
	}
	if !ok {
		return cli.StatusError{StatusCode: ExitCancelled, Status: "not confirmed: nothing was changed"}
	}
	return nil
}

// stopDaemon stops a running docker, when --stop-daemon allows it, and
// finds the pool again the way docker will on its next start.
func (r *poolRepair) stopDaemon(ctx context.Context) error {
	st, quiet, p := r.loc.Daemon, r.opts.quiet, r.loc.Pool
	switch {
	case r.opts.dryRun:
		return operational(fmt.Errorf("dockerd is running (%s): repair reads the metadata only while docker is stopped, because a live pool changes under the reader; nothing was read", st.Why),
			"'docker devmapper check' checks the live pool; or stop docker ('systemctl stop docker.socket docker.service') and run this again", quiet)
	case !r.opts.stopDaemon:
		return operational(fmt.Errorf("dockerd is running (%s): the pool's metadata cannot be repaired while docker uses it; nothing was changed", st.Why),
			"stop docker ('systemctl stop docker.socket docker.service') and run this again, or add --stop-daemon to have repair stop docker and start it again afterwards", quiet)
	case st.Manager == "":
		return operational(fmt.Errorf("--stop-daemon stops and starts docker through systemd or docker's init script, but neither manages this dockerd (%s); nothing was changed", unmanaged(st)),
			"stop docker the way it was started, run this again without --stop-daemon, and start docker afterwards", quiet)
	}
	// While the pool is active the kernel's device names its metadata; a
	// loop-lvm pool's is the file behind that loop device.
	before := p.file()
	fmt.Fprintf(r.cli.Err(), "repair will stop docker (through %s), repair the metadata of the pool %s (%s) after a backup, and start docker again\n", st.Manager, orUnknown(p.Name), before)
	if err := r.ask(ctx, "type 'yes' to stop docker: "); err != nil {
		return err
	}
	r.engine = r.loc.Engine
	r.say("stopping docker")
	if err := r.sys.daemon.Stop(ctx); err != nil {
		return operational(fmt.Errorf("docker did not stop: %w; nothing was changed", err),
			"see 'systemctl status docker', stop it yourself, and run this again", quiet)
	}
	r.stopped = true
	// Docker's next start finds the pool under the data root it named.
	r.loc = locate(ctx, r.sys, r.loc.Root)
	switch {
	case r.loc.DaemonErr != nil:
		return operational(fmt.Errorf("cannot tell whether dockerd stopped: %w; nothing was changed", r.loc.DaemonErr), "", quiet)
	case r.loc.Daemon.Running:
		return operational(fmt.Errorf("dockerd still runs after it was stopped (%s); nothing was changed", r.loc.Daemon.Why),
			"see what keeps it running ('systemctl status docker docker.socket'), stop it, and run this again", quiet)
	case r.loc.Pool == nil || r.loc.Pool.file() != before:
		found := "no pool"
		if r.loc.Pool != nil {
			found = r.loc.Pool.file()
		}
		return operational(fmt.Errorf("with docker stopped, its pool's metadata is not where the daemon said (%s, found %s); nothing was changed", before, found),
			"give docker's data root with --root, or repair the metadata file itself with --metadata FILE --in-place", quiet)
	}
	return nil
}

// startDaemon starts docker again after a repair that stopped it, and
// waits until it answers; err is the repair's outcome, returned unless
// docker fails to come up.
func (r *poolRepair) startDaemon(ctx context.Context, err error) error {
	quiet := r.opts.quiet
	if ctx.Err() != nil {
		// Ctrl-C: the user wants to stop here, and may look before docker
		// changes anything.
		r.say("docker was left stopped; start it with 'systemctl start docker'")
		return err
	}
	r.say("starting docker")
	if serr := r.sys.daemon.Start(ctx); serr != nil {
		return operational(fmt.Errorf("docker did not start again: %w (%s)", serr, outcome(err)),
			"see why in its log ('journalctl -u docker') and start it with 'systemctl start docker'", quiet)
	}
	facts, werr := waitForDaemon(ctx, r.sys, r.sys.api())
	switch {
	case werr != nil:
		return operational(fmt.Errorf("docker was started but does not answer: %w (%s)", werr, outcome(err)),
			"see why in its log ('journalctl -u docker')", quiet)
	case facts.Pool == nil:
		return operational(fmt.Errorf("docker came up with the %s storage driver, not devicemapper (%s)", facts.Driver, outcome(err)),
			"look at its log ('journalctl -u docker') and at 'docker devmapper status'", quiet)
	}
	r.started = true
	r.say("docker runs again on the pool %s: data %s used, metadata %s used", facts.Pool.PoolName, humanSize(facts.Pool.Data.Used), humanSize(facts.Pool.Metadata.Used))
	return err
}

// outcome says in a few words what a repair that ended with err did.
func outcome(err error) string {
	var st cli.StatusError
	switch {
	case err == nil:
		return "the metadata needed no repair"
	case errors.As(err, &st) && st.StatusCode == ExitRepaired:
		return "the metadata was repaired"
	case errors.As(err, &st) && st.StatusCode == ExitDamage:
		return "damage is left in the metadata"
	}
	return "the repair stopped: " + err.Error()
}

// repairStopped runs the repair once docker is known to be stopped:
// the metadata first, then docker's records against the repaired pool.
func (r *poolRepair) repairStopped(ctx context.Context) error {
	if err := r.preflight(); err != nil {
		return err
	}
	if r.opts.dryRun {
		return r.dryRun(ctx)
	}
	err := r.repairMetadata(ctx)
	var st cli.StatusError
	if err != nil && !(errors.As(err, &st) && st.StatusCode == ExitRepaired) {
		return err
	}
	return r.reconcileThen(ctx, err)
}

// reconcileThen reconciles docker's records once the pool's metadata
// checks clean, and gives the run's outcome: err, the metadata step's
// (nil, or ExitRepaired), unless the records step failed, left what
// docker cannot get past, or changed something.
func (r *poolRepair) reconcileThen(ctx context.Context, err error) error {
	changed, rerr := r.reconcile(ctx)
	if rerr != nil {
		return rerr
	}
	if serr := r.severeLeft(); serr != nil {
		return serr
	}
	if changed && err == nil {
		return cli.StatusError{StatusCode: ExitRepaired, Cause: errRepaired}
	}
	return err
}

// severeLeft is the error for docker's records that still disagree with
// the pool in a way that loses data or that docker cannot get past (a
// device docker uses is missing, or older than docker's record of it):
// nothing repair may change fixes those, and the user must hear it.
func (r *poolRepair) severeLeft() error {
	if r.records == nil {
		return nil
	}
	n := 0
	for _, l := range r.records.Left {
		if l.Severe {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	return status(ExitDamage, fmt.Errorf("docker's records still disagree with the pool in %d place%s that repair may not change (the 'left:' lines above): docker cannot use those devices, or they lack their last writes", n, plural(n)),
		"follow the advice under each 'left:' line once docker runs; 'docker devmapper check' shows what is left", r.opts.quiet)
}

// repairMetadata repairs the pool's metadata in place, after showing what
// would change and asking, unless --yes.
func (r *poolRepair) repairMetadata(ctx context.Context) error {
	p, quiet := r.loc.Pool, r.opts.quiet
	previewed := false
	if !r.opts.yes {
		// Show what would change before asking to replace anything.
		res, err := repair.RepairFile(ctx, repair.FileOptions{Options: r.dockerValues(), Input: p.Metadata, DryRun: true})
		if res == nil || (err != nil && !errors.Is(err, repair.ErrNotClean)) {
			return repairError(p.Metadata, quiet, err)
		}
		r.res = res
		if res.Action == repair.Cannot || err != nil {
			r.printText(res.WriteText)
			return repairExit(res, err)
		}
		if res.Action == repair.Nothing {
			r.say("the pool's metadata checks clean: nothing to repair")
			return nil
		}
		r.printText(res.WriteText)
		if err := r.ask(ctx, fmt.Sprintf("%s\ntype 'yes' to replace %s (the original is kept in %s): ", res.Summary(), p.Metadata, r.backupDir)); err != nil {
			return err
		}
		previewed = true
	}
	if err := os.MkdirAll(r.backupDir, 0o700); err != nil {
		return operational(fmt.Errorf("creating the backup folder: %w; nothing was changed", err), "give another with --backup DIR", quiet)
	}
	defer r.dropEmptyBackup()
	res, err := repair.RepairFile(ctx, repair.FileOptions{
		Options: r.dockerValues(), Input: p.Metadata, InPlace: true, Backup: filepath.Join(r.backupDir, "metadata"),
		Hook: func(s repair.Step) error {
			switch s {
			case repair.StepBackupWritten:
				r.say("backed up %s to %s", p.Metadata, filepath.Join(r.backupDir, "metadata"))
			case repair.StepRenamed:
				r.say("replaced %s with the repaired metadata", p.Metadata)
			case repair.StepSuperblockWritten:
				r.say("wrote the repaired metadata to %s", p.Metadata)
			}
			return nil
		},
	})
	if res == nil {
		return repairError(p.Metadata, quiet, err)
	}
	r.res = res
	switch {
	case res.Action == repair.Nothing:
		r.say("the pool's metadata checks clean: nothing to repair")
	case previewed && res.After != nil:
		// The report was shown before asking; say only how it ended.
		r.say("after the repair: %s", res.After.Summary)
	default:
		r.printText(res.WriteText)
	}
	if err != nil && !errors.Is(err, repair.ErrNotClean) {
		return repairError(p.Metadata, quiet, err)
	}
	return repairExit(res, err)
}

// dropEmptyBackup removes the backup folder if nothing was put in it.
func (r *poolRepair) dropEmptyBackup() {
	if r.backupDir == "" {
		return
	}
	_ = os.Remove(r.backupDir) // fails, as it should, unless empty
	if _, err := os.Stat(r.backupDir); err != nil {
		r.backupDir = ""
	}
}

// reconcile compares docker's records with the pool, now that its
// metadata checks clean, and fixes what can be fixed without touching a
// device docker still uses: a transaction docker would roll back, deleting
// a device the pool holds, is set back to the pool's transaction id. With
// --remove-orphans, devices docker has no record of are dropped from the
// pool after they were listed and confirmed. It reports whether anything
// was changed.
func (r *poolRepair) reconcile(ctx context.Context) (bool, error) {
	if !r.opts.reconcile {
		return false, nil
	}
	p, quiet := r.loc.Pool, r.opts.quiet
	plan, err := r.planRecords()
	if err != nil {
		r.say("docker's records were not compared with the pool: %v", err)
		return false, nil
	}
	r.records = plan
	r.printText(plan.WriteText)
	if r.opts.dryRun {
		return len(plan.Changes) > 0 || (r.opts.removeOrphans && len(plan.Orphans) > 0), nil
	}
	changed := false
	if len(plan.Changes) > 0 {
		if err := r.ask(ctx, "type 'yes' to change docker's records as shown: "); err != nil {
			return false, err
		}
		dir := r.ensureBackupDir()
		if err := plan.Apply(r.loc.Root, filepath.Join(dir, "records")); err != nil {
			return false, operational(fmt.Errorf("docker's records were not fixed: %w", err),
				"the records are as they were, or as the backup in "+filepath.Join(dir, "records")+" holds them; start docker only once the transaction record is right", quiet)
		}
		r.recordsDone, changed = true, true
		r.say("fixed docker's records; the originals are in %s", filepath.Join(dir, "records"))
	}
	if len(plan.Orphans) == 0 {
		return changed, nil
	}
	if !r.opts.removeOrphans {
		r.say("%d thin device%s in the pool docker has no record of: their space is leaked; 'docker devmapper repair --remove-orphans' drops them", len(plan.Orphans), plural(len(plan.Orphans)))
		return changed, nil
	}
	ids := make([]thin.DevID, len(plan.Orphans))
	for i, id := range plan.Orphans {
		ids[i] = thin.DevID(id)
	}
	if !r.opts.yes {
		// Show what would go before asking.
		preview, err := repair.DropFile(ctx, repair.FileOptions{Input: p.Metadata, DryRun: true}, ids)
		if err != nil {
			return changed, operational(fmt.Errorf("the orphan devices cannot be dropped: %w", err), "", quiet)
		}
		r.printText(preview.WriteText)
		if err := r.ask(ctx, fmt.Sprintf("type 'yes' to drop %d orphan device%s from the pool (their data is lost): ", len(ids), plural(len(ids)))); err != nil {
			return changed, err
		}
	}
	dir := r.ensureBackupDir()
	backup := filepath.Join(dir, "metadata")
	if _, err := os.Lstat(backup); err == nil {
		backup = filepath.Join(dir, "metadata.before-remove-orphans")
	}
	res, err := repair.DropFile(ctx, repair.FileOptions{Input: p.Metadata, InPlace: true, Backup: backup}, ids)
	if err != nil {
		return changed, operational(fmt.Errorf("the orphan devices were not dropped: %w", err), "the metadata is as it was, or as "+backup+" holds it", quiet)
	}
	r.dropped = res
	r.printText(res.WriteText)
	r.say("dropped %d orphan device%s, freeing %d data blocks; the metadata before is in %s", len(res.Devices), plural(len(res.Devices)), res.DataBlocksFreed, backup)
	return true, nil
}

// planRecords loads docker's records and plans their fixes against the
// pool's metadata as it is now.
func (r *poolRepair) planRecords() (*dockerroot.Plan, error) {
	rec, err := dockerroot.Load(r.loc.Root)
	if err != nil {
		return nil, err
	}
	f, err := block.Open(r.loc.Pool.Metadata)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	trans, pool, err := poolDevices(f.Reader)
	if err != nil {
		return nil, err
	}
	plan := dockerroot.PlanFixes(rec, trans, pool)
	return &plan, nil
}

// ensureBackupDir makes the backup folder, if the metadata repair did not.
func (r *poolRepair) ensureBackupDir() string {
	if r.backupDir == "" {
		r.backupDir = r.opts.backup
		if r.backupDir == "" {
			r.backupDir = r.defaultBackupDir()
		}
	}
	_ = os.MkdirAll(r.backupDir, 0o700)
	return r.backupDir
}

// defaultBackupDir is DATA-ROOT/devicemapper/repair-TIME, with a number
// added when an earlier repair in the same second took that name.
func (r *poolRepair) defaultBackupDir() string {
	base := filepath.Join(r.loc.Root, "devicemapper", "repair-"+r.stamp)
	dir := base
	for n := 2; ; n++ {
		if _, err := os.Lstat(dir); err != nil {
			return dir
		}
		dir = fmt.Sprintf("%s-%d", base, n)
	}
}

// preflight refuses to go on unless the pool is inactive and no loop
// device holds its metadata file, and makes sure there is room for the
// backup and the repaired copy.
func (r *poolRepair) preflight() error {
	p, quiet := r.loc.Pool, r.opts.quiet
	switch {
	case p.ActiveErr != nil:
		return operational(fmt.Errorf("cannot tell whether the pool %s is active: %w; nothing was changed", p.Name, p.ActiveErr), "", quiet)
	case p.Active:
		return operational(fmt.Errorf("docker is stopped, but the pool %s is still active: the kernel has its metadata open and would overwrite a repair; nothing was changed", p.Name),
			"deactivate it with 'dmsetup remove "+p.Name+"' (after unmounting its thin devices), then run this again", quiet)
	}
	loops, err := r.sys.loopsBacking(p.Metadata)
	switch {
	case err != nil:
		return operational(fmt.Errorf("cannot read the metadata file: %w; nothing was changed", err), "", quiet)
	case len(loops) > 0:
		return operational(fmt.Errorf("the metadata file %s is attached to %s: whoever uses that loop device would go on with the old file; nothing was changed", p.Metadata, strings.Join(loops, ", ")),
			"detach it with 'losetup -d "+strings.Join(loops, " ")+"' once nothing uses it, then run this again", quiet)
	}
	if r.opts.dryRun {
		return nil
	}
	r.backupDir = r.opts.backup
	if r.backupDir == "" {
		r.backupDir = r.defaultBackupDir()
	}
	if _, err := os.Lstat(r.backupDir); err == nil {
		return operational(fmt.Errorf("the backup folder %s already exists; nothing was changed", r.backupDir), "give another with --backup DIR", quiet)
	}
	need, err := allocated(p.Metadata)
	if err != nil {
		return operational(fmt.Errorf("cannot read the metadata file: %w; nothing was changed", err), "", quiet)
	}
	// The backup, and the repaired copy written beside the original.
	need *= 2
	free, err := r.sys.freeSpace(filepath.Dir(r.backupDir))
	if err != nil {
		return operational(fmt.Errorf("cannot tell how much space is free for the backup: %w; nothing was changed", err), "give a folder on another file system with --backup DIR", quiet)
	}
	if free < need {
		return operational(fmt.Errorf("there is not enough space for the backup and the repaired copy: %s needed, %s free under %s; nothing was changed", humanSize(need), humanSize(free), filepath.Dir(r.backupDir)),
			"free some space, or give a folder on another file system with --backup DIR", quiet)
	}
	return nil
}

// dockerValues are the pool's values as docker's side knows them, which
// the repair uses only where the superblock has lost them: the
// transaction docker recorded last, the data block size the daemon
// reported (before repair stopped it) or its configuration sets, and the
// data file's size in such blocks. The report names each source.
func (r *poolRepair) dockerValues() repair.Options {
	if r.values == nil {
		o := r.readDockerValues()
		r.values = &o
	}
	return *r.values
}

// readDockerValues works dockerValues out, reading docker's records and
// the data file.
func (r *poolRepair) readDockerValues() repair.Options {
	var o repair.Options
	p := r.loc.Pool
	if rec, err := dockerroot.Load(r.loc.Root); err == nil && rec.Transaction != nil {
		t := rec.Transaction.OpenTransactionID
		o.TransactionID = &t
		o.TransactionIDFrom = "docker's transaction record " + filepath.Join(r.loc.Root, filepath.FromSlash(dockerroot.TransactionFile))
	}
	var sectors uint32
	cfg := readDaemonConfig(r.sys.daemonConfig)
	switch n, ok := blockSizeSectors(cfg.BlockSize); {
	case r.engine != nil && r.engine.Pool != nil && r.engine.Pool.PoolBlocksize >= 512:
		sectors = uint32(r.engine.Pool.PoolBlocksize / 512)
		o.DataBlockSizeFrom = "the daemon's Pool Blocksize, asked before it was stopped"
	case ok:
		sectors = n
		o.DataBlockSizeFrom = "dm.blocksize=" + cfg.BlockSize + " in " + r.sys.daemonConfig
	case cfg.BlockSize == "":
		sectors = 128
		o.DataBlockSizeFrom = "docker's default data block size, 64 KiB (" + r.sys.daemonConfig + " sets no dm.blocksize)"
	}
	if sectors != 0 {
		o.DataBlockSize = &sectors
		if fi, err := os.Stat(p.DataFile); err == nil && p.DataFile != "" {
			n := uint64(fi.Size()) / (uint64(sectors) * 512)
			o.NrDataBlocks = &n
			o.NrDataBlocksFrom = fmt.Sprintf("the size of the data file %s (%d bytes) in blocks of %d sectors", p.DataFile, fi.Size(), sectors)
		}
	}
	return o
}

// blockSizeSectors reads dm.blocksize as docker does (a size in bytes
// with an optional binary unit: 64K, 512k, 1M, 1MiB) and gives it in
// 512-byte sectors; ok is false for a value docker would refuse.
func blockSizeSectors(v string) (sectors uint32, ok bool) {
	v = strings.TrimSpace(v)
	num := strings.TrimRightFunc(v, func(r rune) bool { return r > '9' || r < '0' })
	unit := strings.ToLower(strings.TrimSpace(v[len(num):]))
	unit = strings.TrimSuffix(strings.TrimSuffix(unit, "b"), "i")
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, false
	}
	shift := map[string]uint{"": 0, "k": 10, "m": 20, "g": 30}
	sh, known := shift[unit]
	if !known || n > 1<<32 {
		return 0, false
	}
	bytes := n << sh
	// docker wants a multiple of 64 KiB, as the kernel does, up to 1 GiB.
	if bytes == 0 || bytes%65536 != 0 || bytes > 1<<30 {
		return 0, false
	}
	return uint32(bytes / 512), true
}

// file is where the pool keeps its metadata when it is not active: the
// metadata loop file of a loop-lvm pool, whose active pool the kernel's
// loop device names instead.
func (p *poolLocation) file() string {
	if p.MetadataFile != "" {
		return p.MetadataFile
	}
	return p.Metadata
}

// allocated is how many bytes the file at path takes on disk: a sparse
// metadata file holds far less than its size.
func allocated(path string) (uint64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Blocks) * 512, nil
	}
	return uint64(fi.Size()), nil
}

// dryRun reports what a repair would change, writing nothing.
func (r *poolRepair) dryRun(ctx context.Context) error {
	p := r.loc.Pool
	res, err := repair.RepairFile(ctx, repair.FileOptions{Options: r.dockerValues(), Input: p.Metadata, DryRun: true})
	if res == nil || (err != nil && !errors.Is(err, repair.ErrNotClean)) {
		return repairError(p.Metadata, r.opts.quiet, err)
	}
	r.res = res
	r.printText(res.WriteText)
	if res.Action != repair.Nothing {
		if res.Action != repair.Cannot && err == nil {
			r.say("docker's records are compared with the pool once its metadata is repaired")
		}
		return repairExit(res, err)
	}
	return r.reconcileThen(ctx, nil)
}

// printText prints part of the report, unless --quiet or --json (which
// prints one document at the end).
func (r *poolRepair) printText(write func(io.Writer) error) {
	if r.opts.quiet || r.opts.json {
		return
	}
	if err := write(r.cli.Out()); err != nil {
		r.say("cannot print the report: %v", err)
	}
}

// writeJSON prints the whole run as one document: where the pool is, the
// backup, the repair's own report, docker's records and the orphans
// dropped.
func (r *poolRepair) writeJSON() error {
	var b bytes.Buffer
	if err := r.res.WriteJSON(&b); err != nil {
		return operational(fmt.Errorf("cannot print the report: %w", err), "", false)
	}
	p := r.loc.Pool
	doc := struct {
		Pool           string             `json:"pool"`
		Metadata       string             `json:"metadata"`
		Backup         string             `json:"backup,omitempty"`
		DryRun         bool               `json:"dry_run"`
		DaemonStopped  bool               `json:"daemon_stopped"`
		DaemonStarted  bool               `json:"daemon_started"`
		Repair         json.RawMessage    `json:"repair"`
		Records        *dockerroot.Plan   `json:"records"`
		RecordsApplied bool               `json:"records_applied"`
		Dropped        *repair.DropResult `json:"dropped_orphans"`
	}{p.Name, p.Metadata, r.backupDir, r.opts.dryRun, r.stopped, r.started, b.Bytes(), r.records, r.recordsDone, r.dropped}
	enc := json.NewEncoder(r.cli.Out())
	enc.SetIndent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return operational(fmt.Errorf("cannot print the report: %w", err), "", false)
	}
	return nil
}

// repairExit turns a finished repair into its exit status.
func repairExit(res *repair.Result, err error) error {
	switch {
	case errors.Is(err, repair.ErrNotClean):
		return cli.StatusError{StatusCode: ExitDamage, Cause: err}
	case res.Action == repair.Nothing:
		return nil
	case res.Action == repair.Cannot:
		return cli.StatusError{StatusCode: ExitDamage, Cause: repair.ErrCannotRepair}
	case res.After != nil && res.After.Outcome != check.Clean:
		return cli.StatusError{StatusCode: ExitDamage, Cause: errDamage}
	}
	return cli.StatusError{StatusCode: ExitRepaired, Cause: errRepaired}
}
