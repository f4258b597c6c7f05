package repair_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/repair"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// demoSample is the shipped damaged sample (wrong reference counts, trees
// intact), unpacked into a file of its own.
func demoSample(t *testing.T) (path string, img []byte) {
	t.Helper()
	path = thintest.GunzipFile(t, filepath.Join(thintest.Root(), "testdata", "demo", "s2-refcount.img.gz"))
	img, err := os.ReadFile(path)
	assert.NilError(t, err)
	return path, img
}

// treeDamaged is s2 with its top-level mapping node zeroed: only a rebuild
// of the trees repairs it.
func treeDamaged(t *testing.T) (path string, img []byte) {
	t.Helper()
	im := thintest.Image(thintest.Load(t, "s2-snapshot-tree"))
	im.Zero(im.Superblock().MappingRoot)
	return thintest.WriteTemp(t, im), im
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	assert.NilError(t, err)
	return b
}

func checkReport(t *testing.T, img []byte, keep bool) *check.Report {
	t.Helper()
	rep, err := check.Run(t.Context(), thintest.Image(img).Reader(), check.Options{KeepCounts: keep})
	assert.NilError(t, err)
	return rep
}

// sameMetadata asserts that got holds the metadata want does: the same
// superblock and every block want's metadata uses unchanged, and so the
// same check report.
func sameMetadata(t *testing.T, got, want []byte) {
	t.Helper()
	rc := checkReport(t, want, true).Recount()
	assert.Assert(t, rc != nil)
	g, w := thintest.Image(got), thintest.Image(want)
	assert.Check(t, bytes.Equal(g.Block(0), w.Block(0)), "the superblock changed")
	for n := range rc.Meta {
		if rc.Meta[n] != 0 || rc.SpaceMap[n] {
			assert.Check(t, bytes.Equal(g.Block(block.Nr(n)), w.Block(block.Nr(n))), "block %d, in use, changed", n)
		}
	}
	assert.Check(t, is.Equal(checkReport(t, got, false).Summary(), checkReport(t, want, false).Summary()))
}

// sameRepair asserts that got is what -o makes of the same input, want:
// equal wherever want holds anything; where want is zero (a block the
// repaired metadata does not use) got may keep what the device held.
func sameRepair(t *testing.T, got, want []byte) {
	t.Helper()
	assert.Assert(t, is.Equal(len(got), len(want)))
	g, w := thintest.Image(got), thintest.Image(want)
	zero := make([]byte, block.Size)
	used := 0
	for n := range w.NrBlocks() {
		if bytes.Equal(w.Block(n), zero) {
			continue
		}
		used++
		assert.Check(t, bytes.Equal(g.Block(n), w.Block(n)), "block %d differs from the -o repair", n)
	}
	assert.Check(t, used > 2, "the -o repair holds %d blocks", used)
}

func repairToFile(t *testing.T, orig []byte) []byte {
	t.Helper()
	in := thintest.WriteTemp(t, orig)
	out := filepath.Join(t.TempDir(), "repaired")
	_, err := repair.RepairFile(t.Context(), repair.FileOptions{Input: in, Output: out})
	assert.NilError(t, err)
	return readFile(t, out)
}

// TestRepairDeviceInPlace: a device whose counts are wrong, trees intact,
// is repaired in place: it checks clean, holds what -o writes, and the
// backup is the original.
func TestRepairDeviceInPlace(t *testing.T) {
	for name, load := range map[string]func(*testing.T) (string, []byte){
		"demo-sample": demoSample,
		"kernel-s2":   damagedFile,
	} {
		t.Run(name, func(t *testing.T) {
			path, orig := load(t)
			backup := filepath.Join(t.TempDir(), "meta.bak")
			var steps []repair.Step
			res, err := repair.RepairFile(t.Context(), repair.AsDevice(repair.FileOptions{Input: path, InPlace: true, Backup: backup,
				Hook: func(s repair.Step) error { steps = append(steps, s); return nil }}))
			assert.NilError(t, err)
			assert.Check(t, is.Equal(res.Action, repair.SpaceMaps))
			assert.Check(t, is.Equal(res.Output, path))
			assert.Check(t, is.Equal(res.Backup, backup))
			assert.Assert(t, res.After != nil)
			assert.Check(t, is.Equal(res.After.Outcome, check.Clean))
			assert.Check(t, is.DeepEqual(steps, []repair.Step{repair.StepBackupWritten, repair.StepDeviceWritten, repair.StepSuperblockWritten}))
			checksClean(t, path)
			sameRepair(t, readFile(t, path), repairToFile(t, orig))
			assert.Check(t, bytes.Equal(readFile(t, backup), orig))
		})
	}
}

