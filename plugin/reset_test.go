package plugin

import (
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/cli/cli/command"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/system"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/golden"
)

// resetHost is a running 20.10 daemon on the loop-lvm pool of a fake data
// root, with two containers and three images. Started again after a
// reset, it comes up with a new pool.
type resetHost struct {
	root   string
	sys    *machine
	daemon *fakeDaemon
	engine *fakeEngine
}

const oldPool = "docker-254:16-393219-pool"

func newResetHost(t *testing.T) *resetHost {
	t.Helper()
	root := fakeRoot(t)
	h := &resetHost{root: root, daemon: newFakeDaemon(true)}
	h.daemon.state.Service, h.daemon.state.Socket, h.daemon.state.Manager = "active", "active", "systemd"
	h.daemon.active[oldPool] = true
	h.engine = &fakeEngine{
		info: recordedInfo(t, "info-20.10.24-looplvm-vm.json", root),
		containers: []container.Summary{
			{ID: "c2c2c2c2c2c2c2c2c2c2", Names: []string{"/c2"}, Image: "tiny:c1", ImageID: "sha256:bbbbbbbbbbbbbbbbbbbb", State: "created"},
			{ID: "c1c1c1c1c1c1c1c1c1c1", Names: []string{"/c1"}, Image: "tiny:latest", ImageID: "sha256:aaaaaaaaaaaaaaaaaaaa", State: "exited"},
		},
		images: []image.Summary{
			{ID: "sha256:aaaaaaaaaaaaaaaaaaaa", RepoTags: []string{"tiny:latest"}, Size: 4_404_019},
			{ID: "sha256:bbbbbbbbbbbbbbbbbbbb", RepoTags: []string{"tiny:c1"}, Size: 8_598_323},
			{ID: "sha256:cccccccccccccccccccc", RepoTags: []string{"<none>:<none>"}, Size: 1_000},
		},
	}
	fresh := recordedInfo(t, "info-20.10.24-looplvm-vm.json", root)
	setDriverStatus(&fresh, "Pool Name", "docker-254:16-400001-pool")
	setDriverStatus(&fresh, "Data Space Used", "11.76MB")
	setDriverStatus(&fresh, "Metadata Space Used", "1.221MB")
	h.daemon.onStart = func() { h.engine.setInfo(fresh) }
	h.sys = testSystem(t, h.daemon, h.engine, nil, 0)
	// Time moves a second per look at the clock, so waits end.
	base, n := time.Date(2026, 11, 26, 2, 30, 0, 0, time.UTC), 0
	h.sys.now = func() time.Time { n++; return base.Add(time.Duration(n-1) * time.Second) }
	return h
}

func (h *resetHost) dmDir() string { return filepath.Join(h.root, "devicemapper") }

// resetCLI is a docker CLI whose input is answer; terminal says whether
// it plays a terminal.
func resetCLI(t *testing.T, answer string, terminal bool) (*command.DockerCli, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	var out, errb bytes.Buffer
	dockerCLI, err := command.NewDockerCli(
		command.WithInputStream(io.NopCloser(strings.NewReader(answer))),
		command.WithOutputStream(&out),
		command.WithErrorStream(&errb),
	)
	assert.NilError(t, err)
	dockerCLI.In().SetIsTerminal(terminal)
	return dockerCLI, &out, &errb
}

var everything = []string{
	"container c1c1c1c1c1c1c1c1c1c1", "container c2c2c2c2c2c2c2c2c2c2",
	"image sha256:cccccccccccccccccccc", "image sha256:bbbbbbbbbbbbbbbbbbbb", "image sha256:aaaaaaaaaaaaaaaaaaaa",
}

