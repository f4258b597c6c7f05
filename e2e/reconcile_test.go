package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/icmd"

	"github.com/docker-devmapper/docker-devmapper/plugin/dockerroot/roottest"
)

// The devices of testdata/dockervm that the reconcile test changes.
const (
	// c1's container device: docker's open transaction names it.
	c1Hash = "bd1a97c99310e0911348c450b8a676fe70dfa3164393a07f0df5b78ca477f918"
	// c3's init device, device 8: its record is removed, so it is an orphan.
	c3InitHash = "40ea3dc2153808cfd6ea35eb962b7358d2561cde07781c223c2fda2c32204e0b-init"
	// A record of device 900, which the pool never held.
	missingHash = "5f0c3e9d8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d"
)

// The transaction record as the test leaves it (docker opened
// transaction 10 for c1's device, the pool is at 9), and as repair must
// leave it: docker's own format, one line of compact JSON.
const (
	transactionAhead = `{"open_transaction_id":10,"device_hash":"` + c1Hash + `","device_id":4}`
	transactionFixed = `{"open_transaction_id":9,"device_hash":"` + c1Hash + `","device_id":4}`
)

// lsDevice is one device of 'ls --format json'.
type lsDevice struct {
	DeviceID     uint32          `json:"device_id"`
	Hash         string          `json:"hash"`
	Owner        json.RawMessage `json:"owner"`
	MappedBlocks uint64          `json:"mapped_blocks"`
	Findings     []string        `json:"findings"`
}

type lsOwner struct {
	Kind string `json:"kind"`
	ID   string `json:"id"`
	Name string `json:"name"`
}

// runningDockerd is the pid of a process named dockerd, or "".
func runningDockerd(t *testing.T) string {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	assert.NilError(t, err)
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err == nil && strings.TrimSpace(string(comm)) == "dockerd" {
			return e.Name()
		}
	}
	return ""
}

// reconcileRoot lays out a stopped loop-lvm data root from the records
// and the pool a real docker 20.10 left (testdata/dockervm), with three
// differences between them: device 8 (c3's init device) is an orphan,
// docker has a record of a device 900 the pool does not hold, and
// docker's open transaction (10) is above the pool's (9) and names c1's
// device 4, which docker would therefore delete at start-up.
func reconcileRoot(t *testing.T, c *CLI) (root, meta string) {
	t.Helper()
	root = roottest.Root(t)
	pool := filepath.Join(root, "devicemapper", "devicemapper")
	assert.NilError(t, os.MkdirAll(pool, 0o700))
	meta = filepath.Join(pool, "metadata")
	c.RunStandalone("restore", "-i", filepath.Join(roottest.Dir(), "thin-dump.xml"), "-o", meta, "--size", "64MiB").
		Assert(t, icmd.Success)
	data, err := os.Create(filepath.Join(pool, "data"))
	assert.NilError(t, err)
	// nr_data_blocks of 128 sectors each, as the dump's superblock says.
	assert.NilError(t, data.Truncate(1638400*65536))
	assert.NilError(t, data.Close())

	records := filepath.Join(root, "devicemapper", "metadata")
	assert.NilError(t, os.Remove(filepath.Join(records, c3InitHash)))
	assert.NilError(t, os.WriteFile(filepath.Join(records, missingHash),
		[]byte(`{"device_id":900,"size":1073741824,"transaction_id":9,"initialized":false,"deleted":false}`), 0o600))
	assert.NilError(t, os.WriteFile(filepath.Join(records, "transaction-metadata"), []byte(transactionAhead), 0o600))
	return root, meta
}

// lsDevices runs ls as JSON through the docker CLI; it exits 4 while
// docker's records lose data (here: device 900 is missing).
func lsDevices(t *testing.T, c *CLI, meta, root string) map[uint32]lsDevice {
	t.Helper()
	res := c.RunDocker(t, "devmapper", "ls", "--metadata", meta, "--root", root, "--format", "json")
	// Left after the repair: the record of device 900, which nothing
	// uses, a warning.
	res.Assert(t, icmd.Success)
	return parseLs(t, res.Stdout())
}

func parseLs(t *testing.T, out string) map[uint32]lsDevice {
	t.Helper()
	var list []lsDevice
	assert.NilError(t, json.Unmarshal([]byte(out), &list), out)
	devs := map[uint32]lsDevice{}
	for _, d := range list {
		_, dup := devs[d.DeviceID]
		assert.Assert(t, !dup, "device %d listed twice", d.DeviceID)
		devs[d.DeviceID] = d
	}
	return devs
}

