package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/docker/cli/cli/command"
)

// runCheckPool checks docker's own pool, found as status finds it. An
// inactive pool is read directly; an active one through a metadata
// snapshot reserved for the check and always released.
func runCheckPool(ctx context.Context, dockerCLI command.Cli, sys *machine, opts checkOptions) error {
	loc := locate(ctx, sys, opts.root)
	if err := ctx.Err(); err != nil {
		return status(ExitError, err, "", opts.quiet)
	}
	const giveFile = "or give the metadata device, or a copy of it, with --metadata FILE"
	if err := poolProblem(loc, "check", opts.quiet); err != nil {
		return err
	}
	p := loc.Pool
	switch {
	case p.ActiveErr != nil:
		return operational(fmt.Errorf("cannot tell whether the pool %s is active: %w", p.Name, p.ActiveErr), giveFile, opts.quiet)
	case p.Name == "" && loc.Daemon.Running:
		return operational(errors.New("cannot tell whether the pool is active while dockerd runs: its name is not known"),
			"stop docker and run this again, "+giveFile, opts.quiet)
	case !p.Active:
		if !opts.quiet && !opts.json {
			fmt.Fprintf(dockerCLI.Err(), "checking the inactive pool %s: %s\n", orUnknown(p.Name), p.Metadata)
		}
		return checkFile(ctx, dockerCLI, p.Metadata, p.Metadata, false, loc.Root, opts)
	}
	return checkSnapshot(ctx, dockerCLI, sys, p, opts)
}

// checkSnapshot checks an active pool through a metadata snapshot.
func checkSnapshot(ctx context.Context, dockerCLI command.Cli, sys *machine, p *poolLocation, opts checkOptions) error {
	return withSnapshot(ctx, dockerCLI, sys, p, "check", opts.quiet, func(dev string) error {
		if !opts.quiet && !opts.json {
			fmt.Fprintf(dockerCLI.Err(), "checking the active pool %s through a metadata snapshot of %s\n", p.Name, dev)
		}
		opts.metadataSnap = true
		return checkFile(ctx, dockerCLI, dev, p.Name+" (metadata snapshot of "+dev+")", true, "", opts)
	})
}

// withSnapshot reserves a metadata snapshot of the active pool p, runs f
// with the pool's metadata device, and releases the snapshot on every
// path out, a cancelled f included. verb names the command in messages.
func withSnapshot(ctx context.Context, dockerCLI command.Cli, sys *machine, p *poolLocation, verb string, quiet bool, f func(dev string) error) (err error) {
	name := p.Name
	release := fmt.Sprintf("dmsetup message %s 0 release_metadata_snap", name)
	stopped := "stop docker and " + verb + " the stopped pool"
	if sys.euid() != 0 {
		return operational(fmt.Errorf("the pool %s is active: reading it needs a metadata snapshot, and only root may reserve one", name),
			"run it as root ('sudo docker devmapper "+verb+"'), or "+stopped, quiet)
	}
	c, err := sys.openDM()
	if err != nil {
		return operational(fmt.Errorf("the pool %s is active, and device-mapper cannot be reached to reserve a metadata snapshot: %w", name, err),
			"load the dm_mod module or make /dev/mapper/control available, or "+stopped, quiet)
	}
	defer c.Close()
	tab, st, err := c.Pool(name)
	switch {
	case err != nil:
		return operational(fmt.Errorf("cannot read the status of the pool %s: %w", name, err), stopped, quiet)
	case st.Failed:
		return operational(fmt.Errorf("the kernel failed the pool %s (status %q): no metadata snapshot can be taken", name, st.Raw),
			"stop docker, remove the pool ('dmsetup remove "+name+"') and run this again to read its metadata directly", quiet)
	case st.Mode == "ro":
		return operational(fmt.Errorf("the pool %s is read-only after a metadata error: no metadata snapshot can be taken", name),
			"stop docker, remove the pool ('dmsetup remove "+name+"') and run this again to read its metadata directly", quiet)
	case st.HeldRoot != 0:
		return operational(fmt.Errorf("the pool %s is busy: a metadata snapshot is already held (block %d), and a pool holds only one", name, st.HeldRoot),
			"wait for whoever reads it (thin_ls, a backup) to finish; if nothing does, release it with '"+release+"' and run this again", quiet)
	}
	if _, err := c.ReserveSnapshot(name); err != nil {
		hint := stopped
		switch {
		case errors.Is(err, syscall.EBUSY):
			hint = "another metadata snapshot is held; once nothing reads it, run '" + release + "' and try again"
		case heldNow(c, name):
			// The kernel took the snapshot though the call failed, and
			// none was held before: it is ours to release.
			if rerr := c.ReleaseSnapshot(name); rerr != nil {
				hint = "a metadata snapshot was left held: release it with '" + release + "'"
			}
		}
		return operational(fmt.Errorf("cannot reserve a metadata snapshot of the pool %s: %w", name, err), hint, quiet)
	}
	// Until the snapshot is released, a second Ctrl-C must not kill the
	// process: the first one cancels the work, and the release below
	// runs on the way out. Deferred first, so it ends after the release.
	guard := holdSignals()
	defer guard.release()
	defer func() {
		if rerr := c.ReleaseSnapshot(name); rerr != nil {
			msg := fmt.Errorf("the metadata snapshot of %s is still held: %w", name, rerr)
			if err == nil {
				err = operational(msg, "release it with '"+release+"'", quiet)
				return
			}
			if !quiet {
				fmt.Fprintf(dockerCLI.Err(), "%v\nrelease it with '%s'\n", msg, release)
			}
		}
	}()
	return f(sys.blockDevice(tab.MetadataDev))
}

// heldNow reports whether the pool holds a metadata snapshot.
func heldNow(c dmControl, name string) bool {
	_, st, err := c.Pool(name)
	return err == nil && st.HeldRoot != 0
}

func orUnknown(s string) string {
	if s == "" {
		return "(name unknown)"
	}
	return s
}

// signalGuard keeps SIGINT and SIGTERM from killing the process while it
// is held: they are delivered to a channel nobody reads.
type signalGuard struct{ sigs chan os.Signal }

func holdSignals() *signalGuard {
	g := &signalGuard{sigs: make(chan os.Signal, 1)}
	signal.Notify(g.sigs, os.Interrupt, syscall.SIGTERM)
	return g
}

func (g *signalGuard) release() { signal.Stop(g.sigs) }