func TestReset(t *testing.T) {
	yes := resetOptions{removeImages: true, yes: true}
	for _, tc := range []struct {
		name     string
		setup    func(t *testing.T, h *resetHost)
		opts     resetOptions
		answer   string
		terminal bool
		code     int
		msg      string   // in the error's message
		removed  []string // what the engine was asked to remove, in order
		calls    []string // stop and start, in order
		moved    bool     // devicemapper/ was moved aside
		deleted  bool     // devicemapper/ was deleted
		golden   bool
	}{
		{name: "yes", opts: yes, removed: everything, calls: []string{"stop", "start"}, moved: true, golden: true},
		{name: "purge", opts: resetOptions{removeImages: true, yes: true, purge: true}, removed: everything, calls: []string{"stop", "start"}, deleted: true, golden: true},
		{name: "confirmed", opts: resetOptions{removeImages: true}, answer: "yes\n", terminal: true, removed: everything, calls: []string{"stop", "start"}, moved: true},
		{name: "declined", opts: resetOptions{removeImages: true}, answer: "y\n", terminal: true, code: ExitCancelled, msg: "not confirmed: nothing was changed", golden: true},
		{name: "no-terminal", opts: resetOptions{removeImages: true}, code: ExitUsage, msg: "there is no terminal to confirm on, and no --yes"},
		{name: "keep-pool", opts: resetOptions{removeImages: true, yes: true, keepPool: true}, removed: everything, golden: true},
		{name: "keep-pool-not-root", opts: resetOptions{removeImages: true, yes: true, keepPool: true}, removed: everything,
			setup: func(t *testing.T, h *resetHost) { h.sys.euid = func() int { return 1000 } }},
		{name: "keep-pool-overlay2", opts: resetOptions{removeImages: true, yes: true, keepPool: true}, removed: everything,
			setup: func(t *testing.T, h *resetHost) {
				h.engine.info = system.Info{ServerVersion: "28.2.2", Driver: "overlay2", DockerRootDir: h.root}
			}},
		{name: "nothing-to-remove", opts: yes, calls: []string{"stop", "start"}, moved: true, golden: true,
			setup: func(t *testing.T, h *resetHost) { h.engine.containers, h.engine.images = nil, nil }},
		{name: "not-root", opts: yes, code: ExitError, msg: "which needs root; nothing was changed",
			setup: func(t *testing.T, h *resetHost) { h.sys.euid = func() int { return 1000 } }},
		{name: "daemon-stopped", opts: yes, code: ExitError, msg: "dockerd is not running",
			setup: func(t *testing.T, h *resetHost) { h.daemon.state.Running = false }},
		{name: "no-systemd", opts: yes, code: ExitError, msg: "neither manages this dockerd (systemd is not running, and docker's init script is not installed); nothing was changed",
			setup: func(t *testing.T, h *resetHost) { h.daemon.state.Service, h.daemon.state.Manager = "", "" }},
		{name: "not-started-by-systemd", opts: yes, code: ExitError, msg: "(systemd says docker.service is inactive)",
			setup: func(t *testing.T, h *resetHost) { h.daemon.state.Service, h.daemon.state.Manager = "inactive", "" }},
		{name: "keep-pool-no-systemd", opts: resetOptions{removeImages: true, yes: true, keepPool: true}, removed: everything,
			setup: func(t *testing.T, h *resetHost) { h.daemon.state.Service, h.daemon.state.Manager = "", "" }},
		{name: "daemon-state-unknown", opts: yes, code: ExitError, msg: "cannot tell whether dockerd runs",
			setup: func(t *testing.T, h *resetHost) { h.daemon.stateErr = errors.New("open /proc: permission denied") }},
		{name: "no-answer", opts: yes, code: ExitError, msg: "asking the docker daemon for its storage driver: connection refused; nothing was changed",
			setup: func(t *testing.T, h *resetHost) { h.engine.infoErr = errors.New("connection refused") }},
		{name: "overlay2", opts: yes, code: ExitError, msg: "the daemon uses the overlay2 storage driver, not devicemapper",
			setup: func(t *testing.T, h *resetHost) {
				h.engine.info = system.Info{ServerVersion: "28.2.2", Driver: "overlay2", DockerRootDir: h.root}
			}},
		{name: "direct-lvm", opts: yes, code: ExitError, msg: "reset handles docker's own loop-lvm pool only",
			setup: func(t *testing.T, h *resetHost) {
				h.engine.info = recordedInfo(t, "info-20.10.24-directlvm-vm.json", h.root)
			}},
		{name: "no-root-dir", opts: yes, code: ExitError, msg: "did not say where its data root is",
			setup: func(t *testing.T, h *resetHost) {
				// Neither the data root nor the loop files it holds.
				h.engine.info.DockerRootDir = ""
				setDriverStatus(&h.engine.info, "Metadata loop file", "")
			}},
		{name: "list-fails", opts: yes, code: ExitError, msg: "listing the containers: server error",
			setup: func(t *testing.T, h *resetHost) { h.engine.listErr = errors.New("server error") }},
		{name: "container-remove-fails", opts: yes, code: ExitError, msg: "could not remove 1 container (c2); no image was removed", golden: true,
			removed: []string{"container c1c1c1c1c1c1c1c1c1c1"},
			setup: func(t *testing.T, h *resetHost) {
				h.engine.removeErr = map[string]error{"c2c2c2c2c2c2c2c2c2c2": errors.New("device or resource busy")}
			}},
		{name: "image-gone-already", opts: yes, calls: []string{"stop", "start"}, moved: true,
			removed: everything[:4],
			setup: func(t *testing.T, h *resetHost) {
				h.engine.removeErr = map[string]error{"sha256:aaaaaaaaaaaaaaaaaaaa": errNotFound}
			}},
		{name: "image-remove-fails", opts: yes, code: ExitError, msg: "could not remove 1 image (tiny:c1); the pool was not touched",
			removed: []string{everything[0], everything[1], everything[2], everything[4]},
			setup: func(t *testing.T, h *resetHost) {
				h.engine.removeErr = map[string]error{"sha256:bbbbbbbbbbbbbbbbbbbb": errors.New("conflict: unable to delete")}
			}},
		{name: "stop-fails", opts: yes, code: ExitError, msg: "docker did not stop", removed: everything, calls: []string{"stop"},
			setup: func(t *testing.T, h *resetHost) {
				h.daemon.stopErr = errors.New("docker runs without systemd here: stop it the way it was started")
			}},
		{name: "still-running", opts: yes, code: ExitError, msg: "dockerd still runs after it was stopped", removed: everything, calls: []string{"stop", "start"},
			setup: func(t *testing.T, h *resetHost) { h.daemon.keepAlive = true }},
		{name: "pool-still-active", opts: yes, code: ExitError, msg: "is still active after docker stopped", removed: everything, calls: []string{"stop", "start"}, golden: true,
			setup: func(t *testing.T, h *resetHost) { h.daemon.keepPool = true }},
		{name: "pool-activity-unknown", opts: yes, code: ExitError, msg: "cannot tell whether the pool", removed: everything, calls: []string{"stop", "start"},
			setup: func(t *testing.T, h *resetHost) { h.daemon.activeErr = errors.New("glob: bad pattern") }},
		{name: "restart-fails", opts: yes, code: ExitError, msg: "docker did not start again", removed: everything, calls: []string{"stop", "start"},
			setup: func(t *testing.T, h *resetHost) {
				h.daemon.keepPool = true
				h.daemon.startErr = errors.New("systemctl start docker.service: exit status 1")
			}},
		{name: "start-fails", opts: yes, code: ExitError, msg: "docker did not start: systemctl start docker.service: exit status 1; the old pool is in ", removed: everything, calls: []string{"stop", "start"}, moved: true,
			setup: func(t *testing.T, h *resetHost) {
				h.daemon.startErr = errors.New("systemctl start docker.service: exit status 1")
			}},
		{name: "never-answers", opts: yes, code: ExitError, msg: "docker was started but does not answer: asking the docker daemon for its storage driver: connection refused", removed: everything, calls: []string{"stop", "start"}, moved: true,
			setup: func(t *testing.T, h *resetHost) {
				h.daemon.onStart = func() {
					h.engine.mu.Lock()
					h.engine.infoErr = errors.New("connection refused")
					h.engine.mu.Unlock()
				}
			}},
		{name: "came-up-overlay2", opts: yes, code: ExitError, msg: "docker came up with the overlay2 storage driver", removed: everything, calls: []string{"stop", "start"}, moved: true,
			setup: func(t *testing.T, h *resetHost) {
				h.daemon.onStart = func() {
					h.engine.setInfo(system.Info{ServerVersion: "20.10.24", Driver: "overlay2", DockerRootDir: h.root})
				}
			}},
		{name: "came-up-old-pool", opts: yes, code: ExitError, msg: "which does not look new", removed: everything, calls: []string{"stop", "start"}, deleted: true,
			setup: func(t *testing.T, h *resetHost) {
				h.daemon.onStart = func() {}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newResetHost(t)
			if tc.name == "came-up-old-pool" {
				tc.opts.purge = true
			}
			if tc.setup != nil {
				tc.setup(t, h)
			}
			dockerCLI, out, errb := resetCLI(t, tc.answer, tc.terminal)
			err := runReset(t.Context(), dockerCLI, h.sys, tc.opts)
			assert.Check(t, is.Equal(exitStatus(err), tc.code), message(err))
			if tc.msg != "" {
				assert.Check(t, is.Contains(message(err), tc.msg))
			}
			assert.Check(t, is.Equal(errb.String(), ""))
			assert.Check(t, is.DeepEqual(h.engine.removed, tc.removed))
			assert.Check(t, is.DeepEqual(h.daemon.calls, tc.calls))
			aside := h.dmDir() + ".reset-20261126T023000Z"
			assert.Check(t, is.Equal(exists(aside), tc.moved), "moved aside")
			assert.Check(t, is.Equal(exists(h.dmDir()), !tc.moved && !tc.deleted), "devicemapper/ in place")
			if tc.moved {
				assert.Check(t, exists(filepath.Join(aside, "devicemapper", "metadata")), "the old metadata is kept")
			}
			if tc.golden {
				golden.Assert(t, strings.ReplaceAll(out.String()+message(err), h.root, "ROOT"), "reset-"+tc.name+".golden")
			}
		})
	}
}

