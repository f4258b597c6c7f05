package restore

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
)

// This file is the one space-map writer: End uses it for a restore, and a
// repair that keeps the trees where they are uses it through
// WriteSpaceMaps.
//
// The space maps describe blocks that include their own, which is a loop:
// their size depends on the counts and the counts on where they are. It is
// cut by counting everything else first. Every space-map block has exactly
// one reference, so none of them can enter an overflow tree; the number of
// overflow entries is therefore known before the space maps are placed,
// hence the number of blocks each space-map structure needs. Those blocks
// are reserved in one range of free blocks, counted as 1 each, and only
// then filled.

// Counts are the reference counts of one space map (a byte a block, in
// pieces allocated as touched; large counts on the side), for
// WriteSpaceMaps. The zero value is not usable; call NewCounts.
type Counts struct{ c *counts }

// NewCounts holds a count of 0 for each of nrBlocks blocks.
func NewCounts(nrBlocks uint64) *Counts { return &Counts{newCounts(nrBlocks)} }

// Len is the number of blocks counted.
func (c *Counts) Len() uint64 { return c.c.n }

// Get is the count of block b < Len.
func (c *Counts) Get(b uint64) uint32 { return c.c.get(b) }

// Set makes the count of block b < Len exactly v.
func (c *Counts) Set(b uint64, v uint32) { c.c.set(b, v) }

// SpaceMapBlocks is how many blocks WriteSpaceMaps needs for meta and data:
// bitmaps and index of both maps and both overflow trees.
func SpaceMapBlocks(meta, data *Counts) uint64 { return spaceMapBlocks(meta.c, data.c) }

// WriteSpaceMaps writes the data and metadata space maps for the counts
// data and meta into the SpaceMapBlocks(meta, data) blocks from start on,
// which must all be free (count 0 in meta) and inside the metadata. It
// counts those blocks as 1 each in meta first, so the metadata space map
// it writes describes itself. It returns the two roots for the superblock;
// writing the superblock is the caller's job.
func WriteSpaceMaps(w io.WriterAt, meta, data *Counts, start block.Nr) (metaRoot, dataRoot spacemap.Root, err error) {
	out := newWriter(w)
	if metaRoot, dataRoot, err = writeSpaceMaps(out, meta.c, data.c, start); err != nil {
		return metaRoot, dataRoot, err
	}
	return metaRoot, dataRoot, out.flush()
}

func spaceMapBlocks(meta, data *counts) uint64 {
	db := spacemap.BitmapsFor(data.n)
	return spacemap.BitmapsFor(meta.n) + 1 + db + btree.NodesFor(db, spacemap.IndexEntrySize) +
		btree.NodesFor(data.overflowLen(), 4) + btree.NodesFor(meta.overflowLen(), 4)
}

