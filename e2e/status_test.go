package e2e

import (
	"os"
	"path/filepath"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/icmd"
)

// dataRoot lays out a data root as docker's devicemapper driver leaves it
// with loop-lvm once docker has stopped: the sparse data file, the
// metadata file (kernel-written s2) and docker's per-device records.
func dataRoot(t *testing.T) (root, metadata string) {
	t.Helper()
	root = t.TempDir()
	dm := filepath.Join(root, "devicemapper")
	assert.NilError(t, os.MkdirAll(filepath.Join(dm, "devicemapper"), 0o700))
	assert.NilError(t, os.MkdirAll(filepath.Join(dm, "metadata"), 0o700))
	metadata = filepath.Join(dm, "devicemapper", "metadata")
	assert.NilError(t, os.Rename(kernelImage(t, "s2-snapshot-tree"), metadata))
	data, err := os.Create(filepath.Join(dm, "devicemapper", "data"))
	assert.NilError(t, err)
	assert.NilError(t, data.Truncate(1<<32))
	assert.NilError(t, data.Close())
	assert.NilError(t, os.WriteFile(filepath.Join(dm, "metadata", "base"), []byte(`{"device_id":1,"size":10737418240,"transaction_id":1,"initialized":true,"deleted":false}`), 0o600))
	assert.NilError(t, os.WriteFile(filepath.Join(dm, "metadata", "transaction-metadata"), []byte(`{"open_transaction_id":42,"device_hash":"","device_id":1}`), 0o600))
	return root, metadata
}

// TestStatusAndCheckDataRoot: with the pool's daemon stopped, status and
// check find the pool under --root, read it without changing it, and
// exit 0 when it is clean and 4 when it is damaged. (A daemon running on
// this machine, if any, is not the pool's: at most its answer is missing.)
func TestStatusAndCheckDataRoot(t *testing.T) {
	c := NewCLI(t, binary).WithEnv("DOCKER_HOST=unix://" + filepath.Join(t.TempDir(), "no-daemon.sock"))
	root, meta := dataRoot(t)
	before := SHA256(t, meta)
	t.Run("status-clean", func(t *testing.T) {
		runBoth(t, c, []string{"status", "--root", root}, func(t *testing.T, res *icmd.Result) {
			res.Assert(t, icmd.Success)
			assert.Check(t, is.Regexp(`(?m)^pool: +docker-\d+:\d+-\d+-pool \(loop-lvm\), not active$`, res.Stdout()))
			assert.Check(t, is.Contains(res.Stdout(), "superblock:     checksum ok, transaction 42"))
			assert.Check(t, is.Contains(res.Stdout(), "health:         ok\n"))
		})
	})
	t.Run("check-clean", func(t *testing.T) {
		runBoth(t, c, []string{"check", "--root", root}, func(t *testing.T, res *icmd.Result) {
			res.Assert(t, icmd.Expected{ExitCode: 0, Out: "clean", Err: "checking the inactive pool docker-"})
		})
	})
	assert.Check(t, is.Equal(SHA256(t, meta), before), "status and check must not change the metadata")

	// Damage the mapping tree's top node: check finds it; status, which
	// reads the superblock only, does not.
	f, err := os.OpenFile(meta, os.O_RDWR, 0)
	assert.NilError(t, err)
	_, err = f.WriteAt([]byte{0xde, 0xad}, 72*4096+100)
	assert.NilError(t, err)
	assert.NilError(t, f.Close())
	t.Run("check-damaged", func(t *testing.T) {
		runBoth(t, c, []string{"check", "--root", root}, func(t *testing.T, res *icmd.Result) {
			res.Assert(t, icmd.Expected{ExitCode: 4})
		})
	})

	// Superblock damage is what status sees.
	f, err = os.OpenFile(meta, os.O_RDWR, 0)
	assert.NilError(t, err)
	_, err = f.WriteAt([]byte{0xde, 0xad}, 100)
	assert.NilError(t, err)
	assert.NilError(t, f.Close())
	t.Run("status-damaged", func(t *testing.T) {
		runBoth(t, c, []string{"status", "--root", root}, func(t *testing.T, res *icmd.Result) {
			res.Assert(t, icmd.Expected{ExitCode: 4, Out: "damage: the superblock is damaged"})
		})
	})
}
