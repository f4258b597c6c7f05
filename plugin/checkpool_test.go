package plugin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/system"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/golden"
)

// activePool is a running daemon with its loop-lvm pool active; the
// kernel's metadata device (loop1) holds fixture, and the fake
// device-mapper answers statusLine.
func activePool(t *testing.T, fixture, statusLine string) (*machine, *fakeDM) {
	t.Helper()
	root := fakeRoot(t)
	info := recordedInfo(t, "info-20.10.24-looplvm-vm.json", root)
	d := newFakeDaemon(true)
	d.active["docker-254:16-393219-pool"] = true
	c := &fakeDM{table: loopTable, status: loopStatus(t, statusLine)}
	sys := testSystem(t, d, &fakeEngine{info: info}, c, 0)
	putDevice(t, sys, "7:1", fixture)
	return sys, c
}

const rwStatus = "8 60/1024 0/1024 - rw discard_passdown queue_if_no_space - 1024"

// active is a TestCheckPool set-up: the active pool of activePool, with
// fixture on its metadata device and statusLine its status, changed by
// tweak when given.
func active(fixture, statusLine string, tweak func(sys *machine, c *fakeDM)) func(t *testing.T) (*machine, *fakeDM, string) {
	return func(t *testing.T) (*machine, *fakeDM, string) {
		sys, c := activePool(t, fixture, statusLine)
		if tweak != nil {
			tweak(sys, c)
		}
		return sys, c, ""
	}
}