// TestResetCancelledAtPrompt: Ctrl-C at the question changes nothing.
func TestResetCancelledAtPrompt(t *testing.T) {
	h := newResetHost(t)
	ctx, cancel := contextCancelled(t)
	defer cancel()
	pr, pw := io.Pipe()
	defer pw.Close()
	var out bytes.Buffer
	dockerCLI, err := command.NewDockerCli(command.WithInputStream(pr), command.WithOutputStream(&out), command.WithErrorStream(io.Discard))
	assert.NilError(t, err)
	dockerCLI.In().SetIsTerminal(true)
	// Ask succeeds on the fake engine even with a cancelled context: the
	// fake ignores it, as a fast daemon would answer before the cancel.
	err = runReset(ctx, dockerCLI, h.sys, resetOptions{removeImages: true})
	assert.Check(t, is.Equal(exitStatus(err), ExitCancelled))
	assert.Check(t, is.Len(h.engine.removed, 0))
	assert.Check(t, is.Len(h.daemon.calls, 0))
	assert.Check(t, is.Contains(out.String(), "type 'yes' to go on: "))
}

func TestResetUsage(t *testing.T) {
	r := run(t, "reset")
	assert.Check(t, is.Equal(r.code, ExitUsage))
	assert.Check(t, is.Contains(message(r.err), "runs only with --remove-images"))
	r = run(t, "reset", "--remove-images", "extra")
	assert.Check(t, is.Equal(r.code, ExitUsage))
	assert.Check(t, is.Contains(message(r.err), "takes no arguments"))
}
