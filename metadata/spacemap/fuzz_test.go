package spacemap_test

import (
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// FuzzBitmap checks that Decode, Get and Set agree on any bitmap bytes.
func FuzzBitmap(f *testing.F) {
	img := thintest.Image(thintest.Load(f, "s2-snapshot-tree"))
	sb := img.Superblock()
	ix := img.Block(sb.MetadataSM.BitmapRoot)
	f.Add(append([]byte(nil), img.Block(spacemap.ParseIndexEntry(ix[16:]).Blocknr)...), 5, uint8(2))
	f.Fuzz(func(t *testing.T, raw []byte, j int, v uint8) {
		b := make([]byte, block.Size)
		copy(b, raw)
		vals := make([]uint8, spacemap.EntriesPerBitmap)
		spacemap.Decode(b, vals, len(vals))
		for i := range 64 {
			assert.Equal(t, vals[i], spacemap.Get(b, i))
		}
		j = int(uint(j) % spacemap.EntriesPerBitmap)
		v &= 3
		spacemap.Set(b, j, v)
		assert.Equal(t, spacemap.Get(b, j), v)
		spacemap.Decode(b, vals, len(vals))
		assert.Equal(t, vals[j], v)
	})
}

// FuzzIndexBlock parses arbitrary index blocks with any claimed count and
// checks entries re-encode to the same bytes.
func FuzzIndexBlock(f *testing.F) {
	img := thintest.Image(thintest.Load(f, "s2-snapshot-tree"))
	f.Add(append([]byte(nil), img.Block(img.Superblock().MetadataSM.BitmapRoot)...), uint64(1))
	f.Add([]byte{}, uint64(1<<40))
	f.Fuzz(func(t *testing.T, raw []byte, n uint64) {
		b := make([]byte, block.Size)
		copy(b, raw)
		es, err := spacemap.ParseIndexBlock(b, n)
		if err != nil {
			assert.Assert(t, n > spacemap.MaxIndexEntries)
			return
		}
		assert.Equal(t, uint64(len(es)), n)
		for i, e := range es {
			var again [spacemap.IndexEntrySize]byte
			e.Put(again[:])
			assert.DeepEqual(t, again[:], b[16+spacemap.IndexEntrySize*i:16+spacemap.IndexEntrySize*(i+1)])
		}
	})
}

// FuzzRoot round-trips space-map roots.
func FuzzRoot(f *testing.F) {
	img := thintest.Image(thintest.Load(f, "s2-snapshot-tree"))
	f.Add(append([]byte(nil), img.Block(0)[64:96]...))
	f.Fuzz(func(t *testing.T, raw []byte) {
		b := make([]byte, spacemap.RootSize)
		copy(b, raw)
		r := spacemap.ParseRoot(b)
		again := make([]byte, spacemap.RootSize)
		r.Put(again)
		assert.DeepEqual(t, again, b)
	})
}