func TestCheckPool(t *testing.T) {
	for _, tc := range []struct {
		name     string
		setup    func(t *testing.T) (*machine, *fakeDM, string) // and the --root to give
		opts     checkOptions
		code     int
		reserved bool // a snapshot must have been reserved and released
		stderr   string
		golden   bool // compare the report with a golden even when not clean
	}{
		{
			name: "stopped-loop-lvm",
			setup: func(t *testing.T) (*machine, *fakeDM, string) {
				root := fakeRoot(t)
				sys, _ := stopped(t, root)
				return sys, nil, root
			},
			stderr: "checking the inactive pool docker-",
		},
		{
			// Docker's open transaction is above the pool's: at start-up
			// docker would delete a device. The metadata is sound, the
			// records are not, and check says so with exit 4.
			name: "stopped-loop-lvm-rollback",
			setup: func(t *testing.T) (*machine, *fakeDM, string) {
				root := fakeRoot(t)
				p := filepath.Join(root, "devicemapper", "metadata", "transaction-metadata")
				assert.NilError(t, os.WriteFile(p, []byte(`{"open_transaction_id":43,"device_hash":"feed","device_id":4}`), 0o600))
				sys, _ := stopped(t, root)
				return sys, nil, root
			},
			code:   ExitDamage,
			stderr: "checking the inactive pool docker-",
			golden: true,
		},
		{
			name: "stopped-loop-lvm-damaged",
			setup: func(t *testing.T) (*machine, *fakeDM, string) {
				root := fakeRoot(t)
				setNeedsCheck(t, rootMetadata(root), true)
				flipByte(t, rootMetadata(root), 72)
				sys, _ := stopped(t, root)
				return sys, nil, root
			},
			code:   ExitDamage,
			stderr: "checking the inactive pool docker-",
		},
		{
			name:     "active-snapshot",
			setup:    active("s3-bigblock-metasnap", rwStatus, nil),
			reserved: true,
			stderr:   "checking the active pool docker-254:16-393219-pool through a metadata snapshot of ",
		},
		{
			name:     "active-snapshot-json",
			setup:    active("s3-bigblock-metasnap", rwStatus, nil),
			opts:     checkOptions{json: true},
			reserved: true,
		},
		{
			name:     "active-snapshot-quiet",
			setup:    active("s3-bigblock-metasnap", rwStatus, nil),
			opts:     checkOptions{quiet: true},
			reserved: true,
		},
		{
			// The snapshot is released when the check cannot be done.
			name:     "active-snapshot-missing",
			setup:    active("s1-one-empty-thin", rwStatus, nil),
			code:     ExitError,
			reserved: true,
			stderr:   "no metadata snapshot",
		},
		{
			name: "active-release-fails",
			setup: active("s3-bigblock-metasnap", rwStatus, func(sys *machine, c *fakeDM) {
				c.releaseErr = errors.New("device-mapper message: invalid argument")
			}),
			code:     ExitError,
			reserved: true,
			stderr:   "release it with 'dmsetup message docker-254:16-393219-pool 0 release_metadata_snap'",
		},
		{
			name: "active-not-root",
			setup: active("s3-bigblock-metasnap", rwStatus, func(sys *machine, c *fakeDM) {
				sys.euid = func() int { return 1000 }
			}),
			code:   ExitError,
			stderr: "only root may reserve one",
		},
		{
			name: "active-no-device-mapper",
			setup: func(t *testing.T) (*machine, *fakeDM, string) {
				sys, _ := activePool(t, "s3-bigblock-metasnap", rwStatus)
				sys.openDM = func() (dmControl, error) {
					return nil, errors.New("open /dev/mapper/control: no such file or directory")
				}
				return sys, nil, ""
			},
			code:   ExitError,
			stderr: "load the dm_mod module",
		},
		{
			name: "active-status-fails",
			setup: active("s3-bigblock-metasnap", rwStatus, func(sys *machine, c *fakeDM) {
				c.poolErr = errors.New("no such device-mapper device")
			}),
			code:   ExitError,
			stderr: "cannot read the status of the pool",
		},
		{
			name:   "active-failed",
			setup:  active("s3-bigblock-metasnap", "Fail", nil),
			code:   ExitError,
			stderr: "dmsetup remove docker-254:16-393219-pool",
		},
		{
			name:   "active-read-only",
			setup:  active("s3-bigblock-metasnap", "8 60/1024 0/1024 - ro discard_passdown queue_if_no_space needs_check 1024", nil),
			code:   ExitError,
			stderr: "read-only after a metadata error",
		},
		{
			name:   "active-busy",
			setup:  active("s3-bigblock-metasnap", "8 60/1024 0/1024 29 rw discard_passdown queue_if_no_space - 1024", nil),
			code:   ExitError,
			stderr: "is busy: a metadata snapshot is already held (block 29)",
		},
		{
			name: "active-reserve-busy",
			setup: active("s3-bigblock-metasnap", rwStatus, func(sys *machine, c *fakeDM) {
				c.reserveErr = fmt.Errorf("reserving a metadata snapshot: %w", syscall.EBUSY)
			}),
			code:   ExitError,
			stderr: "another metadata snapshot is held",
		},
		{
			name: "active-reserve-fails",
			setup: active("s3-bigblock-metasnap", rwStatus, func(sys *machine, c *fakeDM) {
				c.reserveErr = errors.New("reserving a metadata snapshot: operation not supported")
			}),
			code:   ExitError,
			stderr: "stop docker and check the stopped pool",
		},
		{
			// The kernel took the snapshot though the call reported an
			// error: check releases it.
			name: "active-reserve-fails-but-held",
			setup: active("s3-bigblock-metasnap", rwStatus, func(sys *machine, c *fakeDM) {
				c.reserveErr = errors.New("device-mapper ioctl 14: reply out of bounds")
				c.reserveHeld = true
			}),
			code:     ExitError,
			reserved: true,
			stderr:   "cannot reserve a metadata snapshot of the pool docker-254:16-393219-pool: device-mapper ioctl 14: reply out of bounds\nstop docker and check the stopped pool",
		},
		{
			name: "active-reserve-fails-held-release-fails",
			setup: active("s3-bigblock-metasnap", rwStatus, func(sys *machine, c *fakeDM) {
				c.reserveErr = errors.New("device-mapper ioctl 14: reply out of bounds")
				c.reserveHeld = true
				c.releaseErr = errors.New("device-mapper ioctl 14: no such device or address")
			}),
			code:     ExitError,
			reserved: true,
			stderr:   "a metadata snapshot was left held: release it with 'dmsetup message docker-254:16-393219-pool 0 release_metadata_snap'",
		},
		{
			name: "overlay2",
			setup: func(t *testing.T) (*machine, *fakeDM, string) {
				info := system.Info{ServerVersion: "28.2.2", Driver: "overlay2", DockerRootDir: "/var/lib/docker"}
				return testSystem(t, newFakeDaemon(true), &fakeEngine{info: info}, nil, 0), nil, ""
			},
			code:   ExitError,
			stderr: "the daemon uses the overlay2 storage driver, not devicemapper",
		},
		{
			name: "api-error",
			setup: func(t *testing.T) (*machine, *fakeDM, string) {
				sys := testSystem(t, newFakeDaemon(true), &fakeEngine{infoErr: errors.New("permission denied")}, nil, 0)
				return sys, nil, t.TempDir()
			},
			code:   ExitError,
			stderr: "dockerd runs but did not answer",
		},
		{
			name: "nothing-under-root",
			setup: func(t *testing.T) (*machine, *fakeDM, string) {
				sys, _ := stopped(t, t.TempDir())
				return sys, nil, t.TempDir()
			},
			code:   ExitError,
			stderr: "give --root DIR",
		},
		{
			name: "root-unreadable",
			setup: func(t *testing.T) (*machine, *fakeDM, string) {
				root := filepath.Join(t.TempDir(), "not-a-folder")
				assert.NilError(t, os.WriteFile(root, nil, 0o600))
				sys, _ := stopped(t, root)
				return sys, nil, root
			},
			code:   ExitError,
			stderr: "cannot look for docker's storage: stat ",
		},
		{
			name: "unnamed-pool",
			setup: func(t *testing.T) (*machine, *fakeDM, string) {
				root := t.TempDir()
				assert.NilError(t, os.MkdirAll(root+"/devicemapper/metadata", 0o700))
				sys, _ := stopped(t, root)
				return sys, nil, root
			},
			code:   ExitError,
			stderr: "metadata device is not known",
		},
		{
			name: "activity-unknown",
			setup: func(t *testing.T) (*machine, *fakeDM, string) {
				root := fakeRoot(t)
				sys, _ := stopped(t, root)
				sys.daemon.(*fakeDaemon).activeErr = errors.New("reading /sys: permission denied")
				return sys, nil, root
			},
			code:   ExitError,
			stderr: "cannot tell whether the pool",
		},
		{
			name: "unnamed-pool-daemon-running",
			setup: func(t *testing.T) (*machine, *fakeDM, string) {
				root := t.TempDir()
				assert.NilError(t, os.MkdirAll(root+"/devicemapper/metadata", 0o700))
				sys := testSystem(t, newFakeDaemon(true), &fakeEngine{infoErr: errors.New("permission denied")}, nil, 0)
				assert.NilError(t, os.WriteFile(sys.daemonConfig, []byte(`{"data-root": "`+root+`", "storage-opts": ["dm.metadatadev=/dev/sdc1"]}`), 0o600))
				return sys, nil, ""
			},
			code:   ExitError,
			stderr: "cannot tell whether the pool is active while dockerd runs",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sys, c, root := tc.setup(t)
			tc.opts.root = root
			dockerCLI, out, errb := newTestCLI(t)
			err := runCheckPool(t.Context(), dockerCLI, sys, tc.opts)
			assert.Check(t, is.Equal(exitStatus(err), tc.code), message(err))
			all := errb.String() + message(err)
			if tc.stderr != "" {
				assert.Check(t, is.Contains(all, tc.stderr))
			}
			if tc.opts.quiet {
				assert.Check(t, is.Equal(out.String(), ""))
				assert.Check(t, is.Equal(all, ""))
			}
			if c != nil {
				assert.Check(t, is.Equal(c.reserved, b2i(tc.reserved)))
				assert.Check(t, is.Equal(c.released, c.reserved), "every reserved snapshot is released")
			}
			if (tc.code == ExitClean || tc.golden) && !tc.opts.quiet {
				golden.Assert(t, normalize(out.String(), map[string]string{sys.devBlock: "DEVBLOCK"}), "check-pool-"+tc.name+".golden")
			}
		})
	}
}

