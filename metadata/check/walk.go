package check

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"sync/atomic"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// role says what structure a metadata block belongs to.
type role uint8

const (
	roleNone role = iota
	roleSuper
	roleTop          // mapping tree, top level: dev id -> bottom root
	roleBottom       // mapping tree, a device's level: vblock -> block_time
	roleDetails      // device details
	roleDataIndex    // data space map's index b-tree
	roleDataOverflow // data space map's ref-count overflow b-tree
	roleMetaOverflow // metadata space map's overflow b-tree
	roleDataBitmap
	roleMetaBitmap
	roleMetaIndex
)

var roleNames = [...]string{"unused", "superblock", "mapping tree top level", "device mapping tree", "device details tree",
	"data space map index", "data ref-count tree", "metadata ref-count tree", "data bitmap", "metadata bitmap", "metadata index"}

func (r role) String() string { return roleNames[r] }

func (r role) valueSize() int {
	switch r {
	case roleDetails:
		return thin.DetailsSize
	case roleDataIndex:
		return spacemap.IndexEntrySize
	case roleDataOverflow, roleMetaOverflow:
		return 4
	}
	return 8
}

func (r role) area() Area {
	switch r {
	case roleDetails:
		return AreaDevices
	case roleTop, roleBottom:
		return AreaMappings
	case roleDataIndex, roleDataOverflow, roleDataBitmap:
		return AreaDataSM
	case roleMetaOverflow, roleMetaBitmap, roleMetaIndex:
		return AreaMetadataSM
	}
	return AreaSuperblock
}

// maxDepth bounds the levels of any one tree. A tree of 2^64 keys with the
// smallest legal fan-out is shallower; deeper means a loop or garbage.
const maxDepth = 40

// item is a b-tree node waiting to be read, with what its parent promised.
type item struct {
	nr     block.Nr
	role   role
	depth  uint8
	root   bool
	second bool   // reached only from the held snapshot's trees (counted, not collected)
	dev    uint32 // bottom trees: the device whose walk reached it
	lo, hi uint64 // keys must lie in [lo, hi]
}

// revisit is a reference to a block already claimed, to compare roles once
// the level is done.
type revisit struct {
	nr   block.Nr
	role role
	from item
}

// walker is one goroutine's share of a level.
type walker struct {
	c       *checker
	next    []item
	again   []revisit
	devs    []devRoot
	details []devDetails
	index   []indexRef
	dOver   []leafRef
	mOver   []leafRef
	bad     []block.Nr
}

type devRoot struct {
	dev  uint32
	root block.Nr
}

type devDetails struct {
	dev uint32
	d   thin.Details
}

type indexRef struct {
	key   uint64
	entry spacemap.IndexEntry
	from  block.Nr
}

// ref counts one pointer to n and says whether the caller is the first to
// reach it, and so the one to read it. Pointers past the end are findings.
func (w *walker) ref(n block.Nr, r role, from item) bool {
	c := w.c
	if n >= c.nrMeta {
		if r == roleDataIndex || r == roleDataBitmap {
			c.dataIndexBroken.Store(true)
		}
		c.add(Finding{Severity: Fatal, Area: r.area(), Block: u64(uint64(from.nr)), Dev: from.devPtr(),
			Message: fmt.Sprintf("points to block %d of the %v, past the end of the metadata (%d blocks)", n, r, c.nrMeta), Tree: true})
		return false
	}
	if atomic.AddUint32(&c.metaCounts[n], 1) == 1 {
		c.roles[n] = r
		return true
	}
	w.again = append(w.again, revisit{n, r, from})
	return false
}

func (it item) devPtr() *uint32 {
	if it.role == roleBottom {
		return u32(it.dev)
	}
	return nil
}