// writeSpaceMaps reserves spaceMapBlocks blocks from start, fills them with
// both space maps through out, and returns their roots.
func writeSpaceMaps(out *writer, meta, data *counts, start block.Nr) (metaRoot, dataRoot spacemap.Root, err error) {
	need := spaceMapBlocks(meta, data)
	if uint64(start)+need > meta.n {
		return metaRoot, dataRoot, fmt.Errorf("%w: the space maps need %d blocks from block %d, the metadata has %d",
			ErrNoSpace, need, start, meta.n)
	}
	sm := &allocator{next: start, limit: start + block.Nr(need), what: "the space maps"}
	for b := uint64(start); b < uint64(sm.limit); b++ {
		if meta.get(b) != 0 {
			return metaRoot, dataRoot, fmt.Errorf("restore: space maps reserved from block %d, but block %d is in use", start, b)
		}
	}
	for b := uint64(start); b < uint64(sm.limit); b++ {
		meta.setOne(b)
	}
	s := smWriter{out: out, scratch: make([]byte, block.Size)}

	// Overflow trees: block -> le32 count.
	metaOverRoot, err := s.overflowTree(sm, meta)
	if err != nil {
		return metaRoot, dataRoot, err
	}
	dataOverRoot, err := s.overflowTree(sm, data)
	if err != nil {
		return metaRoot, dataRoot, err
	}

	// Data space map: bitmaps, then the index b-tree over them.
	dataIdx := btree.NewBuilder(btree.Config{ValueSize: spacemap.IndexEntrySize, Alloc: sm, Sink: s})
	var ie [spacemap.IndexEntrySize]byte
	for k := range spacemap.BitmapsFor(data.n) {
		e, err := s.bitmap(sm, data, k)
		if err != nil {
			return metaRoot, dataRoot, err
		}
		e.Put(ie[:])
		if err := dataIdx.Add(k, ie[:]); err != nil {
			return metaRoot, dataRoot, err
		}
	}
	dataIdxRoot, err := dataIdx.Finish()
	if err != nil {
		return metaRoot, dataRoot, err
	}

	// Metadata space map: bitmaps, then the index block. The counts are
	// final: every block written has been counted.
	idx := make([]byte, block.Size) // s.scratch is busy with bitmaps
	for k := range spacemap.BitmapsFor(meta.n) {
		e, err := s.bitmap(sm, meta, k)
		if err != nil {
			return metaRoot, dataRoot, err
		}
		e.Put(idx[16+spacemap.IndexEntrySize*k:])
	}
	idxAt, err := sm.Alloc()
	if err != nil {
		return metaRoot, dataRoot, err
	}
	binary.LittleEndian.PutUint64(idx[8:], uint64(idxAt))
	block.Seal(idx, block.Index)
	if err := out.put(idxAt, idx); err != nil {
		return metaRoot, dataRoot, err
	}
	if sm.next != sm.limit {
		return metaRoot, dataRoot, fmt.Errorf("restore: internal error: space maps used %d of %d reserved blocks", sm.next-start, need)
	}
	metaRoot = spacemap.Root{NrBlocks: meta.n, NrAllocated: meta.allocated(), BitmapRoot: idxAt, RefCountRoot: metaOverRoot}
	dataRoot = spacemap.Root{NrBlocks: data.n, NrAllocated: data.allocated(), BitmapRoot: dataIdxRoot.Block, RefCountRoot: dataOverRoot}
	return metaRoot, dataRoot, nil
}

// smWriter writes space-map blocks. Its nodes need no counting: every
// block of the reserved range was counted when it was reserved.
type smWriter struct {
	out     *writer
	scratch []byte
}

func (s smWriter) WriteNode(at block.Nr, b []byte) error { return s.out.put(at, b) }

// overflowTree writes the overflow b-tree of c and returns its root.
func (s smWriter) overflowTree(sm *allocator, c *counts) (block.Nr, error) {
	b := btree.NewBuilder(btree.Config{ValueSize: 4, Alloc: sm, Sink: s})
	var v [4]byte
	err := c.overflow(func(k uint64, count uint32) error {
		binary.LittleEndian.PutUint32(v[:], count)
		return b.Add(k, v[:])
	})
	if err != nil {
		return 0, err
	}
	root, err := b.Finish()
	return root.Block, err
}

// bitmap writes bitmap k of c and returns its index entry.
func (s smWriter) bitmap(sm *allocator, c *counts, k uint64) (spacemap.IndexEntry, error) {
	at, err := sm.Alloc()
	if err != nil {
		return spacemap.IndexEntry{}, err
	}
	b := s.scratch
	clear(b[:16])
	binary.LittleEndian.PutUint64(b[8:], uint64(at))
	c.piece(k, b[16:])
	block.Seal(b, block.Bitmap)
	if err := s.out.put(at, b); err != nil {
		return spacemap.IndexEntry{}, err
	}
	free, first := c.summary(k)
	return spacemap.IndexEntry{Blocknr: at, NrFree: free, NoneFreeBefore: first}, nil
}
