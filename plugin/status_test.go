package plugin

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/docker/docker/api/types/system"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/golden"

	"github.com/docker-devmapper/docker-devmapper/plugin/daemon"
)

// statusCase sets up a machine and says what status must make of it.
type statusCase struct {
	name  string
	setup func(t *testing.T, root string) (*machine, statusOptions)
	code  int
	json  bool
}

// loopDaemon is a running 20.10 daemon with the loop-lvm pool of root,
// active, its kernel status answering line.
func loopDaemon(t *testing.T, root, line string, euid int) *machine {
	t.Helper()
	info := recordedInfo(t, "info-20.10.24-looplvm-vm.json", root)
	d := newFakeDaemon(true)
	d.active["docker-254:16-393219-pool"] = true
	c := &fakeDM{table: loopTable, status: loopStatus(t, line)}
	sys := testSystem(t, d, &fakeEngine{info: info}, c, euid)
	// The kernel reads the loop device; here it is the same file.
	b, err := os.ReadFile(rootMetadata(root))
	assert.NilError(t, err)
	assert.NilError(t, os.MkdirAll(sys.devBlock, 0o755))
	assert.NilError(t, os.WriteFile(filepath.Join(sys.devBlock, "7:1"), b, 0o600))
	return sys
}

// stopped is a machine where dockerd is not running; root is searched.
func stopped(t *testing.T, root string) (*machine, statusOptions) {
	return testSystem(t, newFakeDaemon(false), nil, nil, 0), statusOptions{root: root}
}

