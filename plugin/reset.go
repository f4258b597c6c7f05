package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/cli/cli"
	"github.com/docker/cli/cli/command"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/spf13/cobra"

	"github.com/docker-devmapper/docker-devmapper/plugin/daemon"
	"github.com/docker-devmapper/docker-devmapper/plugin/engine"
)

// removeTimeout bounds one container or image removal: deleting thin
// devices takes longer than the other Engine calls.
const removeTimeout = 2 * time.Minute

// startWait is how long reset waits for a restarted daemon to answer.
const startWait = 90 * time.Second

type resetOptions struct {
	removeImages bool
	yes          bool
	purge        bool
	keepPool     bool
}

func newResetCommand(dockerCLI command.Cli) *cobra.Command {
	var opts resetOptions
	cmd := &cobra.Command{
		Use:   "reset --remove-images [OPTIONS]",
		Short: "Last resort: remove every image and container and start over with a new pool",
		Long: `Give docker a new, empty devicemapper pool when the old one cannot be
repaired. Everything stored in the pool is lost: every image, and every
container (they all use an image). Volumes are kept. Try 'docker devmapper
check' and 'docker devmapper repair' first: they keep what can be kept.

Reset runs only with --remove-images, and asks for confirmation on the
terminal (--yes answers for scripts; without a terminal and without --yes it
refuses). It needs root and a daemon run by systemd (docker.service) or by
docker's init script, and then:
  1. shows what will be lost: the images, and the containers using them
  2. removes the containers and images through the docker daemon
  3. stops docker (systemctl stop docker.socket docker.service)
  4. moves DATA-ROOT/devicemapper aside to devicemapper.reset-TIME
     (--purge deletes it instead)
  5. starts docker and confirms that it came up with a new pool
Nothing is moved or deleted while the daemon runs. It handles docker's own
loop-lvm pool; a pool given to docker (dm.thinpooldev) is recreated with the
volume manager that made it.

--keep-pool stops after step 2: the daemon keeps running and the pool stays,
with its space freed.

` + exitCodesHelp,
		Example: `  # see what would be lost, then confirm on the terminal
  sudo docker devmapper reset --remove-images

  # from a script, deleting the old pool instead of keeping it aside
  sudo docker devmapper reset --remove-images --yes --purge

  # only remove every image and container, freeing the pool's space
  docker devmapper reset --remove-images --keep-pool`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := noArgs(cmd, args); err != nil {
				return err
			}
			switch {
			case !opts.removeImages:
				return cli.StatusError{StatusCode: ExitUsage, Status: cmd.CommandPath() + `: nothing was done: reset removes every image and container, and runs only with --remove-images
a damaged pool can often be repaired without losing anything: run 'docker devmapper check', then 'docker devmapper repair'
if it cannot, run 'docker devmapper reset --remove-images' to see what would be lost before confirming`}
			case opts.keepPool && opts.purge:
				return usageError(cmd, "--keep-pool and --purge exclude each other: --keep-pool leaves the pool where it is")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runReset(cmd.Context(), dockerCLI, newSystem(dockerCLI), opts)
		},
		DisableFlagsInUseLine: true,
	}
	flags := cmd.Flags()
	flags.BoolVar(&opts.removeImages, "remove-images", false, "Agree that every image and container is removed (required)")
	flags.BoolVarP(&opts.yes, "yes", "y", false, "Do not ask for confirmation")
	flags.BoolVar(&opts.purge, "purge", false, "Delete the old pool instead of moving it aside")
	flags.BoolVar(&opts.keepPool, "keep-pool", false, "Only remove the containers and images; leave the daemon and the pool as they are")
	return cmd
}

// resetPlan is what a reset removes.
type resetPlan struct {
	containers []container.Summary
	images     []image.Summary
}

