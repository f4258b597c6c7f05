package check

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

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
		buf := make([]byte, block.Size)
		err := c.r.ReadInto(buf, msm.BitmapRoot, block.Index)
		switch {
		case errors.Is(err, block.ErrCorrupt):
			c.add(Finding{Severity: Fatal, Area: AreaMetadataSM, Block: u64(uint64(msm.BitmapRoot)),
				Message: fmt.Sprintf("index block is unreadable: %v", unwrapBlock(err))})
		case err != nil:
			return nil, err
		default:
			es, _ := spacemap.ParseIndexBlock(buf, spacemap.BitmapsFor(min(msm.NrBlocks, spacemap.MaxMetadataBlocks)))
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
	overflow []leafRef             // overflow leaves by first key
}

// bitmapResult is what comparing one bitmap found.
type bitmapResult struct {
	mismatches          []Mismatch
	leaked, wrong       uint64
	storedAlloc, expAll uint64
	findings            []Finding
}

// smWindow is how many bitmaps are compared between two merges. Merging
// in bitmap order keeps the report independent of scheduling, and lets
// the mismatch list stop growing once it is full.
const smWindow = 64

// run compares every bitmap with the recount, bitmaps in parallel.
func (s *smCheck) run(ctx context.Context) error {
	c := s.c
	s.out.NrBlocks = s.root.NrBlocks
	s.out.Checked = true
	slices.SortFunc(s.overflow, func(a, b leafRef) int { return cmp.Compare(a.first, b.first) })
	nw := runtime.GOMAXPROCS(0)
	var storedAlloc, expAlloc uint64
	var done atomic.Uint64
	c.enter("comparing the "+s.area.String(), &done, uint64(len(s.entries)))
	results := make([]bitmapResult, smWindow)
	for w0 := 0; w0 < len(s.entries); w0 += smWindow {
		if err := ctx.Err(); err != nil {
			return err
		}
		w1 := min(w0+smWindow, len(s.entries))
		keep := len(s.out.Mismatches) < MaxListed
		var next atomic.Int64
		next.Store(int64(w0))
		g := make([]error, nw)
		var wg sync.WaitGroup
		for k := range nw {
			wg.Add(1)
			go func() {
				defer wg.Done()
				x := s.newScratch()
				for {
					i := int(next.Add(1) - 1)
					if i >= w1 {
						return
					}
					results[i-w0] = bitmapResult{}
					done.Add(1)
					if err := s.bitmap(i, x, &results[i-w0], keep); err != nil {
						g[k] = err
						return
					}
				}
			}()
		}
		wg.Wait()
		if err := errors.Join(g...); err != nil {
			return err
		}
		for i := range w1 - w0 {
			r := &results[i]
			storedAlloc += r.storedAlloc
			expAlloc += r.expAll
			s.out.Leaked += r.leaked
			s.out.Wrong += r.wrong
			room := MaxListed - len(s.out.Mismatches)
			s.out.Mismatches = append(s.out.Mismatches, r.mismatches[:min(room, len(r.mismatches))]...)
			for _, f := range r.findings {
				c.add(f)
			}
		}
	}
	s.beyond()
	s.out.NrAllocated = expAlloc
	if s.root.NrAllocated != storedAlloc {
		c.add(Finding{Severity: Warning, Area: s.area,
			Message: fmt.Sprintf("nr_allocated is %d, the bitmaps hold %d allocated blocks", s.root.NrAllocated, storedAlloc)})
	}
	return nil
}

// scratch is one goroutine's buffers.
type scratch struct {
	bm     []byte
	leaf   []byte
	vals   []uint8
	exp    []uint32
	ovKeys []uint64
	ovVals []uint32
}

func (s *smCheck) newScratch() *scratch {
	return &scratch{bm: make([]byte, block.Size), leaf: make([]byte, block.Size),
		vals: make([]uint8, spacemap.EntriesPerBitmap), exp: make([]uint32, spacemap.EntriesPerBitmap)}
}

