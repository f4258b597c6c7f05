package btree_test

import (
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// FuzzParseNode feeds arbitrary node bytes to the parser. A parse that
// succeeds must re-encode to a node that parses back the same.
func FuzzParseNode(f *testing.F) {
	img := thintest.Image(thintest.Load(f, "s2-snapshot-tree"))
	for _, n := range []block.Nr{72, 73, 75, 77, 78, 76, 74} {
		f.Add(append([]byte(nil), img.Block(n)...), uint64(n), 8)
	}
	f.Add(append([]byte(nil), img.Block(77)...), uint64(77), 24)
	f.Fuzz(func(t *testing.T, raw []byte, at uint64, vs int) {
		b := make([]byte, block.Size)
		copy(b, raw)
		vs = []int{4, 8, 16, 24}[uint(vs)%4]
		n, err := btree.ParseNode(b, block.Nr(at), vs)
		if err != nil {
			return
		}
		keys := make([]uint64, n.NrEntries)
		var vals []byte
		for i := range n.NrEntries {
			keys[i] = n.Key(i)
			vals = append(vals, n.Value(i)...)
		}
		if n.MaxEntries != btree.MaxEntries(n.ValueSize) {
			return // legal but not what Encode writes
		}
		again := make([]byte, block.Size)
		btree.Encode(again, block.Nr(at), n.Internal, keys, vals, n.ValueSize)
		m, err := btree.ParseNode(again, block.Nr(at), vs)
		assert.NilError(t, err)
		assert.Equal(t, m.NrEntries, n.NrEntries)
		assert.Equal(t, m.Internal, n.Internal)
		for i := range n.NrEntries {
			assert.Equal(t, m.Key(i), n.Key(i))
			assert.DeepEqual(t, m.Value(i), n.Value(i))
		}
	})
}