func runReset(ctx context.Context, dockerCLI command.Cli, sys *machine, opts resetOptions) error {
	out := dockerCLI.Out()
	if !opts.keepPool && sys.euid() != 0 {
		return operational(errors.New("reset stops docker and moves its storage, which needs root; nothing was changed"),
			"run it as root: 'sudo docker devmapper reset --remove-images'", false)
	}
	st, err := sys.daemon.State(ctx)
	if err != nil {
		return operational(fmt.Errorf("cannot tell whether dockerd runs: %w", err), "nothing was changed", false)
	}
	if !st.Running {
		return operational(errors.New("dockerd is not running: reset removes the images through it; nothing was changed"),
			"start docker ('systemctl start docker') and run this again; if docker cannot start because of its pool, move DATA-ROOT/devicemapper aside yourself and start it", false)
	}
	api := sys.api()
	facts, err := engine.Ask(ctx, api)
	if err != nil {
		return operational(fmt.Errorf("%w; nothing was changed", err), "check that docker answers ('docker info')", false)
	}
	if !opts.keepPool {
		switch {
		case facts.Pool == nil:
			return operational(fmt.Errorf("the daemon uses the %s storage driver, not devicemapper: there is no pool to reset; nothing was changed", facts.Driver), "", false)
		case !facts.Pool.LoopLVM():
			return operational(fmt.Errorf("the pool %s was given to docker (dm.thinpooldev or direct-lvm): reset handles docker's own loop-lvm pool only; nothing was changed", facts.Pool.PoolName),
				"use --keep-pool to remove the images and containers, then recreate the pool with the volume manager that made it", false)
		case rootOf(facts) == "":
			return operational(errors.New("the daemon did not say where its data root is; nothing was changed"), "", false)
		}
	}
	if !opts.keepPool && st.Manager == "" {
		// Stop and start go through systemd or the init script; a dockerd
		// started otherwise would keep running, with the images gone.
		return operational(fmt.Errorf("reset stops and starts docker through systemd or docker's init script, but neither manages this dockerd (%s); nothing was changed", unmanaged(st)),
			"stop docker the way it was started, move DATA-ROOT/devicemapper aside, and start it again; or use --keep-pool to only remove the images and containers", false)
	}

	plan, err := listPlan(ctx, api)
	if err != nil {
		return operational(fmt.Errorf("%w; nothing was changed", err), "check that docker answers ('docker ps -a', 'docker images')", false)
	}
	printPlan(out, plan, facts, opts)

	if !opts.yes {
		if !dockerCLI.In().IsTerminal() {
			return cli.StatusError{StatusCode: ExitUsage, Status: "there is no terminal to confirm on, and no --yes: nothing was changed\nrun it again with --yes to confirm from a script"}
		}
		ok, err := confirm(ctx, dockerCLI.In(), out, "type 'yes' to go on: ")
		if err != nil {
			return status(ExitCancelled, err, "", false)
		}
		if !ok {
			return cli.StatusError{StatusCode: ExitCancelled, Status: "not confirmed: nothing was changed"}
		}
	}

	if err := removeAll(ctx, api, out, plan); err != nil {
		return err
	}
	if opts.keepPool {
		fmt.Fprintln(out, "done: the daemon and the pool were left as they are")
		return nil
	}
	return replacePool(ctx, sys, api, out, facts, opts)
}

// unmanaged says why nothing known manages a running dockerd.
func unmanaged(st daemon.State) string {
	if st.Service != "" {
		return "systemd says docker.service is " + st.Service
	}
	return "systemd is not running, and docker's init script is not installed"
}

// listPlan lists every container and every top-level image.
func listPlan(ctx context.Context, api engineAPI) (resetPlan, error) {
	var plan resetPlan
	var err error
	err = withTimeout(ctx, engine.Timeout, func(ctx context.Context) error {
		plan.containers, err = api.ContainerList(ctx, container.ListOptions{All: true})
		return err
	})
	if err != nil {
		return plan, fmt.Errorf("listing the containers: %w", err)
	}
	err = withTimeout(ctx, engine.Timeout, func(ctx context.Context) error {
		plan.images, err = api.ImageList(ctx, image.ListOptions{})
		return err
	})
	if err != nil {
		return plan, fmt.Errorf("listing the images: %w", err)
	}
	sort.Slice(plan.containers, func(i, j int) bool { return containerName(plan.containers[i]) < containerName(plan.containers[j]) })
	sort.Slice(plan.images, func(i, j int) bool { return imageName(plan.images[i]) < imageName(plan.images[j]) })
	return plan, nil
}

func withTimeout(ctx context.Context, d time.Duration, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return f(ctx)
}

func containerName(c container.Summary) string {
	if len(c.Names) > 0 {
		return strings.TrimPrefix(c.Names[0], "/")
	}
	return shortID(c.ID)
}

func imageName(im image.Summary) string {
	for _, t := range im.RepoTags {
		if t != "<none>:<none>" {
			return t
		}
	}
	return "<untagged> " + shortID(im.ID)
}

