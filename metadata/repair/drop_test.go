package repair_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/repair"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
	"github.com/docker-devmapper/docker-devmapper/metadata/xml"
)

// poolDevice is one device of a pool as the tests see it: its root and
// the data blocks it maps.
type poolDevice struct {
	root     block.Nr
	hasRoot  bool
	mappings uint64
	data     map[thin.DataBlock]bool
}

// poolDevices reads every device and its mappings with the thin walker.
func poolDevices(t *testing.T, img thintest.Image) map[thin.DevID]poolDevice {
	t.Helper()
	w := thin.NewWalker(img.Reader(), img.Superblock())
	devs, err := w.Devices()
	assert.NilError(t, err)
	out := map[thin.DevID]poolDevice{}
	for _, d := range devs {
		pd := poolDevice{root: d.Root, hasRoot: d.HasRoot, data: map[thin.DataBlock]bool{}}
		assert.NilError(t, w.Mappings(d, func(ms []thin.Mapping) error {
			for _, m := range ms {
				pd.mappings++
				pd.data[m.Data] = true
			}
			return nil
		}))
		out[d.ID] = pd
	}
	return out
}

// treeNodes lists the blocks of the b-tree at root.
func treeNodes(t *testing.T, img thintest.Image, root block.Nr) []block.Nr {
	t.Helper()
	n, err := btree.ParseNode(img.Block(root), root, 8)
	assert.NilError(t, err)
	out := []block.Nr{root}
	if n.Internal {
		for i := range n.NrEntries {
			out = append(out, treeNodes(t, img, n.Child(i))...)
		}
	}
	return out
}

// dumpDevices prints the devices ids of img as thin_dump does.
func dumpDevices(t *testing.T, img thintest.Image, ids []thin.DevID) string {
	t.Helper()
	var b bytes.Buffer
	xw := xml.NewWriter(&b, xml.XML)
	assert.NilError(t, xml.Dump(img.Reader(), xw, xml.Options{DevIDs: ids}))
	assert.NilError(t, xw.Flush())
	return b.String()
}

// referenceCheck runs thin_check 0.9.0 and 1.1.0 on the metadata in path,
// each where installed.
func referenceCheck(t *testing.T, path string) {
	t.Helper()
	for _, tool := range []string{"thin_check", filepath.Join(tpt11(), "thin_check")} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Logf("%s not installed: not run", tool)
			continue
		}
		if out, err := exec.Command(tool, path).CombinedOutput(); err != nil {
			t.Errorf("%s rejects the metadata: %v\n%s", tool, err, out)
		}
	}
}