// bitmap compares bitmap i: its counts, the overflow entries in its range,
// and its index entry's hints.
func (s *smCheck) bitmap(i int, x *scratch, r *bitmapResult, keep bool) error {
	c := s.c
	e := s.entries[i]
	base := uint64(i) * spacemap.EntriesPerBitmap
	n := int(min(spacemap.EntriesPerBitmap, s.root.NrBlocks-base))
	if e.Blocknr == 0 {
		return nil
	}
	at := u64(uint64(e.Blocknr))
	err := c.r.ReadInto(x.bm, e.Blocknr, block.Bitmap)
	if errors.Is(err, block.ErrCorrupt) {
		r.findings = append(r.findings, Finding{Severity: Fatal, Area: s.area, Block: at,
			Message: fmt.Sprintf("bitmap %d is unreadable: %v", i, unwrapBlock(err))})
		return nil
	} else if err != nil {
		return err
	}
	if err := s.overflowIn(base, base+uint64(n), x); err != nil {
		return err
	}
	spacemap.Decode(x.bm, x.vals, spacemap.EntriesPerBitmap)
	// The recount may be shorter than nr_blocks (a truncated device): the
	// blocks past it are expected free.
	exp := x.exp[:n]
	if base < uint64(len(s.expected)) {
		m := copy(exp, s.expected[base:min(uint64(len(s.expected)), base+uint64(n))])
		clear(exp[m:])
	} else {
		clear(exp)
	}
	vals := x.vals[:n]
	var free, expAll uint64
	firstFree, missing := -1, 0
	ov := 0
	for j, v := range vals {
		want := exp[j]
		if want != 0 {
			expAll++
		}
		if v == 0 {
			free++
			if firstFree < 0 {
				firstFree = j
			}
		}
		if uint32(v) == want && v != 3 {
			continue
		}
		b := base + uint64(j)
		got := uint32(v)
		if v == 3 {
			for ov < len(x.ovKeys) && x.ovKeys[ov] < b {
				ov++
			}
			if ov < len(x.ovKeys) && x.ovKeys[ov] == b {
				got = x.ovVals[ov]
			} else {
				if missing++; missing <= 3 {
					r.findings = append(r.findings, Finding{Severity: Fatal, Area: s.area,
						Message: fmt.Sprintf("block %d: bitmap says 3 or more but the ref-count tree has no entry", b)})
				}
				if want >= 3 {
					continue
				}
			}
			if got == want {
				continue
			}
		}
		if want == 0 {
			r.leaked++
		} else {
			r.wrong++
		}
		if keep && len(r.mismatches) < MaxListed {
			r.mismatches = append(r.mismatches, Mismatch{Block: b, Was: got, Expected: want})
		}
	}
	if missing > 3 {
		r.findings = append(r.findings, Finding{Severity: Fatal, Area: s.area, Block: at,
			Message: fmt.Sprintf("bitmap %d: %d more blocks say 3 or more with no entry in the ref-count tree", i, missing-3)})
	}
	r.storedAlloc = uint64(n) - free
	r.expAll = expAll
	var stray int
	for _, k := range x.ovKeys {
		if vals[k-base] != 3 {
			if stray++; stray <= 3 {
				// The kernel never reads such an entry, but thin_check
				// 1.x rejects the pool for it, and a rebuild drops it.
				r.findings = append(r.findings, Finding{Severity: Fatal, Area: s.area,
					Message: fmt.Sprintf("block %d: ref-count tree holds a count but the bitmap says %d", k, vals[k-base])})
			}
		}
	}
	var past int
	for j := n; j < spacemap.EntriesPerBitmap; j++ {
		if x.vals[j] != 0 {
			past++
		}
		free++
	}
	if past > 0 {
		r.findings = append(r.findings, Finding{Severity: Warning, Area: s.area, Block: at,
			Message: fmt.Sprintf("bitmap %d holds %d nonzero entries past nr_blocks", i, past)})
	}
	switch {
	case uint64(e.NrFree) > spacemap.EntriesPerBitmap:
		r.findings = append(r.findings, Finding{Severity: Fatal, Area: s.area, Block: at,
			Message: fmt.Sprintf("index entry of bitmap %d says %d free, more than a bitmap holds", i, e.NrFree)})
	case uint64(e.NrFree) != free:
		r.findings = append(r.findings, Finding{Severity: Warning, Area: s.area, Block: at,
			Message: fmt.Sprintf("index entry of bitmap %d says %d free, the bitmap has %d", i, e.NrFree, free)})
	}
	if firstFree >= 0 && int64(e.NoneFreeBefore) > int64(firstFree) {
		r.findings = append(r.findings, Finding{Severity: Warning, Area: s.area, Block: at,
			Message: fmt.Sprintf("index entry of bitmap %d says none free before %d, but entry %d is free", i, e.NoneFreeBefore, firstFree)})
	}
	return nil
}

// overflowIn loads the overflow entries for blocks in [lo, hi) into x.
func (s *smCheck) overflowIn(lo, hi uint64, x *scratch) error {
	x.ovKeys, x.ovVals = x.ovKeys[:0], x.ovVals[:0]
	k := sort.Search(len(s.overflow), func(i int) bool { return s.overflow[i].first >= lo })
	if k > 0 {
		k-- // the leaf before may run into this range
	}
	for ; k < len(s.overflow) && s.overflow[k].first < hi; k++ {
		ok, err := s.readOverflow(s.overflow[k].nr, x.leaf)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		node, _ := btree.ParseNode(x.leaf, s.overflow[k].nr, 4)
		for i := range node.NrEntries {
			if key := node.Key(i); key >= lo && key < hi {
				x.ovKeys = append(x.ovKeys, key)
				x.ovVals = append(x.ovVals, binary.LittleEndian.Uint32(node.Value(i)))
			}
		}
	}
	return nil
}

// readOverflow reads an overflow leaf the walk has already checked.
func (s *smCheck) readOverflow(n block.Nr, buf []byte) (bool, error) {
	err := s.c.r.ReadInto(buf, n, block.Node)
	if errors.Is(err, block.ErrCorrupt) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	node, err := btree.ParseNode(buf, n, 4)
	return err == nil && !node.Internal, nil
}

// beyond reports overflow entries for blocks past nr_blocks.
func (s *smCheck) beyond() {
	if len(s.overflow) == 0 {
		return
	}
	x := s.newScratch()
	if err := s.overflowIn(s.root.NrBlocks, math.MaxUint64, x); err == nil && len(x.ovKeys) > 0 {
		s.c.add(Finding{Severity: Fatal, Area: s.area,
			Message: fmt.Sprintf("ref-count tree holds %d entries past nr_blocks (first: block %d)", len(x.ovKeys), x.ovKeys[0])})
	}
}