func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// printPlan says what will be lost and what happens after.
func printPlan(w io.Writer, plan resetPlan, facts *engine.Facts, opts resetOptions) {
	var b strings.Builder
	byImage := map[string][]string{}
	for _, c := range plan.containers {
		byImage[c.ImageID] = append(byImage[c.ImageID], containerName(c))
	}
	if len(plan.images) == 0 && len(plan.containers) == 0 {
		fmt.Fprintf(&b, "there are no images or containers to remove\n")
	} else {
		fmt.Fprintf(&b, "reset will remove, through the docker daemon:\n")
		writeImages(&b, plan, byImage)
		fmt.Fprintf(&b, "  %d container%s (volumes are kept):\n", len(plan.containers), plural(len(plan.containers)))
		for _, c := range plan.containers {
			fmt.Fprintf(&b, "    %s (%s, %s, image %s)\n", containerName(c), shortID(c.ID), c.State, c.Image)
		}
	}
	if opts.keepPool {
		fmt.Fprintf(&b, "then stop: the daemon keeps running and the pool stays\n")
	} else {
		dir := filepath.Join(rootOf(facts), "devicemapper")
		what := "move " + dir + " aside"
		if opts.purge {
			what = "delete " + dir
		}
		fmt.Fprintf(&b, "then stop docker, %s (the pool %s and its files), and start docker with a new pool\n", what, facts.Pool.PoolName)
	}
	_, _ = io.WriteString(w, b.String())
}