// TestDropDevices drops devices from the kernel-written pools and checks
// the result against what the input says: clean by our check and the
// reference ones, the other devices and every node of their trees
// unchanged, the pool values kept, and exactly the blocks only the
// dropped devices used freed.
func TestDropDevices(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fixture string
		drop    []thin.DevID
	}{
		// Device 5 shares nothing.
		{name: "independent", fixture: "s2-snapshot-tree", drop: []thin.DevID{5}},
		// Device 4 shares its whole tree with 3: nothing is freed.
		{name: "untouched-snapshot", fixture: "s2-snapshot-tree", drop: []thin.DevID{4}},
		// Together 3 and 4 free what they share with nobody else.
		{name: "snapshot-pair", fixture: "s2-snapshot-tree", drop: []thin.DevID{4, 3}},
		{name: "origin", fixture: "s2-snapshot-tree", drop: []thin.DevID{1}},
		{name: "middle-snapshot", fixture: "s2-snapshot-tree", drop: []thin.DevID{2}},
		{name: "origin-and-independent", fixture: "s2-snapshot-tree", drop: []thin.DevID{1, 5, 1}},
		{name: "every-device", fixture: "s2-snapshot-tree", drop: []thin.DevID{1, 2, 3, 4, 5}},
		{name: "empty-device", fixture: "s1-one-empty-thin", drop: []thin.DevID{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := thintest.Image(thintest.Load(t, tc.fixture))
			orig := img.Clone()
			out := make(thintest.Image, len(img))
			res, err := repair.DropDevices(t.Context(), img.Reader(), writerAt(out), int64(len(out)), tc.drop)
			assert.NilError(t, err)
			assert.Check(t, bytes.Equal(img, orig), "the input changed")
			assert.Assert(t, res.After != nil)
			assert.Check(t, is.Equal(res.After.Outcome, check.Clean), res.After.Summary)

			rep, err := check.Run(t.Context(), out.Reader(), check.Options{})
			assert.NilError(t, err)
			assert.Check(t, is.Equal(rep.Outcome(), check.Clean), rep.Summary())
			referenceCheck(t, thintest.WriteTemp(t, out))

			// What the input says each device maps.
			before := poolDevices(t, img)
			gone := map[thin.DevID]bool{}
			for _, id := range tc.drop {
				gone[id] = true
			}
			keptData := map[thin.DataBlock]bool{}
			var kept []thin.DevID
			for id, d := range before {
				if !gone[id] {
					kept = append(kept, id)
					for b := range d.data {
						keptData[b] = true
					}
				}
			}
			slices.Sort(kept)
			freed := map[thin.DataBlock]bool{}
			for id := range gone {
				for b := range before[id].data {
					if !keptData[b] {
						freed[b] = true
					}
				}
			}

			// The dropped devices, each with what only it mapped.
			assert.Assert(t, is.Len(res.Devices, len(gone)))
			for i, d := range res.Devices {
				if i > 0 {
					assert.Check(t, d.ID > res.Devices[i-1].ID, "devices not in id order")
				}
				b := before[d.ID]
				exclusive := uint64(0)
				for blk := range b.data {
					only := true
					for other, od := range before {
						if other != d.ID && od.data[blk] {
							only = false
						}
					}
					if only {
						exclusive++
					}
				}
				assert.Check(t, is.Equal(d.Mappings, b.mappings), "device %d", d.ID)
				assert.Check(t, is.Equal(d.ExclusiveBlocks, exclusive), "device %d", d.ID)
				assert.Check(t, is.Equal(d.Shared, exclusive < uint64(len(b.data)) || sharesRoot(before, d.ID)), "device %d", d.ID)
			}
			assert.Check(t, is.Equal(res.Kept, len(kept)))
			assert.Check(t, is.Equal(res.DataBlocksFreed, uint64(len(freed))))

			a, z := img.Superblock(), out.Superblock()
			assert.Check(t, is.Equal(a.DataSM.NrAllocated-z.DataSM.NrAllocated, uint64(len(freed))))
			assert.Check(t, z.MetadataSM.NrAllocated <= a.MetadataSM.NrAllocated,
				"metadata blocks %d after, %d before", z.MetadataSM.NrAllocated, a.MetadataSM.NrAllocated)
			assert.Check(t, is.Equal(res.MetadataBefore, a.MetadataSM.NrAllocated))
			assert.Check(t, is.Equal(res.MetadataAfter, z.MetadataSM.NrAllocated))
			assert.Check(t, is.Equal(z.TransactionID, a.TransactionID))
			assert.Check(t, is.Equal(z.Time, a.Time))
			assert.Check(t, is.Equal(z.Flags, a.Flags))
			assert.Check(t, is.Equal(z.Version, a.Version))
			assert.Check(t, is.Equal(z.DataBlockSize, a.DataBlockSize))
			assert.Check(t, is.Equal(z.DataSM.NrBlocks, a.DataSM.NrBlocks))
			assert.Check(t, is.Equal(z.MetadataSM.NrBlocks, a.MetadataSM.NrBlocks))
			assert.Check(t, is.Equal(z.MetadataNrBlocks, a.MetadataNrBlocks))
			assert.Check(t, is.Equal(z.MetadataSnap, block.Nr(0)))

			// The kept devices: the same details and mappings, the same
			// roots, and every node of their trees byte for byte where it
			// was, so that snapshots still share.
			after := poolDevices(t, out)
			assert.Check(t, is.Len(after, len(kept)))
			for _, id := range kept {
				b, z := before[id], after[id]
				assert.Check(t, is.Equal(z.root, b.root), "device %d", id)
				if b.hasRoot {
					for _, n := range treeNodes(t, img, b.root) {
						assert.Check(t, bytes.Equal(out.Block(n), img.Block(n)), "device %d: node %d moved or changed", id, n)
					}
				}
			}
			if len(kept) > 0 {
				assert.Check(t, is.Equal(dumpDevices(t, out, kept), dumpDevices(t, img, kept)))
			} else {
				assert.Check(t, is.Equal(countMappings(dumpDevices(t, out, nil)), uint64(0)))
			}
		})
	}
}