// walk reads every node reachable from roots, a level at a time. Each
// level's blocks are sorted and read in extents of up to 1 MiB, one extent
// per goroutine, so reads are large and sequential where the metadata is
// dense and each node is read once however many pointers it has.
func (c *checker) walk(ctx context.Context, level []item) error {
	ws := make([]*walker, block.Readers())
	for i := range ws {
		ws[i] = &walker{c: c}
	}
	var nrs []block.Nr
	for len(level) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		// Each block is queued once (only its first reference queues it),
		// so block numbers are unique within a level.
		slices.SortFunc(level, func(a, b item) int { return cmp.Compare(a.nr, b.nr) })
		nrs = nrs[:0]
		for _, it := range level {
			nrs = append(nrs, it.nr)
		}
		err := c.r.ReadEach(ctx, nrs, func(k int, n block.Nr, b []byte) error {
			i, _ := slices.BinarySearch(nrs, n)
			c.read.Add(1)
			ws[k].node(level[i], b)
			return nil
		})
		if err != nil {
			return err
		}
		level = level[:0]
		for _, w := range ws {
			level = append(level, w.next...)
			w.next = w.next[:0]
			c.gather(w)
		}
	}
	return nil
}

// gather moves what a walker collected into the checker, between levels.
func (c *checker) gather(w *walker) {
	for _, a := range w.again {
		if got := c.roles[a.nr]; got != a.role && got != roleNone {
			c.add(Finding{Severity: Fatal, Area: a.role.area(), Block: u64(uint64(a.nr)), Dev: a.from.devPtr(),
				Message: fmt.Sprintf("block is used both as %v and as %v (reached from block %d)", got, a.role, a.from.nr), Tree: true})
		}
	}
	for _, d := range w.devs {
		if old, dup := c.devRoots[d.dev]; dup {
			c.fatal(AreaMappings, "device %d appears twice in the top level (roots %d and %d)", d.dev, old, d.root)
		}
		c.devRoots[d.dev] = d.root
	}
	for _, d := range w.details {
		c.details[d.dev] = d.d
	}
	for _, x := range w.index {
		c.dataIndex[x.key] = x
	}
	c.dataOverflow = append(c.dataOverflow, w.dOver...)
	c.metaOverflow = append(c.metaOverflow, w.mOver...)
	for _, n := range w.bad {
		c.treeBroken[n] = true
	}
	w.again, w.devs, w.details, w.index, w.dOver, w.mOver, w.bad = w.again[:0], w.devs[:0], w.details[:0], w.index[:0], w.dOver[:0], w.mOver[:0], w.bad[:0]
}

func (w *walker) fail(it item, err error) {
	c := w.c
	if it.role == roleDataIndex {
		c.dataIndexBroken.Store(true)
	}
	c.add(Finding{Severity: Fatal, Area: it.role.area(), Block: u64(uint64(it.nr)), Dev: it.devPtr(),
		VBlock: it.vblockPtr(), Message: fmt.Sprintf("%v node: %v", it.role, unwrapBlock(err)), Tree: true})
	c.nodes[it.nr].state = nodeBad
	w.bad = append(w.bad, it.nr)
}

// vblockPtr gives the lowest virtual block a bottom node was promised, to
// place findings.
func (it item) vblockPtr() *uint64 {
	if it.role == roleBottom && !it.root {
		return u64(it.lo)
	}
	return nil
}

// node checks one b-tree node and queues its children.
func (w *walker) node(it item, b []byte) {
	c := w.c
	if err := block.Verify(b, it.nr, block.Node); err != nil {
		w.fail(it, err)
		return
	}
	n, err := btree.ParseNode(b, it.nr, it.role.valueSize())
	if err != nil {
		w.fail(it, err)
		return
	}
	if n.NrEntries > 0 {
		lo, hi := n.Key(0), n.Key(n.NrEntries-1)
		if lo < it.lo || hi > it.hi {
			w.fail(it, fmt.Errorf("%w: keys %d..%d, parent allows %d..%s", btree.ErrKeyRange, lo, hi, it.lo, bound(it.hi)))
			return
		}
	}
	if !it.root && n.NrEntries < n.MinEntries() {
		c.add(Finding{Severity: Warning, Area: it.role.area(), Block: u64(uint64(it.nr)), Dev: it.devPtr(),
			Message: fmt.Sprintf("%v node holds %d entries, fewer than %d (max_entries %d)", it.role, n.NrEntries, n.MinEntries(), n.MaxEntries)})
	}
	if n.Internal {
		w.internal(it, n)
		return
	}
	c.nodes[it.nr] = nodeInfo{entries: uint16(n.NrEntries), state: nodeLeaf}
	switch it.role {
	case roleTop:
		w.topLeaf(it, n)
	case roleBottom:
		w.bottomLeaf(it, n)
	case roleDetails:
		if !it.second {
			for i := range n.NrEntries {
				w.details = append(w.details, devDetails{uint32(n.Key(i)), thin.ParseDetails(n.Value(i))})
			}
		}
	case roleDataIndex:
		for i := range n.NrEntries {
			e := spacemap.ParseIndexEntry(n.Value(i))
			w.index = append(w.index, indexRef{n.Key(i), e, it.nr})
			w.ref(e.Blocknr, roleDataBitmap, it)
		}
	case roleDataOverflow:
		if n.NrEntries > 0 {
			w.dOver = append(w.dOver, leafRef{n.Key(0), it.nr})
		}
	case roleMetaOverflow:
		if n.NrEntries > 0 {
			w.mOver = append(w.mOver, leafRef{n.Key(0), it.nr})
		}
	}
}

