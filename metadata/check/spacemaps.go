package check

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
)

// spaceMapRoots counts the superblock's pointers into both space maps,
// reads the metadata index block (it is no b-tree) and returns the space
// maps' b-tree roots for the walk.
func (w *walker) spaceMapRoots() ([]item, error) {
	c := w.c
	from := item{nr: 0, role: roleSuper}
	var out []item
	msm := c.sb.MetadataSM
	if w.ref(msm.BitmapRoot, roleMetaIndex, from) {
		err := c.r.ReadInto(w.buf, msm.BitmapRoot, block.Index)
		switch {
		case errors.Is(err, block.ErrCorrupt):
			c.add(Finding{Severity: Fatal, Area: AreaMetadataSM, Block: u64(uint64(msm.BitmapRoot)),
				Message: fmt.Sprintf("index block is unreadable: %v", unwrapBlock(err))})
		case err != nil:
			return nil, err
		default:
			es, _ := spacemap.ParseIndexBlock(w.buf, spacemap.BitmapsFor(min(msm.NrBlocks, spacemap.MaxMetadataBlocks)))
			ix := item{nr: msm.BitmapRoot, role: roleMetaIndex}
			for _, e := range es {
				w.ref(e.Blocknr, roleMetaBitmap, ix)
			}
			c.metaIndex = es
		}
	}
	add := func(n block.Nr, r role) {
		it := item{nr: n, role: r, root: true, hi: math.MaxUint64}
		if w.ref(n, r, from) {
			out = append(out, it)
		}
	}
	add(msm.RefCountRoot, roleMetaOverflow)
	if c.dataCounts != nil {
		add(c.sb.DataSM.BitmapRoot, roleDataIndex)
		add(c.sb.DataSM.RefCountRoot, roleDataOverflow)
	}
	return out, nil
}

// checkSpaceMaps compares the stored counts of both space maps with the
// counts the walk recomputed.
func (c *checker) checkSpaceMaps(ctx context.Context) error {
	if c.metaIndex != nil {
		sm := &smCheck{c: c, area: AreaMetadataSM, expected: c.metaCounts, root: c.sb.MetadataSM, out: &c.rep.Metadata,
			entries: c.metaIndex, overflow: c.metaOverflow}
		if err := sm.run(ctx); err != nil {
			return err
		}
		c.rep.MetadataFree = c.sb.MetadataSM.NrBlocks - min(c.sb.MetadataSM.NrBlocks, c.rep.Metadata.NrAllocated)
	}
	if c.dataCounts == nil {
		return nil
	}
	if c.dataIndexBroken.Load() {
		c.fatal(AreaDataSM, "index is damaged: stored data counts cannot be compared (repair rebuilds the data space map)")
		return nil
	}
	n := c.sb.DataSM.NrBitmaps()
	entries := make([]spacemap.IndexEntry, n)
	for i := range n {
		x, ok := c.dataIndex[i]
		if !ok {
			c.fatal(AreaDataSM, "index has no entry for bitmap %d (data blocks %d to %d)", i, i*spacemap.EntriesPerBitmap, (i+1)*spacemap.EntriesPerBitmap-1)
			continue
		}
		entries[i] = x.entry
	}
	for k, x := range c.dataIndex {
		if k >= n {
			c.add(Finding{Severity: Warning, Area: AreaDataSM, Block: u64(uint64(x.from)),
				Message: fmt.Sprintf("index lists bitmap %d, past the %d that nr_blocks needs", k, n)})
		}
	}
	sm := &smCheck{c: c, area: AreaDataSM, expected: c.dataCounts, root: c.sb.DataSM, out: &c.rep.Data,
		entries: entries, overflow: c.dataOverflow}
	return sm.run(ctx)
}

// smCheck compares one space map.
type smCheck struct {
	c        *checker
	area     Area
	expected []uint32
	root     spacemap.Root
	out      *Counts
	entries  []spacemap.IndexEntry // by bitmap; Blocknr 0 = missing
	overflow []leafRef

	// overflow iterator
	leaf       int
	keys       []uint64
	vals       []uint32
	pos        int
	buf        []byte
	strayWarns int
}

