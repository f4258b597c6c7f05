package e2e

import (
	"regexp"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

// TestDockerVMDirect is TestDockerVM's machine with a pool given to docker
// with dm.thinpooldev, the "direct-lvm" layout of production hosts: a
// thin pool made by hand with dmsetup on two loop devices, named in
// /etc/docker/daemon.json. The plugin finds it through the daemon while
// docker runs and through daemon.json and the kernel once docker stops
// (which leaves the pool active); check reads it through a metadata
// snapshot it releases; repair refuses to touch it; with the pool
// removed, its metadata device checks clean; and docker starts on the
// pool again with a container's file intact. The machine runs
// testdata/dockervm/direct.sh; each step is judged here.
func TestDockerVMDirect(t *testing.T) {
	s, done := bootStory(t, "direct.sh", nil)
	defer done()

	const pool = "dvm-thinpool"
	var (
		metaLoop string // the metadata's loop device, /dev/loopN
		metaDev  string // its MAJOR:MINOR, which the pool's table names
		c1Sum    string // the checksum c1 printed of the file it wrote
	)
	t.Run("setup", func(t *testing.T) {
		s.success(t, "setup-stop-loop")
		assert.Check(t, is.Contains(s.out("setup-loop-gone"), "No devices found"), "docker's loop-lvm pool is still active after docker stopped")
		out := s.success(t, "setup-files")
		m := regexp.MustCompile(`(?m)^meta (/dev/loop\d+)$`).FindStringSubmatch(out)
		assert.Assert(t, m != nil, "no loop device for the metadata: %q", out)
		metaLoop = m[1]
		assert.Check(t, is.Regexp(`(?m)^data /dev/loop\d+$`, out))
		assert.Check(t, is.Regexp(`(?m)^0 \d+ thin-pool `+regexp.QuoteMeta(metaLoop)+` /dev/loop\d+ 128 32768 1 skip_block_zeroing$`, s.success(t, "setup-pool")))
		metaDev = strings.TrimSpace(s.success(t, "setup-meta-dev"))
		assert.Check(t, is.Regexp(`^7:\d+$`, metaDev))
		out = s.success(t, "setup-config")
		assert.Check(t, !strings.Contains(out, "--storage-"), "dockerd still gets storage options on its command line:\n%s", out)
		s.success(t, "setup-start")
		s.success(t, "setup-import")
		sum := strings.Fields(s.success(t, "setup-c1"))
		assert.Assert(t, len(sum) == 2 && sum[1] == "/blob", "c1 printed no checksum of /blob: %q", s.out("setup-c1"))
		c1Sum = sum[0]
	})
	assert.Assert(t, metaLoop != "" && metaDev != "", "the pool was not made (setup failed)")

	// The kernel's table names the metadata device; the plugin reads the
	// pool's metadata from there, and nowhere else.
	table := strings.Fields(s.success(t, "live-table"))
	assert.Assert(t, len(table) >= 5 && table[2] == "thin-pool", "the pool's table: %q", s.out("live-table"))
	assert.Assert(t, is.Equal(table[3], metaDev), "the kernel's table does not name the metadata loop device %s (%s)", metaLoop, metaDev)
	metaRead := "/dev/block/" + table[3]

	// 1. Status, check and ls while docker runs on the pool.
	t.Run("1-live-status", func(t *testing.T) {
		out := s.success(t, "live-status")
		assert.Check(t, is.Regexp(`(?m)^storage driver: +devicemapper \(docker \S+, from the daemon\)$`, out))
		assert.Check(t, is.Regexp(`(?m)^pool: +`+pool+` \(direct-lvm\), active$`, out))
		// The devices are the ones the kernel's table names; the metadata
		// is read from that device, so no other line names it.
		assert.Check(t, is.Regexp(`(?m)^metadata: +`+regexp.QuoteMeta(metaRead)+`$`, out))
		assert.Check(t, is.Regexp(`(?m)^data: +/dev/block/7:\d+$`, out))
		assert.Check(t, !strings.Contains(out, "metadata read:"), out)
		assert.Check(t, !strings.Contains(out, "unknown"), out)
		assert.Check(t, is.Regexp(`(?m)^health: +ok$`, out))
		st := s.status(t, "live-status-json")
		assert.Check(t, is.Equal(st.Driver, "devicemapper"))
		assert.Check(t, is.Equal(st.Source, "daemon"))
		assert.Check(t, st.Daemon.Running, "the daemon is not reported running")
		assert.Check(t, is.Equal(st.Root, "/var/lib/docker"))
		assert.Check(t, is.Equal(st.Health, "ok"), out)
		assert.Check(t, is.Len(st.Problems, 0), out)
		assert.Check(t, is.Len(st.Warnings, 0), out)
		assert.Check(t, is.Len(st.Unknowns, 0), "status could not tell everything:\n%s", out)
		assert.Assert(t, st.Pool != nil, "no pool in status --json")
		assert.Check(t, is.Equal(st.Pool.Name, pool))
		assert.Check(t, is.Equal(st.Pool.Layout, "direct-lvm"))
		assert.Check(t, is.Equal(st.Pool.MetadataFile, ""), "a pool on block devices has no loop files")
		assert.Check(t, is.Equal(st.Pool.DataFile, ""), "a pool on block devices has no loop files")
		assert.Check(t, is.Equal(st.Pool.Metadata, metaRead), "the metadata is read from the device the kernel's table names")
		assert.Check(t, is.Equal(st.Pool.MetadataDevice, metaRead), "the metadata device is the one the kernel's table names")
		assert.Check(t, strings.HasPrefix(st.Pool.DataDevice, "/dev/block/7:"), "the data device is the loop device the kernel's table names: %q", st.Pool.DataDevice)
		assert.Check(t, st.Pool.Active != nil && *st.Pool.Active, "the pool is not reported active")
		assert.Assert(t, st.Pool.Kernel != nil, "no kernel view of the active pool")
		assert.Check(t, is.Equal(st.Pool.Kernel.Mode, "rw"))
		assert.Check(t, is.Equal(st.Pool.Kernel.HeldRoot, uint64(0)))
	})
	t.Run("1-live-check-through-snapshot", func(t *testing.T) {
		rc, out := s.rc("live-check"), s.out("live-check")
		assert.Check(t, rc == 0, "check of the live pool, through a metadata snapshot, exited %d instead of 0:\n%s", rc, out)
		assert.Check(t, is.Regexp(`(?m)^checking the active pool `+pool+` through a metadata snapshot of `+regexp.QuoteMeta(metaRead)+`$`, out))
		assert.Check(t, is.Regexp(`(?m)^clean$`, out))
		held := s.out("live-check-pool")
		assert.Check(t, heldRootReleased(held), "check left a metadata snapshot held in the kernel (the held-root field of the pool's status):\n%s", held)
	})
	t.Run("1-live-ls", func(t *testing.T) {
		s.liveOwners(t, "live-ls", "live-ls-pool", "container c1", "image layer tiny:latest")
	})

	// 2. Docker stops and leaves the pool it was given active. Status
	// finds it from daemon.json and the kernel; check, with the daemon
	// stopped and the pool active, reads it through a snapshot.
	t.Run("2-stopped-pool-active", func(t *testing.T) {
		s.success(t, "stop")
		out := s.success(t, "stopped-dmsetup")
		assert.Check(t, is.Regexp(`(?m)^`+pool+`: 0 \d+ thin-pool `, out), "the pool is gone after docker stopped:\n%s", out)
		out = s.success(t, "stopped-status")
		assert.Check(t, is.Regexp(`(?m)^storage driver: +devicemapper \(from the files under the data root\)$`, out))
		assert.Check(t, is.Regexp(`(?m)^daemon: +not running$`, out))
		assert.Check(t, is.Regexp(`(?m)^pool: +`+pool+` \(direct-lvm\), active$`, out))
		assert.Check(t, is.Regexp(`(?m)^health: +ok$`, out))
		st := s.status(t, "stopped-status-json")
		assert.Check(t, is.Equal(st.Driver, "devicemapper"))
		assert.Check(t, is.Equal(st.Source, "root"))
		assert.Check(t, !st.Daemon.Running, "the daemon is reported running")
		assert.Check(t, is.Equal(st.Health, "ok"), out)
		assert.Check(t, is.Len(st.Unknowns, 0), "status could not tell everything:\n%s", out)
		assert.Assert(t, st.Pool != nil, "no pool in status --json")
		assert.Check(t, is.Equal(st.Pool.Name, pool))
		assert.Check(t, is.Equal(st.Pool.Layout, "direct-lvm"))
		assert.Check(t, is.Equal(st.Pool.Metadata, metaRead), "the metadata is read from the device the kernel's table names")
		assert.Check(t, is.Equal(st.Pool.MetadataDevice, metaRead), "the metadata device is the one the kernel's table names")
		assert.Check(t, strings.HasPrefix(st.Pool.DataDevice, "/dev/block/7:"), "the data device is the loop device the kernel's table names: %q", st.Pool.DataDevice)
		assert.Check(t, st.Pool.Active != nil && *st.Pool.Active, "the pool is not reported active")

		rc, out := s.rc("stopped-check"), s.out("stopped-check")
		assert.Check(t, rc == 0, "check of the active pool with docker stopped exited %d instead of 0:\n%s", rc, out)
		assert.Check(t, is.Regexp(`(?m)^checking the active pool `+pool+` through a metadata snapshot of `+regexp.QuoteMeta(metaRead)+`$`, out))
		assert.Check(t, is.Regexp(`(?m)^clean$`, out))
		held := s.out("stopped-check-pool")
		assert.Check(t, heldRootReleased(held), "check left a metadata snapshot held:\n%s", held)
	})

	// 3. Repair will not replace the metadata of a pool given to docker:
	// it says what to do instead, and the pool, its metadata and docker's
	// records are as they were.
	t.Run("3-repair-refused", func(t *testing.T) {
		out := s.exit(t, "repair", 8)
		assert.Check(t, is.Contains(out, "the pool "+pool+" was given to docker (dm.thinpooldev or direct-lvm)"))
		assert.Check(t, is.Contains(out, "nothing was changed"))
		// What to do instead, for an LVM pool and for one made with
		// dmsetup, as this one was.
		assert.Check(t, is.Contains(out, "lvconvert --repair"), "no guidance for an LVM pool")
		assert.Check(t, is.Contains(out, "'dmsetup remove "+pool+"'"), "no guidance for a pool made with dmsetup")
		before := s.success(t, "before-repair")
		assert.Check(t, is.Contains(before, "thin-pool"), "no table or status of the pool before the repair: %s", before)
		assert.Check(t, is.Equal(s.success(t, "after-repair"), before), "the metadata, the pool's table or status, or docker's records changed")
	})

	// 4. The pool removed, its metadata device is read directly: clean,
	// and nothing to repair.
	t.Run("4-removed-pool-metadata", func(t *testing.T) {
		s.success(t, "remove")
		assert.Check(t, !strings.Contains(s.out("removed-dmsetup"), pool), "the pool is still there: %s", s.out("removed-dmsetup"))
		rc, out := s.rc("offline-check"), s.out("offline-check")
		assert.Check(t, rc == 0, "check --metadata %s exited %d instead of 0:\n%s", metaLoop, rc, out)
		assert.Check(t, is.Regexp(`(?m)^clean$`, out))
		out = s.success(t, "offline-repair")
		assert.Check(t, is.Contains(out, "nothing to repair"))
	})

	// 5. The same table makes the same pool; docker starts on it and c1
	// finds the file it wrote, unchanged.
	t.Run("5-pool-again", func(t *testing.T) {
		s.success(t, "again-pool")
		assert.Check(t, is.Equal(s.success(t, "again-table"), s.out("live-table")), "the pool made again has another table")
		s.success(t, "again-start")
		assert.Check(t, is.Equal(s.success(t, "again-c1"), "/blob: OK\nhello-from-c1\n"+c1Sum+"  /blob\n"), "c1 after docker started on the pool again")
	})
}