// TestRepairDeviceInPlaceAbort stops an in-place device repair after each
// step, as a crash would: until the superblock is written the device holds
// the original metadata (its superblock and every block it uses as they
// were), after it the complete repair.
func TestRepairDeviceInPlaceAbort(t *testing.T) {
	for _, tc := range []struct {
		step      repair.Step
		identical bool // the device byte for byte as it was
		repaired  bool
	}{
		{step: repair.StepBackupWritten, identical: true},
		{step: repair.StepDeviceWritten},
		{step: repair.StepSuperblockWritten, repaired: true},
	} {
		t.Run(string(tc.step), func(t *testing.T) {
			path, orig := demoSample(t)
			backup := filepath.Join(t.TempDir(), "meta.bak")
			_, err := repair.RepairFile(t.Context(), repair.AsDevice(repair.FileOptions{Input: path, InPlace: true, Backup: backup,
				Hook: func(s repair.Step) error {
					if s == tc.step {
						return errAbort
					}
					return nil
				}}))
			assert.Check(t, is.ErrorIs(err, errAbort))
			got := readFile(t, path)
			switch {
			case tc.identical:
				assert.Check(t, bytes.Equal(got, orig))
			case tc.repaired:
				checksClean(t, path)
				sameRepair(t, got, repairToFile(t, orig))
			default:
				assert.Check(t, !bytes.Equal(got, orig), "nothing was written before the superblock: the step tests nothing")
				sameMetadata(t, got, orig)
			}
			assert.Check(t, bytes.Equal(readFile(t, backup), orig))
		})
	}
}

// TestRepairDeviceInPlaceRefusals: a device in place without --backup, or
// with a repair that rewrites blocks the current metadata uses, is left as
// it was, without a backup taken.
func TestRepairDeviceInPlaceRefusals(t *testing.T) {
	t.Run("no-backup", func(t *testing.T) {
		path, orig := demoSample(t)
		_, err := repair.RepairFile(t.Context(), repair.AsDevice(repair.FileOptions{Input: path, InPlace: true}))
		assert.Check(t, is.ErrorIs(err, repair.ErrDeviceBackup))
		assert.Check(t, bytes.Equal(readFile(t, path), orig))
		_, err = os.Stat(path + ".bak")
		assert.Check(t, os.IsNotExist(err), "a backup was written")
	})
	t.Run("tree-rebuild", func(t *testing.T) {
		path, orig := treeDamaged(t)
		backup := filepath.Join(t.TempDir(), "meta.bak")
		res, err := repair.RepairFile(t.Context(), repair.AsDevice(repair.FileOptions{Input: path, InPlace: true, Backup: backup}))
		assert.Check(t, is.ErrorIs(err, repair.ErrInPlaceUnsafe))
		assert.Check(t, is.ErrorContains(err, "nothing was written to the device"))
		assert.Assert(t, res != nil)
		assert.Check(t, is.Equal(res.Action, repair.Rebuild))
		assert.Check(t, bytes.Equal(readFile(t, path), orig))
		_, err = os.Stat(backup)
		assert.Check(t, os.IsNotExist(err), "a backup was written")

		// A dry run says so beforehand, and the same repair to a file works.
		_, err = repair.RepairFile(t.Context(), repair.AsDevice(repair.FileOptions{Input: path, InPlace: true, DryRun: true}))
		assert.Check(t, is.ErrorIs(err, repair.ErrInPlaceUnsafe))
		out := filepath.Join(t.TempDir(), "repaired")
		_, err = repair.RepairFile(t.Context(), repair.FileOptions{Input: path, Output: out})
		assert.NilError(t, err)
		checksClean(t, out)
	})
	t.Run("dry-run-safe", func(t *testing.T) {
		path, orig := demoSample(t)
		res, err := repair.RepairFile(t.Context(), repair.AsDevice(repair.FileOptions{Input: path, InPlace: true, DryRun: true}))
		assert.NilError(t, err)
		assert.Check(t, is.Equal(res.Action, repair.SpaceMaps))
		assert.Check(t, bytes.Equal(readFile(t, path), orig))
	})
}

// TestDropFileDeviceInPlace: DropFile takes the same road for a device in
// place; its new nodes and space maps go to blocks free in the input, so
// it is done, and gives what -o gives.
func TestDropFileDeviceInPlace(t *testing.T) {
	orig := thintest.Load(t, "s2-snapshot-tree")
	path := thintest.WriteTemp(t, orig)
	backup := filepath.Join(t.TempDir(), "meta.bak")
	_, err := repair.DropFile(t.Context(), repair.AsDevice(repair.FileOptions{Input: path, InPlace: true, Backup: backup}), []thin.DevID{5})
	assert.NilError(t, err)
	checksClean(t, path)
	assert.Check(t, bytes.Equal(readFile(t, backup), orig))
	out := filepath.Join(t.TempDir(), "out")
	_, err = repair.DropFile(t.Context(), repair.FileOptions{Input: thintest.WriteTemp(t, orig), Output: out}, []thin.DevID{5})
	assert.NilError(t, err)
	sameRepair(t, readFile(t, path), readFile(t, out))
}