// sharesRoot says whether another device's tree is device id's.
func sharesRoot(devs map[thin.DevID]poolDevice, id thin.DevID) bool {
	for other, d := range devs {
		if other != id && d.hasRoot && d.root == devs[id].root {
			return true
		}
	}
	return false
}

// TestDropDevicesDryRun: without an output the result is built and
// checked in memory.
func TestDropDevicesDryRun(t *testing.T) {
	img := thintest.Image(thintest.Load(t, "s2-snapshot-tree"))
	orig := img.Clone()
	res, err := repair.DropDevices(t.Context(), img.Reader(), nil, int64(len(img)), []thin.DevID{5})
	assert.NilError(t, err)
	assert.Check(t, res.DryRun)
	assert.Assert(t, res.After != nil)
	assert.Check(t, is.Equal(res.After.Outcome, check.Clean))
	assert.Check(t, is.Equal(res.DataBlocksFreed, uint64(3)))
	assert.Check(t, bytes.Equal(img, orig))

	// Nothing to drop: nothing checked, nothing written.
	res, err = repair.DropDevices(t.Context(), img.Reader(), nil, int64(len(img)), nil)
	assert.NilError(t, err)
	assert.Check(t, is.Len(res.Devices, 0))
	assert.Check(t, res.After == nil)
}

// TestDropDevicesRefusals: input a drop would make worse, or ids it does
// not hold, are refused before anything is written.
func TestDropDevicesRefusals(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fixture string
		damage  func(t *testing.T, img thintest.Image)
		drop    []thin.DevID
		want    error
	}{
		{name: "counts-wrong", fixture: "s2-snapshot-tree", drop: []thin.DevID{5}, want: repair.ErrDropNotClean,
			damage: func(t *testing.T, img thintest.Image) { img.SetDataCount(t, 0, 1) }},
		{name: "leaf-damaged", fixture: "s2-snapshot-tree", drop: []thin.DevID{5}, want: repair.ErrDropNotClean,
			damage: func(t *testing.T, img thintest.Image) {
				leaf, _ := img.Mapping(t, 1, 300)
				img.Flip(leaf, 100, 0)
			}},
		{name: "superblock-zeroed", fixture: "s2-snapshot-tree", drop: []thin.DevID{5}, want: repair.ErrDropNotClean,
			damage: func(t *testing.T, img thintest.Image) { img.Zero(0) }},
		{name: "unknown-device", fixture: "s2-snapshot-tree", drop: []thin.DevID{5, 6}, want: repair.ErrNoSuchDevice},
		{name: "metadata-snapshot-held", fixture: "s3-bigblock-metasnap", drop: []thin.DevID{9}, want: repair.ErrMetadataSnapHeld},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := thintest.Image(thintest.Load(t, tc.fixture))
			if tc.damage != nil {
				tc.damage(t, img)
			}
			out := make(thintest.Image, len(img))
			res, err := repair.DropDevices(t.Context(), img.Reader(), writerAt(out), int64(len(out)), tc.drop)
			assert.Check(t, is.ErrorIs(err, tc.want))
			assert.Check(t, res == nil)
			assert.Check(t, bytes.Equal(out, make([]byte, len(out))), "output written")
		})
	}
}

