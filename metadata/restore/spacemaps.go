package restore

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// End finishes the metadata: the top level of the mapping tree, the
// details tree, both space maps, and last the superblock.
//
// The space maps describe blocks that include their own, which is a loop:
// their size depends on the counts and the counts on where they are. It is
// cut by counting everything else first. Every space-map block has exactly
// one reference, so none of them can enter an overflow tree; the number of
// overflow entries is therefore known before the space maps are placed,
// hence the number of blocks each space-map structure needs. Those blocks
// are reserved in one range after the trees, counted as 1 each, and only
// then filled.
func (r *Restorer) End() error {
	if err := r.usable(); err != nil {
		return err
	}
	if r.cur != nil {
		return r.fail(fmt.Errorf("%w: End inside a device or def", ErrState))
	}
	if err := r.end(); err != nil {
		return r.fail(err)
	}
	r.ended = true
	return nil
}

func (r *Restorer) end() error {
	mapRoot, err := r.top.Finish()
	if err != nil {
		return err
	}
	detRoot, err := r.details.Finish()
	if err != nil {
		return err
	}
	r.meta.inc(0) // the superblock
	r.meta.inc(uint64(mapRoot.Block))
	r.meta.inc(uint64(detRoot.Block))

	// Def leaves that no device kept hold no mapping: give back the data
	// references their writing took.
	for _, lf := range r.defLeaves {
		if r.meta.get(uint64(lf.Block)) != 0 {
			continue
		}
		_, vals, err := r.LoadLeaf(lf.Block)
		if err != nil {
			return err
		}
		for i := 0; i < len(vals); i += 8 {
			r.data.dec(binary.LittleEndian.Uint64(vals[i:]) >> 24)
		}
	}

	// Reserve the space-map blocks.
	nrData := r.opts.NrDataBlocks
	db := spacemap.BitmapsFor(nrData)
	mb := spacemap.BitmapsFor(r.nrMeta)
	dataOver := sortedKeys(r.data.over)
	metaOver := sortedKeys(r.meta.over)
	need := mb + 1 + db + btree.NodesFor(db, spacemap.IndexEntrySize) +
		btree.NodesFor(uint64(len(dataOver)), 4) + btree.NodesFor(uint64(len(metaOver)), 4)
	start := r.alloc.next
	if uint64(start)+need > r.nrMeta {
		return fmt.Errorf("%w: the space maps need %d blocks from block %d, the metadata has %d",
			ErrNoSpace, need, start, r.nrMeta)
	}
	sm := &allocator{next: start, limit: start + block.Nr(need), what: "the space maps"}
	for b := uint64(start); b < uint64(sm.limit); b++ {
		r.meta.setOne(b)
	}

	// Overflow trees: block -> le32 count.
	metaOverRoot, err := r.overflowTree(sm, r.meta, metaOver)
	if err != nil {
		return err
	}
	dataOverRoot, err := r.overflowTree(sm, r.data, dataOver)
	if err != nil {
		return err
	}

	// Data space map: bitmaps, then the index b-tree over them.
	dataIdx := btree.NewBuilder(btree.Config{ValueSize: spacemap.IndexEntrySize, Alloc: sm, Sink: sink{r, smTree}})
	var ie [spacemap.IndexEntrySize]byte
	for k := range db {
		e, err := r.bitmap(sm, r.data, k)
		if err != nil {
			return err
		}
		e.Put(ie[:])
		if err := dataIdx.Add(k, ie[:]); err != nil {
			return err
		}
	}
	dataIdxRoot, err := dataIdx.Finish()
	if err != nil {
		return err
	}

	// Metadata space map: bitmaps, then the index block. The counts are
	// final: every block written has been counted.
	idx := make([]byte, block.Size) // r.scratch is busy with bitmaps
	for k := range mb {
		e, err := r.bitmap(sm, r.meta, k)
		if err != nil {
			return err
		}
		e.Put(idx[16+spacemap.IndexEntrySize*k:])
	}
	idxAt, err := sm.Alloc()
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(idx[8:], uint64(idxAt))
	block.Seal(idx, block.Index)
	if err := r.out.put(idxAt, idx); err != nil {
		return err
	}
	if sm.next != sm.limit {
		return fmt.Errorf("restore: internal error: space maps used %d of %d reserved blocks", sm.next-start, need)
	}

	if err := r.out.flush(); err != nil {
		return err
	}
	if r.sync != nil {
		if err := r.sync.Sync(); err != nil {
			return err
		}
	}
	sb := thin.Superblock{
		Flags:         r.opts.Flags,
		Magic:         thin.Magic,
		Version:       r.opts.Version,
		Time:          r.opts.Time,
		TransactionID: r.opts.TransactionID,
		DataSM: spacemap.Root{
			NrBlocks:     nrData,
			NrAllocated:  r.data.allocated(),
			BitmapRoot:   dataIdxRoot.Block,
			RefCountRoot: dataOverRoot,
		},
		MetadataSM: spacemap.Root{
			NrBlocks:     r.nrMeta,
			NrAllocated:  r.meta.allocated(),
			BitmapRoot:   idxAt,
			RefCountRoot: metaOverRoot,
		},
		MappingRoot:       mapRoot.Block,
		DetailsRoot:       detRoot.Block,
		DataBlockSize:     r.opts.DataBlockSize,
		MetadataBlockSize: thin.MetadataBlockSectors,
		MetadataNrBlocks:  r.nrMeta,
	}
	sb.Encode(r.scratch, 0)
	if err := r.out.put(0, r.scratch); err != nil {
		return err
	}
	return r.out.flush()
}

func sortedKeys(m map[uint64]uint32) []uint64 {
	keys := make([]uint64, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// overflowTree writes the overflow b-tree of c and returns its root.
func (r *Restorer) overflowTree(sm *allocator, c *counts, keys []uint64) (block.Nr, error) {
	b := btree.NewBuilder(btree.Config{ValueSize: 4, Alloc: sm, Sink: sink{r, smTree}})
	var v [4]byte
	for _, k := range keys {
		binary.LittleEndian.PutUint32(v[:], c.over[k])
		if err := b.Add(k, v[:]); err != nil {
			return 0, err
		}
	}
	root, err := b.Finish()
	return root.Block, err
}

// bitmap writes bitmap k of c and returns its index entry.
func (r *Restorer) bitmap(sm *allocator, c *counts, k uint64) (spacemap.IndexEntry, error) {
	at, err := sm.Alloc()
	if err != nil {
		return spacemap.IndexEntry{}, err
	}
	b := r.scratch
	clear(b[:16])
	binary.LittleEndian.PutUint64(b[8:], uint64(at))
	copy(b[16:], c.piece(k))
	block.Seal(b, block.Bitmap)
	if err := r.out.put(at, b); err != nil {
		return spacemap.IndexEntry{}, err
	}
	free, first := c.summary(k)
	return spacemap.IndexEntry{Blocknr: at, NrFree: free, NoneFreeBefore: first}, nil
}
