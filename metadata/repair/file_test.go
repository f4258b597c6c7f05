package repair_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/repair"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// damagedFile is s2 with a wrong data count, in a file of its own.
func damagedFile(t *testing.T) (path string, img []byte) {
	t.Helper()
	im := thintest.Image(thintest.Load(t, "s2-snapshot-tree"))
	im.SetDataCount(t, 0, 1)
	return thintest.WriteTemp(t, im), im
}

func checksClean(t *testing.T, path string) {
	t.Helper()
	f, err := block.Open(path)
	assert.NilError(t, err)
	defer f.Close()
	rep, err := check.Run(t.Context(), f.Reader, check.Options{})
	assert.NilError(t, err)
	assert.Check(t, is.Equal(rep.Outcome(), check.Clean), rep.Summary())
}

var errAbort = errors.New("aborted by the test")

// TestRepairFileInPlaceAbort stops an in-place repair after each step, as
// a crash would: the file is the original until the rename and the
// complete repair after it, and the backup is whole from the first step.
func TestRepairFileInPlaceAbort(t *testing.T) {
	for _, tc := range []struct {
		step     repair.Step
		repaired bool
	}{
		{repair.StepBackupWritten, false},
		{repair.StepTempWritten, false},
		{repair.StepTempChecked, false},
		{repair.StepRenamed, true},
	} {
		t.Run(string(tc.step), func(t *testing.T) {
			path, orig := damagedFile(t)
			_, err := repair.RepairFile(t.Context(), repair.FileOptions{Input: path, InPlace: true,
				Hook: func(s repair.Step) error {
					if s == tc.step {
						return errAbort
					}
					return nil
				}})
			assert.Check(t, is.ErrorIs(err, errAbort))
			got, err := os.ReadFile(path)
			assert.NilError(t, err)
			if tc.repaired {
				assert.Check(t, !bytes.Equal(got, orig))
				checksClean(t, path)
			} else {
				assert.Check(t, bytes.Equal(got, orig), "the original changed before the rename")
			}
			backup, err := os.ReadFile(path + ".bak")
			assert.NilError(t, err)
			assert.Check(t, bytes.Equal(backup, orig))
			// No temporary file is left behind.
			entries, err := os.ReadDir(filepath.Dir(path))
			assert.NilError(t, err)
			assert.Check(t, is.Len(entries, 2))
		})
	}
}

// TestRepairFileInPlace: a complete in-place repair, then a second one
// that finds nothing to do.
func TestRepairFileInPlace(t *testing.T) {
	path, orig := damagedFile(t)
	backup := filepath.Join(t.TempDir(), "saved")
	res, err := repair.RepairFile(t.Context(), repair.FileOptions{Input: path, InPlace: true, Backup: backup})
	assert.NilError(t, err)
	assert.Check(t, is.Equal(res.Action, repair.SpaceMaps))
	assert.Check(t, is.Equal(res.Backup, backup))
	checksClean(t, path)
	b, err := os.ReadFile(backup)
	assert.NilError(t, err)
	assert.Check(t, bytes.Equal(b, orig))

	// Now there is nothing to repair, so no backup is needed and the taken
	// backup path is no obstacle.
	_, err = repair.RepairFile(t.Context(), repair.FileOptions{Input: path, InPlace: true, Backup: backup})
	assert.NilError(t, err, "nothing to repair: no backup needed")
	res, err = repair.RepairFile(t.Context(), repair.FileOptions{Input: path, DryRun: true})
	assert.NilError(t, err)
	assert.Check(t, is.Equal(res.Action, repair.Nothing))
}

func TestRepairFileRefusals(t *testing.T) {
	t.Run("locked", func(t *testing.T) {
		path, _ := damagedFile(t)
		f, err := os.Open(path)
		assert.NilError(t, err)
		defer f.Close()
		assert.NilError(t, syscall.Flock(int(f.Fd()), syscall.LOCK_EX))
		_, err = repair.RepairFile(t.Context(), repair.FileOptions{Input: path, DryRun: true})
		assert.Check(t, is.ErrorIs(err, repair.ErrLocked))
	})
	t.Run("output-holds-metadata", func(t *testing.T) {
		path, _ := damagedFile(t)
		out := thintest.WriteTemp(t, thintest.Load(t, "s1-one-empty-thin"))
		before, err := os.ReadFile(out)
		assert.NilError(t, err)
		_, err = repair.RepairFile(t.Context(), repair.FileOptions{Input: path, Output: out})
		assert.Check(t, is.ErrorIs(err, repair.ErrOutputHasMetadata))
		after, err := os.ReadFile(out)
		assert.NilError(t, err)
		assert.Check(t, bytes.Equal(before, after))
		_, err = repair.RepairFile(t.Context(), repair.FileOptions{Input: path, Output: out, Force: true})
		assert.NilError(t, err)
		checksClean(t, out)
	})
	t.Run("output-all-zero", func(t *testing.T) {
		path, _ := damagedFile(t)
		out := filepath.Join(t.TempDir(), "zero")
		assert.NilError(t, os.WriteFile(out, make([]byte, 1<<20), 0o600))
		_, err := repair.RepairFile(t.Context(), repair.FileOptions{Input: path, Output: out})
		assert.NilError(t, err)
		checksClean(t, out)
	})
	t.Run("output-is-input", func(t *testing.T) {
		path, _ := damagedFile(t)
		_, err := repair.RepairFile(t.Context(), repair.FileOptions{Input: path, Output: path})
		assert.Check(t, is.ErrorIs(err, repair.ErrSameFile))
	})
	t.Run("backup-exists", func(t *testing.T) {
		path, orig := damagedFile(t)
		assert.NilError(t, os.WriteFile(path+".bak", []byte("older"), 0o600))
		_, err := repair.RepairFile(t.Context(), repair.FileOptions{Input: path, InPlace: true})
		assert.Check(t, is.ErrorIs(err, repair.ErrBackupExists))
		got, err := os.ReadFile(path)
		assert.NilError(t, err)
		assert.Check(t, bytes.Equal(got, orig))
	})
}
