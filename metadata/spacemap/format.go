package spacemap

import (
	"encoding/binary"
	"fmt"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
)

const (
	// EntriesPerBitmap is the number of 2-bit counts one bitmap block holds.
	EntriesPerBitmap = (block.Size - 16) * 4
	// MaxIndexEntries is how many bitmaps the metadata index block lists.
	MaxIndexEntries = (block.Size - 16) / IndexEntrySize
	// IndexEntrySize is the size of an index entry, and the value size of
	// the data space map's index b-tree.
	IndexEntrySize = 16
	// RootSize is the used part of a space-map root in the superblock.
	RootSize = 32
	// MaxMetadataBlocks is the most metadata blocks one index block covers.
	MaxMetadataBlocks = MaxIndexEntries * EntriesPerBitmap
)

// Root is a space map's root as stored in the superblock.
type Root struct {
	NrBlocks     uint64
	NrAllocated  uint64
	BitmapRoot   block.Nr
	RefCountRoot block.Nr
}

// ParseRoot decodes a space-map root from the first RootSize bytes of b.
func ParseRoot(b []byte) Root {
	le := binary.LittleEndian
	return Root{
		NrBlocks:     le.Uint64(b[0:]),
		NrAllocated:  le.Uint64(b[8:]),
		BitmapRoot:   block.Nr(le.Uint64(b[16:])),
		RefCountRoot: block.Nr(le.Uint64(b[24:])),
	}
}

// Put encodes r into the first RootSize bytes of b.
func (r Root) Put(b []byte) {
	le := binary.LittleEndian
	le.PutUint64(b[0:], r.NrBlocks)
	le.PutUint64(b[8:], r.NrAllocated)
	le.PutUint64(b[16:], uint64(r.BitmapRoot))
	le.PutUint64(b[24:], uint64(r.RefCountRoot))
}

// NrBitmaps is the number of bitmaps needed for r.NrBlocks blocks.
func (r Root) NrBitmaps() uint64 { return BitmapsFor(r.NrBlocks) }

// BitmapsFor is the number of bitmaps that cover n blocks.
func BitmapsFor(n uint64) uint64 { return (n + EntriesPerBitmap - 1) / EntriesPerBitmap }

// IndexEntry locates one bitmap and summarises it.
type IndexEntry struct {
	Blocknr        block.Nr
	NrFree         uint32
	NoneFreeBefore uint32
}

// ParseIndexEntry decodes a 16-byte index entry.
func ParseIndexEntry(b []byte) IndexEntry {
	le := binary.LittleEndian
	return IndexEntry{
		Blocknr:        block.Nr(le.Uint64(b[0:])),
		NrFree:         le.Uint32(b[8:]),
		NoneFreeBefore: le.Uint32(b[12:]),
	}
}

// Put encodes e into the first IndexEntrySize bytes of b.
func (e IndexEntry) Put(b []byte) {
	le := binary.LittleEndian
	le.PutUint64(b[0:], uint64(e.Blocknr))
	le.PutUint32(b[8:], e.NrFree)
	le.PutUint32(b[12:], e.NoneFreeBefore)
}

// ParseIndexBlock decodes the first n entries of a verified metadata index
// block. n is bounded by what the block can hold.
func ParseIndexBlock(b []byte, n uint64) ([]IndexEntry, error) {
	if n > MaxIndexEntries {
		return nil, fmt.Errorf("%w: %d bitmaps needed, an index block holds %d", block.ErrCorrupt, n, MaxIndexEntries)
	}
	es := make([]IndexEntry, n)
	for i := range es {
		es[i] = ParseIndexEntry(b[16+IndexEntrySize*i:])
	}
	return es, nil
}

// Get is the 2-bit count of entry j (< EntriesPerBitmap) of bitmap block b.
func Get(b []byte, j int) uint8 {
	v := b[16+j/4] >> (2 * (j % 4))
	return (v&1)<<1 | (v>>1)&1
}

// Set stores count v (0..3) as entry j of bitmap block b.
func Set(b []byte, j int, v uint8) {
	s := 2 * (j % 4)
	bits := (v>>1)&1 | (v&1)<<1
	p := &b[16+j/4]
	*p = *p&^(3<<s) | bits<<s
}

// Decode expands the first n entries of bitmap block b into dst (len >= n).
// It works a byte at a time through a table, four entries per byte.
func Decode(b []byte, dst []uint8, n int) {
	for i := 0; i*4 < n; i++ {
		q := quad[b[16+i]]
		if n-i*4 >= 4 {
			copy(dst[i*4:], q[:])
		} else {
			copy(dst[i*4:n], q[:n-i*4])
		}
	}
}

var quad = func() (t [256][4]uint8) {
	for v := range 256 {
		for j := range 4 {
			x := uint8(v) >> (2 * j)
			t[v][j] = (x&1)<<1 | (x>>1)&1
		}
	}
	return t
}()