func bound(hi uint64) string {
	if hi == math.MaxUint64 {
		return "any"
	}
	return fmt.Sprint(hi)
}

func (w *walker) internal(it item, n btree.Node) {
	c := w.c
	c.nodes[it.nr].state = nodeInternal
	if int(it.depth) >= maxDepth {
		w.fail(it, fmt.Errorf("%w: tree deeper than %d levels", block.ErrCorrupt, maxDepth))
		return
	}
	kids := make([]block.Nr, n.NrEntries)
	for i := range n.NrEntries {
		kid := n.Child(i)
		kids[i] = kid
		hi := it.hi
		if i+1 < n.NrEntries {
			hi = n.Key(i+1) - 1
		}
		ch := item{nr: kid, role: it.role, depth: it.depth + 1, second: it.second, dev: it.dev, lo: n.Key(i), hi: hi}
		if w.ref(kid, it.role, it) {
			w.next = append(w.next, ch)
		}
	}
	c.internals.Store(it.nr, kids)
}

func (w *walker) topLeaf(it item, n btree.Node) {
	for i := range n.NrEntries {
		dev, root := n.Key(i), block.Nr(n.U64(i))
		if dev > thin.MaxDevID {
			w.c.add(Finding{Severity: Fatal, Area: AreaMappings, Block: u64(uint64(it.nr)),
				Message: fmt.Sprintf("device id %d exceeds the 24-bit limit", dev)})
			continue
		}
		if !it.second {
			w.devs = append(w.devs, devRoot{uint32(dev), root})
		}
		if w.c.opts.SkipMappings {
			continue
		}
		ch := item{nr: root, role: roleBottom, root: true, second: it.second, dev: uint32(dev), hi: math.MaxUint64}
		if w.ref(root, roleBottom, ch) {
			w.next = append(w.next, ch)
		}
	}
}

func (w *walker) bottomLeaf(it item, n btree.Node) {
	c := w.c
	var past, newer int
	var firstPast, firstNewer uint64
	limit := c.sb.DataSM.NrBlocks
	counts := c.dataCounts
	poolTime := c.sb.Time
	vals := n.Values()
	for off := 0; off+8 <= len(vals); off += 8 {
		bt := thin.BlockTime(binary.LittleEndian.Uint64(vals[off:]))
		d := uint64(bt.Block())
		if d >= limit {
			if past == 0 {
				firstPast = n.Key(off / 8)
			}
			past++
			continue
		}
		if counts != nil {
			atomic.AddUint32(&counts[d], 1)
		}
		if bt.Time() > poolTime && poolTime < 1<<24 {
			if newer == 0 {
				firstNewer = n.Key(off / 8)
			}
			newer++
		}
	}
	if past > 0 {
		c.add(Finding{Severity: Fatal, Area: AreaMappings, Block: u64(uint64(it.nr)), Dev: u32(it.dev), VBlock: u64(firstPast),
			Message: fmt.Sprintf("%d mapping%s past the end of the data device (%d blocks)", past, verb(past, " points", "s point"), limit)})
	}
	if newer > 0 {
		c.add(Finding{Severity: Warning, Area: AreaMappings, Block: u64(uint64(it.nr)), Dev: u32(it.dev), VBlock: u64(firstNewer),
			Message: fmt.Sprintf("%d mapping%s a time newer than the pool's (%d)", newer, verb(newer, " carries", "s carry"), poolTime)})
	}
}
