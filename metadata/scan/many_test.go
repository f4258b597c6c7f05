package scan_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/docker-devmapper/docker-devmapper/metadata/restore"
	"github.com/docker-devmapper/docker-devmapper/metadata/scan"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// manyDevices writes a pool of n thin devices, too many for one top-level
// leaf: device i maps i+1 blocks, so every device has its own count.
func manyDevices(t *testing.T, n int) thintest.Image {
	const size = 16 << 20
	p := filepath.Join(t.TempDir(), "pool")
	f, err := os.Create(p)
	assert.NilError(t, err)
	defer f.Close()
	assert.NilError(t, f.Truncate(size))
	r, err := restore.New(f, size, restore.Options{Time: 1, TransactionID: 5, DataBlockSize: 128, NrDataBlocks: 1 << 20})
	assert.NilError(t, err)
	data := thin.DataBlock(0)
	for i := range n {
		assert.NilError(t, r.BeginDevice(thin.DevID(i), thin.Details{MappedBlocks: uint64(i + 1), TransactionID: 4}))
		for v := range i + 1 {
			assert.NilError(t, r.Mapping(thin.Mapping{VBlock: thin.VBlock(v), Data: data, Time: 1}))
			data++
		}
		assert.NilError(t, r.EndDevice())
	}
	assert.NilError(t, r.End())
	raw, err := os.ReadFile(p)
	assert.NilError(t, err)
	return thintest.Image(raw)
}

// A top level of several leaves loses one: the live root stays the
// answer, and the devices of the lost leaf come back as orphans, each
// matched to exactly its own id by the live details.
func TestLostTopLevelLeaf(t *testing.T) {
	const n = 400
	img := manyDevices(t, n)
	sb := img.Superblock()
	root := img.Node(t, sb.MappingRoot, 8)
	assert.Assert(t, root.Internal)
	lost := root.Child(1)
	leaf := img.Node(t, lost, 8)
	var want []thin.DevID
	for i := range leaf.NrEntries {
		want = append(want, thin.DevID(leaf.Key(i)))
	}
	img.Zero(lost)

	res, err := scan.Run(t.Context(), img.Reader(), scan.Options{})
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(res.Roots, scan.Roots{Mapping: sb.MappingRoot, MappingFrom: scan.Superblock,
		Details: sb.DetailsRoot, DetailsFrom: scan.Superblock}))
	top, i := topLevel(res, sb.MappingRoot)
	assert.Assert(t, i >= 0)
	assert.Check(t, is.Equal(top.Problems, scan.ChildMissing))
	assert.Check(t, is.Equal(top.Devices, n-len(want)))

	var got []thin.DevID
	for _, d := range res.Orphans() {
		assert.Check(t, d.Consistent())
		assert.Assert(t, is.Len(d.Matches, 1), "device tree %d", d.Root)
		assert.Check(t, is.Equal(d.Mappings, uint64(d.Matches[0])+1))
		got = append(got, d.Matches[0])
	}
	slices.Sort(got)
	assert.Check(t, is.DeepEqual(got, want))

	// The same pool with its superblock gone too: no pair is whole, the
	// details tree still is, and the orphans match it the same way.
	img.Zero(0)
	res, err = scan.Run(t.Context(), img.Reader(), scan.Options{})
	assert.NilError(t, err)
	assert.Check(t, is.Len(res.Pairs, 0))
	assert.Check(t, is.DeepEqual(res.Roots, scan.Roots{Details: sb.DetailsRoot, DetailsFrom: scan.Scanned}))
	d, i := find(res.Details, func(tr scan.Tree) bool { return tr.Root == sb.DetailsRoot })
	assert.Assert(t, i == 0)
	assert.Check(t, is.Len(d.IDs, n))
	matched := 0
	for _, d := range res.Orphans() {
		if len(d.Matches) == 1 && d.Mappings == uint64(d.Matches[0])+1 {
			matched++
		}
	}
	assert.Check(t, is.Equal(matched, n))
}