// TestDropFileInPlaceAbort stops an in-place drop after each step, as a
// crash would: the file is the original until the rename and the
// complete result after it, and the backup is whole from the first step.
func TestDropFileInPlaceAbort(t *testing.T) {
	for _, tc := range []struct {
		step    repair.Step
		dropped bool
	}{
		{repair.StepBackupWritten, false},
		{repair.StepTempWritten, false},
		{repair.StepTempChecked, false},
		{repair.StepRenamed, true},
	} {
		t.Run(string(tc.step), func(t *testing.T) {
			orig := thintest.Load(t, "s2-snapshot-tree")
			path := thintest.WriteTemp(t, orig)
			_, err := repair.DropFile(t.Context(), repair.FileOptions{Input: path, InPlace: true,
				Hook: func(s repair.Step) error {
					if s == tc.step {
						return errAbort
					}
					return nil
				}}, []thin.DevID{3, 4})
			assert.Check(t, is.ErrorIs(err, errAbort))
			got, err := os.ReadFile(path)
			assert.NilError(t, err)
			if tc.dropped {
				checksClean(t, path)
				devs := poolDevices(t, got)
				assert.Check(t, is.Len(devs, 3))
				_, has3 := devs[3]
				assert.Check(t, !has3)
			} else {
				assert.Check(t, bytes.Equal(got, orig), "the original changed before the rename")
			}
			backup, err := os.ReadFile(path + ".bak")
			assert.NilError(t, err)
			assert.Check(t, bytes.Equal(backup, orig))
			entries, err := os.ReadDir(filepath.Dir(path))
			assert.NilError(t, err)
			assert.Check(t, is.Len(entries, 2), "a temporary file was left behind")
		})
	}
}

// TestDropFile: to a new file, in place, as a dry run, and refused where
// the input is not clean.
func TestDropFile(t *testing.T) {
	t.Run("output", func(t *testing.T) {
		orig := thintest.Load(t, "s2-snapshot-tree")
		path := thintest.WriteTemp(t, orig)
		out := filepath.Join(t.TempDir(), "out")
		res, err := repair.DropFile(t.Context(), repair.FileOptions{Input: path, Output: out}, []thin.DevID{5})
		assert.NilError(t, err)
		assert.Check(t, is.Equal(res.Output, out))
		assert.Check(t, is.Equal(res.DataBlocksFreed, uint64(3)))
		checksClean(t, out)
		got, err := os.ReadFile(path)
		assert.NilError(t, err)
		assert.Check(t, bytes.Equal(got, orig), "the input changed")
		o, err := os.ReadFile(out)
		assert.NilError(t, err)
		assert.Check(t, is.Len(poolDevices(t, o), 4))
	})
	t.Run("in-place", func(t *testing.T) {
		orig := thintest.Load(t, "s2-snapshot-tree")
		path := thintest.WriteTemp(t, orig)
		assert.NilError(t, os.Chmod(path, 0o640))
		backup := filepath.Join(t.TempDir(), "saved")
		res, err := repair.DropFile(t.Context(), repair.FileOptions{Input: path, InPlace: true, Backup: backup}, []thin.DevID{1})
		assert.NilError(t, err)
		assert.Check(t, is.Equal(res.Backup, backup))
		checksClean(t, path)
		st, err := os.Stat(path)
		assert.NilError(t, err)
		assert.Check(t, is.Equal(st.Mode().Perm(), os.FileMode(0o640)))
		b, err := os.ReadFile(backup)
		assert.NilError(t, err)
		assert.Check(t, bytes.Equal(b, orig))
	})
	t.Run("dry-run", func(t *testing.T) {
		orig := thintest.Load(t, "s2-snapshot-tree")
		path := thintest.WriteTemp(t, orig)
		res, err := repair.DropFile(t.Context(), repair.FileOptions{Input: path, DryRun: true}, []thin.DevID{2})
		assert.NilError(t, err)
		assert.Check(t, res.DryRun)
		assert.Check(t, is.Equal(res.After.Outcome, check.Clean))
		got, err := os.ReadFile(path)
		assert.NilError(t, err)
		assert.Check(t, bytes.Equal(got, orig))
		entries, err := os.ReadDir(filepath.Dir(path))
		assert.NilError(t, err)
		assert.Check(t, is.Len(entries, 1))
	})
	t.Run("not-clean", func(t *testing.T) {
		path, orig := damagedFile(t)
		_, err := repair.DropFile(t.Context(), repair.FileOptions{Input: path, InPlace: true}, []thin.DevID{5})
		assert.Check(t, is.ErrorIs(err, repair.ErrDropNotClean))
		got, err := os.ReadFile(path)
		assert.NilError(t, err)
		assert.Check(t, bytes.Equal(got, orig))
		_, err = os.Stat(path + ".bak")
		assert.Check(t, os.IsNotExist(err), "a backup was written for a refused drop")
	})
}