// TestCheckPoolCancelled: Ctrl-C during a snapshot check still releases
// the snapshot.
func TestCheckPoolCancelled(t *testing.T) {
	sys, c := activePool(t, "s3-bigblock-metasnap", rwStatus)
	ctx, cancel := contextCancelled(t)
	defer cancel()
	// locate itself stops on a cancelled context; reserve through the
	// snapshot path directly, as a cancel during the check would.
	loc := locate(t.Context(), sys, "")
	assert.Assert(t, loc.Pool != nil && loc.Pool.Active)
	dockerCLI, _, _ := newTestCLI(t)
	err := checkSnapshot(ctx, dockerCLI, sys, loc.Pool, checkOptions{})
	assert.Check(t, is.Equal(exitStatus(err), ExitCancelled))
	assert.Check(t, is.Equal(c.reserved, 1))
	assert.Check(t, is.Equal(c.released, 1))

	err = runCheckPool(ctx, dockerCLI, sys, checkOptions{})
	assert.Check(t, is.Equal(exitStatus(err), ExitCancelled))
	assert.Check(t, is.Equal(c.reserved, 1), "nothing is reserved once cancelled")
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestSignalGuard: while a snapshot is held, SIGINT reaches the guard
// instead of killing the process (were it not, this test would die).
func TestSignalGuard(t *testing.T) {
	g := holdSignals()
	defer g.release()
	assert.NilError(t, syscall.Kill(os.Getpid(), syscall.SIGINT))
	select {
	case sig := <-g.sigs:
		assert.Check(t, is.Equal(sig, os.Signal(os.Interrupt)))
	case <-time.After(10 * time.Second):
		t.Fatal("SIGINT did not reach the guard")
	}
}