func owner(t *testing.T, d lsDevice) *lsOwner {
	t.Helper()
	var o *lsOwner
	assert.NilError(t, json.Unmarshal(d.Owner, &o))
	return o
}

// recordLines are the lines of a check report about docker's records.
func recordLines(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "error: docker records") || strings.HasPrefix(l, "warning: docker records") {
			lines = append(lines, l)
		}
	}
	return lines
}

// TestReconcileDataRoot: check and ls report every difference between
// docker's records and its stopped pool, through the real docker CLI as
// well as standalone; repair sets back the transaction docker would roll
// back, drops the orphan with --remove-orphans after backing up both,
// leaves the device it must not touch alone, and has nothing left to do
// when run again.
func TestReconcileDataRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("repairing docker's pool needs root")
	}
	if pid := runningDockerd(t); pid != "" {
		t.Skipf("dockerd runs on this machine (pid %s): repair refuses to touch a pool while any dockerd runs", pid)
	}
	c := NewCLI(t, binary).WithEnv("DOCKER_HOST=unix://" + filepath.Join(t.TempDir(), "no-daemon.sock"))
	root, meta := reconcileRoot(t, c)
	transactionFile := filepath.Join(root, "devicemapper", "metadata", "transaction-metadata")

	t.Run("check", func(t *testing.T) {
		runBoth(t, c, []string{"check", "--root", root}, func(t *testing.T, res *icmd.Result) {
			res.Assert(t, icmd.Expected{ExitCode: 4, Err: "checking the inactive pool docker-"})
			out := res.Stdout()
			assert.Check(t, is.Contains(out, "transaction id 9, time 8, 9 devices"))
			assert.Check(t, is.Contains(out,
				"warning: docker records (device 8): thin device 8 is in the pool but docker has no record of it: its space is leaked\n"))
			// No image or container uses device 900: its record is only
			// a warning.
			assert.Check(t, is.Contains(out,
				"warning: docker records (device 900): docker's device 900 (hash 5f0c3e9d8a7b) is not in the pool: docker cannot activate it\n"))
			assert.Check(t, is.Regexp(`(?m)^error: docker records \(device 4\): docker will delete device 4 \(container cccccccccccc \(c1\)\) at start-up: `+
				`its open transaction 10 is above the pool's transaction id 9, .*the device IS in the pool`, out))
			assert.Check(t, is.Len(recordLines(out), 3), out)
		})
	})

	var before map[uint32]lsDevice
	t.Run("ls", func(t *testing.T) {
		runBoth(t, c, []string{"ls", "--metadata", meta, "--root", root, "--format", "json"}, func(t *testing.T, res *icmd.Result) {
			res.Assert(t, icmd.Expected{ExitCode: 4})
			devs := parseLs(t, res.Stdout())
			assert.Check(t, is.Len(devs, 9))
			orphan, ok := devs[8]
			assert.Assert(t, ok, "device 8 not listed")
			assert.Check(t, is.Equal(string(orphan.Owner), "null"))
			assert.Check(t, is.Equal(orphan.Hash, ""))
			assert.Check(t, is.DeepEqual(orphan.Findings, []string{"orphan"}))
			c1, ok := devs[4]
			assert.Assert(t, ok, "device 4 not listed")
			assert.Check(t, is.Equal(c1.Hash, c1Hash))
			assert.Check(t, is.DeepEqual(owner(t, c1), &lsOwner{Kind: "container", ID: strings.Repeat("c", 64), Name: "c1"}))
			assert.Check(t, is.DeepEqual(c1.Findings, []string{"rollback"}))
			_, listed := devs[900]
			assert.Check(t, !listed, "ls lists device 900, which the pool does not hold")
			// The findings go to stderr, so stdout stays JSON.
			assert.Check(t, is.Contains(res.Stderr(), "thin device 8 is in the pool but docker has no record of it"))
			assert.Check(t, is.Contains(res.Stderr(), "docker's device 900 (hash 5f0c3e9d8a7b) is not in the pool"))
			assert.Check(t, is.Contains(res.Stderr(), "docker will delete device 4 (container cccccccccccc (c1))"))
			if before == nil {
				before = devs
			}
		})
	})
	assert.Assert(t, before != nil, "ls gave no device list")
	metaBefore := SHA256(t, meta)
	assert.Equal(t, readString(t, transactionFile), transactionAhead, "check or ls changed docker's records")

	// The repair changes the root, so it runs once, through the docker CLI.
	// It fixes what it may and exits 1. The record of the missing
	// device, which no image or container uses, is reported and left.
	res := c.RunDocker(t, "devmapper", "repair", "--root", root, "--yes", "--remove-orphans")
	res.Assert(t, icmd.Expected{ExitCode: 1})
	assert.Check(t, is.Contains(res.Stdout(),
		"fix: devicemapper/metadata/transaction-metadata: open_transaction_id 10 -> 9: docker would delete device 4 (container cccccccccccc (c1))"))
	assert.Check(t, is.Contains(res.Stdout(),
		"left: docker's device 900 (hash 5f0c3e9d8a7b) is not in the pool: docker cannot activate it"))
	assert.Check(t, is.Contains(res.Stderr(), "the pool's metadata checks clean: nothing to repair"))
	assert.Check(t, is.Contains(res.Stderr(), "fixed docker's records; the originals are in "))
	assert.Check(t, is.Contains(res.Stderr(), "dropped 1 orphan device, freeing 1 data blocks; the metadata before is in "))

	t.Run("transaction-record", func(t *testing.T) {
		assert.Check(t, is.Equal(readString(t, transactionFile), transactionFixed))
	})
	t.Run("backup", func(t *testing.T) {
		dirs, err := filepath.Glob(filepath.Join(root, "devicemapper", "repair-*"))
		assert.NilError(t, err)
		assert.Assert(t, is.Len(dirs, 1))
		backup := dirs[0]
		assert.Check(t, is.Contains(res.Stderr(), "the originals are in "+filepath.Join(backup, "records")+"\n"))
		assert.Check(t, is.Contains(res.Stderr(), "the metadata before is in "+filepath.Join(backup, "metadata")+"\n"))
		assert.Check(t, is.Equal(readString(t, filepath.Join(backup, "records", "devicemapper", "metadata", "transaction-metadata")), transactionAhead))
		assert.Check(t, is.Equal(SHA256(t, filepath.Join(backup, "metadata")), metaBefore))
	})
	t.Run("thin_check", func(t *testing.T) {
		tc, err := exec.LookPath("thin_check")
		if err != nil {
			t.Skip("thin_check is not installed")
		}
		icmd.RunCommand(tc, meta).Assert(t, icmd.Success)
	})
	t.Run("ls-after", func(t *testing.T) {
		devs := lsDevices(t, c, meta, root)
		_, listed := devs[8]
		assert.Check(t, !listed, "the dropped orphan is still listed")
		assert.Check(t, is.Len(devs, len(before)-1))
		for id, was := range before {
			if id == 8 {
				continue
			}
			now, ok := devs[id]
			if !assert.Check(t, ok, "device %d is gone", id) {
				continue
			}
			assert.Check(t, is.Equal(now.MappedBlocks, was.MappedBlocks), "device %d", id)
			assert.Check(t, is.Equal(now.Hash, was.Hash), "device %d", id)
			assert.Check(t, is.Equal(string(now.Owner), string(was.Owner)), "device %d", id)
			assert.Check(t, is.Len(now.Findings, 0), "device %d", id)
		}
	})
	t.Run("check-after", func(t *testing.T) {
		runBoth(t, c, []string{"check", "--root", root}, func(t *testing.T, res *icmd.Result) {
			res.Assert(t, icmd.Expected{ExitCode: 0, Out: "clean (1 warning, nothing to repair)"})
			out := res.Stdout()
			assert.Check(t, is.Contains(out, "transaction id 9, time 8, 8 devices"))
			assert.Check(t, is.DeepEqual(recordLines(out), []string{
				"warning: docker records (device 900): docker's device 900 (hash 5f0c3e9d8a7b) is not in the pool: docker cannot activate it",
			}))
		})
	})

	// Nothing is left that repair may fix: the missing device is docker's
	// to deal with. The second run changes nothing and says so.
	metaAfter := SHA256(t, meta)
	again := c.RunDocker(t, "devmapper", "repair", "--root", root, "--yes", "--remove-orphans")
	again.Assert(t, icmd.Expected{ExitCode: 0, Out: "left: docker's device 900 (hash 5f0c3e9d8a7b) is not in the pool"})
	assert.Check(t, !strings.Contains(again.Stdout(), "fix: "), again.Stdout())
	assert.Check(t, !strings.Contains(again.Stdout(), "orphan: "), again.Stdout())
	assert.Check(t, is.Equal(SHA256(t, meta), metaAfter))
	assert.Check(t, is.Equal(readString(t, transactionFile), transactionFixed))
	dirs, err := filepath.Glob(filepath.Join(root, "devicemapper", "repair-*"))
	assert.NilError(t, err)
	assert.Check(t, is.Len(dirs, 1), "a repair that changed nothing left a backup folder")
}

func readString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	assert.NilError(t, err)
	return string(b)
}