// writeImages lists the images, and the containers using each.
func writeImages(b *strings.Builder, plan resetPlan, byImage map[string][]string) {
	fmt.Fprintf(b, "  %d image%s:\n", len(plan.images), plural(len(plan.images)))
	for _, im := range plan.images {
		users := ""
		if cs := byImage[im.ID]; len(cs) > 0 {
			users = ", used by " + strings.Join(cs, ", ")
		}
		name := imageName(im)
		if strings.HasPrefix(name, "<untagged>") {
			name = "<untagged>"
		}
		fmt.Fprintf(b, "    %s (%s, %s%s)\n", name, shortID(im.ID), humanSize(uint64(max(im.Size, 0))), users)
	}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// confirm asks on the terminal and reads one line; only "yes" confirms.
func confirm(ctx context.Context, in io.Reader, out io.Writer, question string) (bool, error) {
	fmt.Fprint(out, question)
	answer := make(chan string, 1)
	go func() {
		// One byte at a time: a buffered reader would swallow the answer
		// to the next question along with this one.
		var line []byte
		b := make([]byte, 1)
		for {
			n, err := in.Read(b)
			if n == 1 && b[0] != '\n' {
				line = append(line, b[0])
			}
			if err != nil || (n == 1 && b[0] == '\n') {
				break
			}
		}
		answer <- strings.TrimSpace(string(line))
	}()
	select {
	case <-ctx.Done():
		fmt.Fprintln(out)
		return false, ctx.Err()
	case a := <-answer:
		return strings.EqualFold(a, "yes"), nil
	}
}

// removeAll removes the containers, then the images, logging each. It
// stops at the first step with failures, so the pool is never replaced
// while docker still refers to what is in it.
func removeAll(ctx context.Context, api engineAPI, out io.Writer, plan resetPlan) error {
	var failed []string
	for i, c := range plan.containers {
		err := withTimeout(ctx, removeTimeout, func(ctx context.Context) error {
			return api.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
		})
		switch {
		case err == nil, cerrdefs.IsNotFound(err):
			fmt.Fprintf(out, "removed container %s (%d/%d)\n", containerName(c), i+1, len(plan.containers))
		case ctx.Err() != nil:
			return status(ExitError, ctx.Err(), "", false)
		default:
			fmt.Fprintf(out, "could not remove container %s: %v\n", containerName(c), err)
			failed = append(failed, containerName(c))
		}
	}
	if len(failed) > 0 {
		return operational(fmt.Errorf("could not remove %d container%s (%s); no image was removed and the pool was not touched", len(failed), plural(len(failed)), strings.Join(failed, ", ")),
			"fix the cause shown above and run reset again", false)
	}
	for i, im := range plan.images {
		err := withTimeout(ctx, removeTimeout, func(ctx context.Context) error {
			_, err := api.ImageRemove(ctx, im.ID, image.RemoveOptions{Force: true, PruneChildren: true})
			return err
		})
		switch {
		case err == nil, cerrdefs.IsNotFound(err):
			fmt.Fprintf(out, "removed image %s (%d/%d)\n", imageName(im), i+1, len(plan.images))
		case ctx.Err() != nil:
			return status(ExitError, ctx.Err(), "", false)
		default:
			fmt.Fprintf(out, "could not remove image %s: %v\n", imageName(im), err)
			failed = append(failed, imageName(im))
		}
	}
	if len(failed) > 0 {
		return operational(fmt.Errorf("could not remove %d image%s (%s); the pool was not touched", len(failed), plural(len(failed)), strings.Join(failed, ", ")),
			"fix the cause shown above and run reset again", false)
	}
	fmt.Fprintf(out, "removed %d container%s and %d image%s\n", len(plan.containers), plural(len(plan.containers)), len(plan.images), plural(len(plan.images)))
	return nil
}

// replacePool stops docker, moves or deletes its devicemapper folder, and
// starts docker again, checking each step.
func replacePool(ctx context.Context, sys *machine, api engineAPI, out io.Writer, old *engine.Facts, opts resetOptions) error {
	pool := old.Pool.PoolName
	dir := filepath.Join(rootOf(old), "devicemapper")
	fmt.Fprintln(out, "stopping docker")
	if err := sys.daemon.Stop(ctx); err != nil {
		return operational(fmt.Errorf("docker did not stop: %w; the images are gone, the pool was not touched", err),
			"make sure docker runs, then run reset again to replace the pool", false)
	}
	st, err := sys.daemon.State(ctx)
	switch {
	case err != nil:
		return restartAfter(ctx, sys, out, fmt.Errorf("cannot tell whether dockerd stopped: %w", err))
	case st.Running:
		return restartAfter(ctx, sys, out, fmt.Errorf("dockerd still runs after it was stopped (%s)", st.Why))
	}
	active, err := sys.daemon.PoolActive(pool)
	switch {
	case err != nil:
		return restartAfter(ctx, sys, out, fmt.Errorf("cannot tell whether the pool %s is still active: %w", pool, err))
	case active:
		return restartAfter(ctx, sys, out, fmt.Errorf("the pool %s is still active after docker stopped: its files are in use", pool))
	}
	fmt.Fprintf(out, "docker stopped; the pool %s is not active\n", pool)

	aside := ""
	if opts.purge {
		if err := os.RemoveAll(dir); err != nil {
			return restartAfter(ctx, sys, out, fmt.Errorf("deleting %s: %w", dir, err))
		}
		fmt.Fprintf(out, "deleted %s\n", dir)
	} else {
		aside = dir + ".reset-" + sys.now().UTC().Format("20060102T150405Z")
		if err := os.Rename(dir, aside); err != nil {
			return restartAfter(ctx, sys, out, fmt.Errorf("moving %s aside: %w", dir, err))
		}
		fmt.Fprintf(out, "moved %s to %s\n", dir, aside)
	}

	fmt.Fprintln(out, "starting docker")
	kept := ""
	if aside != "" {
		kept = "; the old pool is in " + aside
	}
	if err := sys.daemon.Start(ctx); err != nil {
		return operational(fmt.Errorf("docker did not start: %w%s", err, kept), "see why in its log ('journalctl -u docker')", false)
	}
	facts, err := waitForDaemon(ctx, sys, api)
	if err != nil {
		return operational(fmt.Errorf("docker was started but does not answer: %w%s", err, kept), "see why in its log ('journalctl -u docker')", false)
	}
	switch {
	case facts.Pool == nil:
		return operational(fmt.Errorf("docker came up with the %s storage driver, not devicemapper%s", facts.Driver, kept),
			`its configuration does not name a storage driver, and with the old pool gone it chose another; to keep devicemapper, set "storage-driver": "devicemapper" in daemon.json and restart docker`, false)
	case facts.Pool.PoolName == pool && facts.Pool.Metadata.Used >= old.Pool.Metadata.Used:
		return operational(fmt.Errorf("docker came up with the pool %s, which does not look new%s", pool, kept),
			"look at it with 'docker devmapper status'", false)
	}
	p := facts.Pool
	fmt.Fprintf(out, "docker runs with a new pool %s: data %s used, metadata %s used\n", p.PoolName, humanSize(p.Data.Used), humanSize(p.Metadata.Used))
	if aside != "" {
		fmt.Fprintf(out, "the old pool is kept in %s: delete it once you are sure nothing in it is needed\n", aside)
	}
	return nil
}

// restartAfter starts docker again after a step that changed nothing,
// and reports why the reset stopped.
func restartAfter(ctx context.Context, sys *machine, out io.Writer, cause error) error {
	fmt.Fprintf(out, "stopping the reset: %v\n", cause)
	fmt.Fprintln(out, "starting docker again")
	if err := sys.daemon.Start(ctx); err != nil {
		return operational(fmt.Errorf("%w; nothing was moved, and docker did not start again: %v", cause, err),
			"start docker yourself ('systemctl start docker')", false)
	}
	return operational(fmt.Errorf("%w; nothing was moved, docker was started again, and the images are gone", cause),
		"look at the pool with 'docker devmapper status' before running reset again", false)
}

// waitForDaemon waits until a starting daemon runs and answers.
func waitForDaemon(ctx context.Context, sys *machine, api engineAPI) (*engine.Facts, error) {
	deadline := sys.now().Add(startWait)
	for {
		st, err := sys.daemon.State(ctx)
		var facts *engine.Facts
		if err == nil && st.Running {
			facts, err = engine.Ask(ctx, api)
			if err == nil {
				return facts, nil
			}
		} else if err == nil {
			err = errors.New("dockerd is not running")
		}
		if !sys.now().Before(deadline) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(sys.retry):
		}
	}
}