var statusCases = []statusCase{
	{name: "overlay2", setup: func(t *testing.T, root string) (*machine, statusOptions) {
		info := system.Info{ServerVersion: "28.2.2", Driver: "overlay2", DockerRootDir: root, DriverStatus: [][2]string{{"Backing Filesystem", "extfs"}}}
		return testSystem(t, newFakeDaemon(true), &fakeEngine{info: info}, nil, 0), statusOptions{}
	}},
	{name: "live-loop-lvm", setup: func(t *testing.T, root string) (*machine, statusOptions) {
		return loopDaemon(t, root, "42 1024/524288 3612/1638400 - rw discard_passdown queue_if_no_space - 1024", 0), statusOptions{}
	}},
	{name: "live-loop-lvm-json", json: true, setup: func(t *testing.T, root string) (*machine, statusOptions) {
		return loopDaemon(t, root, "42 1024/524288 3612/1638400 - rw discard_passdown queue_if_no_space - 1024", 0), statusOptions{json: true}
	}},
	{name: "live-not-root", setup: func(t *testing.T, root string) (*machine, statusOptions) {
		return loopDaemon(t, root, "42 1024/524288 3612/1638400 - rw discard_passdown queue_if_no_space - 1024", 1000), statusOptions{}
	}},
	{name: "live-nearly-full", setup: func(t *testing.T, root string) (*machine, statusOptions) {
		return loopDaemon(t, root, "42 430000/524288 1500000/1638400 - rw discard_passdown queue_if_no_space - 1024", 0), statusOptions{}
	}},
	{name: "live-out-of-space-held-snapshot", setup: func(t *testing.T, root string) (*machine, statusOptions) {
		return loopDaemon(t, root, "42 1024/524288 1638400/1638400 29 out_of_data_space discard_passdown queue_if_no_space - 1024", 0), statusOptions{}
	}},
	{name: "live-needs-check-read-only", code: ExitDamage, setup: func(t *testing.T, root string) (*machine, statusOptions) {
		return loopDaemon(t, root, "42 1024/524288 3612/1638400 - ro discard_passdown queue_if_no_space needs_check 1024", 0), statusOptions{}
	}},
	{name: "live-fail", code: ExitDamage, setup: func(t *testing.T, root string) (*machine, statusOptions) {
		return loopDaemon(t, root, "Fail", 0), statusOptions{}
	}},
	{name: "live-no-device-mapper", setup: func(t *testing.T, root string) (*machine, statusOptions) {
		sys := loopDaemon(t, root, "Fail", 0)
		sys.openDM = func() (dmControl, error) {
			return nil, errors.New("opening the device-mapper control node: permission denied")
		}
		return sys, statusOptions{}
	}},
	{name: "api-error", code: ExitError, setup: func(t *testing.T, root string) (*machine, statusOptions) {
		sys := testSystem(t, newFakeDaemon(true), &fakeEngine{infoErr: errors.New("permission denied while trying to connect to the docker API")}, nil, 1000)
		return sys, statusOptions{root: t.TempDir()}
	}},
	{name: "api-error-root-found", setup: func(t *testing.T, root string) (*machine, statusOptions) {
		sys := testSystem(t, newFakeDaemon(true), &fakeEngine{infoErr: errors.New("permission denied while trying to connect to the docker API")}, nil, 0)
		return sys, statusOptions{root: root}
	}},
	{name: "stopped-loop-lvm", setup: stopped},
	{name: "stopped-needs-check", code: ExitDamage, setup: func(t *testing.T, root string) (*machine, statusOptions) {
		setNeedsCheck(t, rootMetadata(root), true)
		return stopped(t, root)
	}},
	{name: "stopped-bad-checksum", code: ExitDamage, setup: func(t *testing.T, root string) (*machine, statusOptions) {
		flipByte(t, rootMetadata(root), 0)
		return stopped(t, root)
	}},
	{name: "stopped-metadata-missing", code: ExitError, setup: func(t *testing.T, root string) (*machine, statusOptions) {
		assert.NilError(t, os.Remove(rootMetadata(root)))
		return stopped(t, root)
	}},
	{name: "stopped-pool-still-active", setup: func(t *testing.T, root string) (*machine, statusOptions) {
		d := newFakeDaemon(false)
		d.active[offlinePool(t, root)] = true
		return testSystem(t, d, nil, &fakeDM{table: loopTable, status: loopStatus(t, "42 1024/524288 3612/1638400 - rw discard_passdown queue_if_no_space - 1024")}, 1000), statusOptions{root: root}
	}},
	{name: "stopped-socket-activated", setup: func(t *testing.T, root string) (*machine, statusOptions) {
		d := newFakeDaemon(false)
		d.state = daemon.State{Service: "inactive", Socket: "active"}
		return testSystem(t, d, nil, nil, 0), statusOptions{root: root}
	}},
	{name: "stopped-overlay2", setup: func(t *testing.T, _ string) (*machine, statusOptions) {
		root := t.TempDir()
		assert.NilError(t, os.Mkdir(filepath.Join(root, "overlay2"), 0o700))
		return stopped(t, root)
	}},
	{name: "stopped-nothing", setup: func(t *testing.T, _ string) (*machine, statusOptions) {
		return stopped(t, t.TempDir())
	}},
	{name: "stopped-thinpooldev", code: ExitError, setup: func(t *testing.T, _ string) (*machine, statusOptions) {
		root := t.TempDir()
		assert.NilError(t, os.MkdirAll(filepath.Join(root, "devicemapper", "metadata"), 0o700))
		sys, opts := stopped(t, root)
		opts.root = ""
		assert.NilError(t, os.WriteFile(sys.daemonConfig, []byte(`{"data-root": "`+root+`", "storage-driver": "devicemapper", "storage-opts": ["dm.thinpooldev=/dev/mapper/vg-thinpool", "dm.use_deferred_removal=true"]}`), 0o600))
		return sys, opts
	}},
	{name: "stopped-directlvm-unnamed", code: ExitError, setup: func(t *testing.T, _ string) (*machine, statusOptions) {
		root := t.TempDir()
		assert.NilError(t, os.MkdirAll(filepath.Join(root, "devicemapper", "metadata"), 0o700))
		return stopped(t, root)
	}},
	{name: "stopped-directlvm-setup-config", code: ExitError, setup: func(t *testing.T, _ string) (*machine, statusOptions) {
		root := t.TempDir()
		assert.NilError(t, os.MkdirAll(filepath.Join(root, "devicemapper", "metadata"), 0o700))
		assert.NilError(t, os.WriteFile(filepath.Join(root, "devicemapper", "setup-config.json"), []byte(`{"Device":"/dev/xvdf"}`), 0o600))
		return stopped(t, root)
	}},
	{name: "stopped-root-unreadable", code: ExitError, setup: func(t *testing.T, _ string) (*machine, statusOptions) {
		root := filepath.Join(t.TempDir(), "not-a-folder")
		assert.NilError(t, os.WriteFile(root, nil, 0o600))
		return stopped(t, root)
	}},
	{name: "stopped-state-unknown", setup: func(t *testing.T, root string) (*machine, statusOptions) {
		d := newFakeDaemon(false)
		d.stateErr = errors.New("listing processes: open /proc: permission denied")
		d.activeErr = errors.New("glob: bad pattern")
		return testSystem(t, d, nil, nil, 0), statusOptions{root: root}
	}},
}

// TestStatus runs status on each machine and keeps what it printed.
func TestStatusCommand(t *testing.T) {
	for _, tc := range statusCases {
		t.Run(tc.name, func(t *testing.T) {
			root := fakeRoot(t)
			sys, opts := tc.setup(t, root)
			dockerCLI, out, errb := newTestCLI(t)
			err := runStatus(t.Context(), dockerCLI, sys, opts)
			assert.Check(t, is.Equal(exitStatus(err), tc.code))
			assert.Check(t, is.Equal(errb.String(), ""))
			assert.Check(t, is.Equal(message(err), ""), "status prints its findings, never a second message")
			got := normalize(out.String(), map[string]string{root: "ROOT", opts.root: "ROOT", sys.devBlock: "DEVBLOCK"})
			if tc.json {
				var v map[string]any
				assert.NilError(t, json.Unmarshal(out.Bytes(), &v), "--json prints one JSON object")
				golden.Assert(t, got, "status-"+tc.name+".golden")
				return
			}
			golden.Assert(t, got, "status-"+tc.name+".golden")
		})
	}
}