func (s *smCheck) run(ctx context.Context) error {
	c := s.c
	s.out.NrBlocks = s.root.NrBlocks
	s.out.Checked = true
	slices.SortFunc(s.overflow, func(a, b leafRef) int { return cmp.Compare(a.first, b.first) })
	s.buf = make([]byte, block.Size)
	bm := make([]byte, block.Size)
	vals := make([]uint8, spacemap.EntriesPerBitmap)
	nr := s.root.NrBlocks
	var storedAlloc, expAlloc uint64
	for i, e := range s.entries {
		if i%64 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		base := uint64(i) * spacemap.EntriesPerBitmap
		n := min(spacemap.EntriesPerBitmap, nr-base)
		if e.Blocknr == 0 {
			continue
		}
		err := c.r.ReadInto(bm, e.Blocknr, block.Bitmap)
		if errors.Is(err, block.ErrCorrupt) {
			c.add(Finding{Severity: Fatal, Area: s.area, Block: u64(uint64(e.Blocknr)),
				Message: fmt.Sprintf("bitmap %d is unreadable: %v", i, unwrapBlock(err))})
			continue
		} else if err != nil {
			return err
		}
		spacemap.Decode(bm, vals, spacemap.EntriesPerBitmap)
		free, firstFree := uint64(0), int64(-1)
		for j := range n {
			b := base + j
			v, ok := uint32(vals[j]), true
			if v == 3 {
				v, ok = s.lookup(b)
			} else {
				s.skipBelow(b + 1)
			}
			var exp uint32
			if b < uint64(len(s.expected)) {
				exp = s.expected[b]
			}
			if exp > 0 {
				expAlloc++
			}
			if v == 0 {
				free++
				if firstFree < 0 {
					firstFree = int64(j)
				}
			} else {
				storedAlloc++
			}
			if !ok {
				c.add(Finding{Severity: Fatal, Area: s.area, Message: fmt.Sprintf("block %d: bitmap says 3 or more but the ref-count tree has no entry", b)})
				if exp >= 3 {
					continue
				}
			}
			if v != exp {
				s.out.add(Mismatch{Block: b, Was: v, Expected: exp})
			}
		}
		var stray int
		for j := n; j < spacemap.EntriesPerBitmap; j++ {
			if vals[j] != 0 {
				stray++
			}
			free++
		}
		if stray > 0 {
			c.add(Finding{Severity: Warning, Area: s.area, Block: u64(uint64(e.Blocknr)),
				Message: fmt.Sprintf("bitmap %d holds %d nonzero entries past nr_blocks", i, stray)})
		}
		switch {
		case uint64(e.NrFree) > spacemap.EntriesPerBitmap:
			c.add(Finding{Severity: Fatal, Area: s.area, Block: u64(uint64(e.Blocknr)),
				Message: fmt.Sprintf("index entry of bitmap %d says %d free, more than a bitmap holds", i, e.NrFree)})
		case uint64(e.NrFree) != free:
			c.add(Finding{Severity: Warning, Area: s.area, Block: u64(uint64(e.Blocknr)),
				Message: fmt.Sprintf("index entry of bitmap %d says %d free, the bitmap has %d", i, e.NrFree, free)})
		}
		if firstFree >= 0 && int64(e.NoneFreeBefore) > firstFree {
			c.add(Finding{Severity: Warning, Area: s.area, Block: u64(uint64(e.Blocknr)),
				Message: fmt.Sprintf("index entry of bitmap %d says none free before %d, but entry %d is free", i, e.NoneFreeBefore, firstFree)})
		}
	}
	s.skipBelow(math.MaxUint64)
	s.out.NrAllocated = expAlloc
	if s.root.NrAllocated != storedAlloc {
		c.add(Finding{Severity: Warning, Area: s.area,
			Message: fmt.Sprintf("nr_allocated is %d, the bitmaps hold %d allocated blocks", s.root.NrAllocated, storedAlloc)})
	}
	return nil
}

// load reads the next overflow leaf; the walk has checked its structure.
func (s *smCheck) load() bool {
	for s.leaf < len(s.overflow) {
		n := s.overflow[s.leaf].nr
		s.leaf++
		if err := s.c.r.ReadInto(s.buf, n, block.Node); err != nil {
			continue
		}
		node, err := btree.ParseNode(s.buf, n, 4)
		if err != nil || node.Internal {
			continue
		}
		s.keys, s.vals, s.pos = s.keys[:0], s.vals[:0], 0
		for i := range node.NrEntries {
			v := node.Value(i)
			s.keys = append(s.keys, node.Key(i))
			s.vals = append(s.vals, uint32(v[0])|uint32(v[1])<<8|uint32(v[2])<<16|uint32(v[3])<<24)
		}
		return true
	}
	return false
}

// skipBelow passes over overflow entries for blocks below b whose bitmap
// count is not 3: the kernel removes them when a count drops under 3.
func (s *smCheck) skipBelow(b uint64) {
	for {
		if s.pos >= len(s.keys) {
			if !s.load() {
				return
			}
			continue
		}
		k := s.keys[s.pos]
		if k >= b {
			return
		}
		s.pos++
		if s.strayWarns++; s.strayWarns <= 10 {
			s.c.add(Finding{Severity: Warning, Area: s.area, Message: fmt.Sprintf("block %d: ref-count tree holds %d but the bitmap does not say 3 or more", k, s.vals[s.pos-1])})
		}
	}
}

// lookup is the overflow count of block b, whose bitmap entry is 3.
func (s *smCheck) lookup(b uint64) (uint32, bool) {
	s.skipBelow(b)
	if s.pos < len(s.keys) && s.keys[s.pos] == b {
		v := s.vals[s.pos]
		s.pos++
		return v, true
	}
	return 3, false
}