// TestStatusNeverAsksAStoppedDaemon: with dockerd down, the API is never
// touched (testSystem fails the test if it is).
func TestStatusNeverAsksAStoppedDaemon(t *testing.T) {
	root := fakeRoot(t)
	sys, opts := stopped(t, root)
	asked := false
	sys.api = func() engineAPI { asked = true; return &fakeEngine{} }
	dockerCLI, _, _ := newTestCLI(t)
	assert.NilError(t, runStatus(t.Context(), dockerCLI, sys, opts))
	assert.Check(t, !asked)
}

func TestStatusCancelled(t *testing.T) {
	root := fakeRoot(t)
	sys, opts := stopped(t, root)
	ctx, cancel := contextCancelled(t)
	defer cancel()
	dockerCLI, out, _ := newTestCLI(t)
	err := runStatus(ctx, dockerCLI, sys, opts)
	assert.Check(t, is.Equal(exitStatus(err), ExitCancelled))
	assert.Check(t, is.Equal(out.String(), ""))
}

func TestReadDaemonConfig(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, body string
		want       daemonConfig
	}{
		{name: "missing"},
		{name: "broken", body: `{"data-root": `},
		{name: "graph", body: `{"graph": "/srv/docker"}`, want: daemonConfig{DataRoot: "/srv/docker"}},
		{name: "opts", body: `{"data-root": "/d", "storage-driver": "devicemapper", "storage-opts": ["dm.thinpooldev=/dev/mapper/vg-pool", "dm.metadatadev=/dev/sdc1", "dm.datadev=/dev/sdc2", "dm.basesize=20G"]}`,
			want: daemonConfig{DataRoot: "/d", Driver: "devicemapper", ThinPoolDev: "/dev/mapper/vg-pool", MetadataDev: "/dev/sdc1", DataDev: "/dev/sdc2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name+".json")
			if tc.body != "" {
				assert.NilError(t, os.WriteFile(path, []byte(tc.body), 0o600))
			}
			assert.Check(t, is.DeepEqual(readDaemonConfig(path), tc.want))
		})
	}
}

func TestFromRootMetadataDev(t *testing.T) {
	root := t.TempDir()
	assert.NilError(t, os.MkdirAll(filepath.Join(root, "devicemapper", "metadata"), 0o700))
	drv, p, err := fromRoot(root, daemonConfig{ThinPoolDev: "/dev/mapper/vg-pool", MetadataDev: "/dev/sdc1", DataDev: "/dev/sdc2"})
	assert.NilError(t, err)
	assert.Check(t, is.Equal(drv, "devicemapper"))
	assert.Check(t, is.DeepEqual(*p, poolLocation{Name: "vg-pool", Layout: layoutDirect, MetadataDevice: "/dev/sdc1", DataDevice: "/dev/sdc2", Metadata: "/dev/sdc1"}))

	// State of an old devicemapper setup, while the daemon now uses another.
	drv, p, err = fromRoot(root, daemonConfig{Driver: "overlay2"})
	assert.NilError(t, err)
	assert.Check(t, is.Equal(drv, "overlay2"))
	assert.Check(t, p == nil)
}

func TestHumanSize(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 999: "999 B", 1000: "1 kB", 65536: "65.54 kB", 64750000: "64.75 MB", 107400000000: "107.4 GB"} {
		assert.Check(t, is.Equal(humanSize(n), want))
	}
}

func TestBlockDevice(t *testing.T) {
	sys := testSystem(t, newFakeDaemon(false), nil, nil, 0)
	// Neither udev's link nor /sys: the link is still the best guess.
	assert.Check(t, is.Equal(sys.blockDevice("7:1"), filepath.Join(sys.devBlock, "7:1")))

	// Without udev: /sys names the node.
	assert.NilError(t, os.MkdirAll(filepath.Join(sys.sysDevBlock, "7:1"), 0o755))
	assert.NilError(t, os.WriteFile(filepath.Join(sys.sysDevBlock, "7:1", "uevent"), []byte("MAJOR=7\nMINOR=1\nDEVNAME=loop1\nDEVTYPE=disk\n"), 0o644))
	assert.Check(t, is.Equal(sys.blockDevice("7:1"), filepath.Join(sys.dev, "loop1")))

	// With udev: its link wins.
	assert.NilError(t, os.MkdirAll(sys.devBlock, 0o755))
	assert.NilError(t, os.WriteFile(filepath.Join(sys.devBlock, "7:1"), nil, 0o600))
	assert.Check(t, is.Equal(sys.blockDevice("7:1"), filepath.Join(sys.devBlock, "7:1")))
}
