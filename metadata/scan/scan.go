package scan

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// ChunkBlocks is how many blocks one read covers (1 MiB).
const ChunkBlocks = 256

// MaxBlocks is the most blocks a scan reads: nodes are indexed in 31
// bits. The kernel uses at most 4,161,600 metadata blocks.
const MaxBlocks = 1<<31 - 1

// MaxHeight is the tallest subtree the scan accepts: a node more levels
// above its leaves than this is marked TooDeep.
const MaxHeight = thin.MaxDepth

// DefaultMaxCandidates bounds the lists of top levels, details trees and
// pairs when Options leaves it 0. Each top level or details tree kept
// costs about 16 bytes per device it lists.
const DefaultMaxCandidates = 256

// DefaultMaxDeviceTrees bounds the list of device trees when Options
// leaves it 0: about 200 bytes each.
const DefaultMaxDeviceTrees = 1 << 16

// maxUnreadable bounds Result.Unreadable.
const maxUnreadable = 1024

// maxSuperblocks bounds Result.Superblocks.
const maxSuperblocks = 1024

// maxNames bounds DeviceTree.Names.
const maxNames = 16

// Options tune a scan. The zero value scans with the superblock's limits
// on all processors.
type Options struct {
	// IgnoreSuperblock makes the scan ignore block 0 even when it is
	// valid: no live roots, no limits taken from it.
	IgnoreSuperblock bool
	// NrDataBlocks, when not 0, is the size of the data device: a leaf
	// mapping a data block at or past it is not taken for a device's
	// leaf. When 0, the superblock's data space map gives it, if readable.
	NrDataBlocks uint64
	// Time, when HasTime is set, is the pool time: a leaf whose block_times
	// are newer is not taken for a device's leaf. When HasTime is unset,
	// the superblock's time is used, if readable.
	Time    uint32
	HasTime bool
	// MaxCandidates bounds the lists of top levels, details trees and
	// pairs in Result; the best are kept, and the superblock's roots
	// always. 0 means DefaultMaxCandidates.
	MaxCandidates int
	// MaxDeviceTrees bounds Result.Devices; the best are kept. 0 means
	// DefaultMaxDeviceTrees.
	MaxDeviceTrees int
	// Workers is how many goroutines verify checksums; 0 means GOMAXPROCS.
	Workers int
}

// TreeKind says which tree a candidate root belongs to.
type TreeKind uint8

const (
	TopLevel TreeKind = iota + 1 // mapping tree, top level: thin id -> device tree root
	Device                       // one device's mappings: virtual block -> block_time
	Details                      // device details: thin id -> details
)

func (k TreeKind) String() string {
	switch k {
	case TopLevel:
		return "top level"
	case Device:
		return "device tree"
	case Details:
		return "details tree"
	}
	return "unknown tree"
}

// Problem is a set of reasons a subtree is not internally consistent.
type Problem uint16

const (
	ChildMissing Problem = 1 << iota // a child is not a valid node of the parent's tree
	KeysDisorder                     // a child's keys leave the range its parent gives it
	UnevenDepth                      // children stand at different heights
	Loop                             // a child pointer leads back to a node on the path
	TooDeep                          // more than MaxHeight levels
	Implausible                      // block_times past the data device or newer than the pool
	BadDeviceID                      // a thin id exceeds 24 bits
)

var problemNames = []string{"child missing", "keys out of order", "uneven depth", "loop", "too deep", "implausible block_times", "bad thin id"}

func (p Problem) String() string {
	if p == 0 {
		return "consistent"
	}
	var s []string
	for i, n := range problemNames {
		if p&(1<<i) != 0 {
			s = append(s, n)
		}
	}
	return strings.Join(s, ", ")
}

// Tree summarises the subtree under one root candidate. For a top level
// the mapping figures cover the device trees its leaves name (a shared
// device tree counts once per device, as mapped_blocks does).
type Tree struct {
	Root     block.Nr
	Kind     TreeKind
	Height   int    // 0 for a single leaf
	First    uint64 // lowest key (thin id, or virtual block for a device tree)
	Last     uint64 // highest key; First > Last when the tree is empty
	Devices  int    // top levels and details trees: entries
	Mappings uint64 // block_times found; for details trees the sum of mapped_blocks
	// Age is the newest pool time seen: block_time times for mapping trees,
	// creation and snapshot times for details trees.
	Age uint32
	// NewestMappings is how many block_times carry Age (mapping trees).
	NewestMappings uint64
	MaxDataBlock   thin.DataBlock // highest data block mapped (mapping trees)
	MaxTransaction uint64         // highest device transaction id (details trees)
	// Problems is empty when the whole subtree is consistent: every child
	// a valid node of the same tree, keys ordered, leaves at one depth.
	Problems Problem
	// Live says the superblock names this root.
	Live bool
	// IDs lists the thin ids a top level or details tree holds, in key
	// order (ids past 24 bits left out); nil for device trees.
	IDs []thin.DevID
}

// Consistent says the subtree has no problems.
func (t Tree) Consistent() bool { return t.Problems == 0 }

// DeviceTree is a root of one device's mappings: a node of a device tree
// that no valid internal node of a device tree points to, or that a top
// level names.
type DeviceTree struct {
	Tree
	// Names lists the thin ids that valid top-level leaves (live or stale)
	// give this root, at most 16, ascending.
	Names []thin.DevID
	// Reachable says the chosen mapping tree (Result.Roots) leads here.
	Reachable bool
	// Matches lists the devices of the chosen details tree that have no
	// root in the chosen mapping tree and whose mapped_blocks equals
	// Mappings: likely owners of an orphan.
	Matches []thin.DevID
}

// Stale is a set of reasons to think a state is older than the newest
// one the metadata holds.
type Stale uint8

const (
	// NotLive: the superblock is readable and names another root of this
	// kind. The superblock is written last, so another root is another
	// state: an older one, or nodes of a transaction never committed.
	NotLive Stale = 1 << iota
	// NewerData: a consistent device tree newer than every mapping of this
	// state is not reachable from it. (A device deleted after its last
	// write also leaves one: a hint, not proof.)
	NewerData
	// BehindSuperblock: the state's age is below the superblock's time.
	// Deleting the last snapshots also leaves that: a hint, not proof.
	BehindSuperblock
	// Tied: another pair of other thin ids is just as new (same ages, same
	// number of mappings at the newest time); only the number of mappings
	// ranked this one first. A device deleted in the last transactions
	// leaves such a tie when the superblock is lost: ask the user.
	Tied
	// CountsDiffer: a details tree chosen to complete a live top level
	// lists the same thin ids, but its mapped_blocks do not add up to the
	// mappings found: it is from another transaction, and its counts need
	// recomputing.
	CountsDiffer
)

// Older says there is evidence that a newer state exists.
func (s Stale) Older() bool { return s&(NotLive|NewerData) != 0 }

func (s Stale) String() string {
	var p []string
	for i, n := range []string{"not the superblock's roots", "newer device trees unreachable", "older than the superblock's time",
		"tied with another state", "mapped_blocks from another transaction"} {
		if s&(1<<i) != 0 {
			p = append(p, n)
		}
	}
	if p == nil {
		return "newest"
	}
	return strings.Join(p, ", ")
}

// Pair is a top level and a details tree that list the same thin ids.
type Pair struct {
	Mapping, Details Tree
	Age              uint32 // newer of the two ages
	// SameCounts says the details' mapped_blocks sum to the block_times
	// found under the top level, as in one committed transaction.
	SameCounts bool
	Live       bool // both roots are the superblock's
	Stale      Stale
}

// Source says where a chosen root comes from.
type Source uint8

const (
	None       Source = iota // not found: the caller must rebuild it
	Superblock               // the live superblock names it and it is valid
	Scanned                  // found by the scan
)

func (s Source) String() string {
	return [...]string{"none", "superblock", "scan"}[min(int(s), 2)]
}

// Roots is the scan's answer: the live roots where they are valid, scanned
// ones where not.
type Roots struct {
	Mapping     block.Nr
	MappingFrom Source
	Details     block.Nr
	DetailsFrom Source
	// Stale says why the chosen state may be older than the newest the
	// metadata holds. Callers should tell the user when Older() is true.
	Stale Stale
}

// SuperblockCopy is a block that carries a valid superblock: block 0, the
// held metadata snapshot, or a stale snapshot copy in a free block.
type SuperblockCopy struct {
	At         block.Nr
	Superblock thin.Superblock
}

// Result is what a scan found. Lists are ordered best first and bounded
// by Options.MaxCandidates and MaxDeviceTrees (Truncated says some were
// left out).
type Result struct {
	Blocks     block.Nr   // blocks read
	Unreadable []block.Nr // blocks whose read failed (at most 1024 listed)
	Nodes      int        // valid b-tree nodes
	Bitmaps    int        // valid space-map bitmap blocks
	Indexes    int        // valid metadata space-map index blocks

	// Live is block 0 when it is a valid superblock (nil otherwise, with
	// LiveErr saying why).
	Live        *thin.Superblock
	LiveErr     error
	Superblocks []SuperblockCopy // valid superblock copies by location, the first 1024

	Mappings []Tree       // top-level root candidates
	Details  []Tree       // details root candidates
	Devices  []DeviceTree // device tree roots
	Pairs    []Pair       // compatible top levels and details trees
	Roots    Roots

	Truncated bool
}

// Orphans lists the device trees the chosen mapping tree does not reach,
// newest first. Besides lost devices they include stale versions of live
// ones and trees of deleted devices; Names and Matches help tell them
// apart.
func (r *Result) Orphans() []DeviceTree {
	var o []DeviceTree
	for _, d := range r.Devices {
		if !d.Reachable {
			o = append(o, d)
		}
	}
	return o
}

// Best is the first pair, if any: the superblock's own roots when they
// pair, else one holding its valid top level or details tree, else the
// newest pair found. Check its Stale before using it. Roots, not Best, is
// the scan's answer: it also covers a live tree that pairs with nothing.
func (r *Result) Best() (Pair, bool) {
	if len(r.Pairs) == 0 {
		return Pair{}, false
	}
	return r.Pairs[0], true
}

// errTooBig: the device has more blocks than a scan can number.
var errTooBig = errors.New("metadata device too big to scan")

// Run reads every block of r once, in ChunkBlocks reads spread over
// Options.Workers goroutines, and returns what survives: candidate roots
// of the top level, the details tree and device trees, pairs of them, and
// the roots to use. It only reads from r, which must allow concurrent
// ReadAt calls.
//
// Memory: 4 bytes per block scanned, about 100 bytes per valid b-tree
// node, the keys and values of internal nodes, top-level leaves and
// details leaves, one ChunkBlocks buffer per worker, and the candidate
// lists Options bound; never the device. Time: one pass over the device,
// then work linear in the number of valid nodes.
//
// Run is safe to call concurrently; the Result belongs to the caller.
//
// Damaged input is the normal case and never makes Run fail: the error is
// a read error of block 0 other than corruption, or ctx's error. A chunk
// that fails to read is retried block by block and unreadable blocks are
// listed in Result.Unreadable.
func Run(ctx context.Context, r *block.Reader, opts Options) (*Result, error) {
	res := &Result{Blocks: r.Len()}
	if res.Blocks > MaxBlocks {
		return nil, fmt.Errorf("%w: %d blocks", errTooBig, res.Blocks)
	}
	if opts.MaxCandidates <= 0 {
		opts.MaxCandidates = DefaultMaxCandidates
	}
	if opts.MaxDeviceTrees <= 0 {
		opts.MaxDeviceTrees = DefaultMaxDeviceTrees
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	lim := limits{nrBlocks: uint64(res.Blocks), nrDataBlocks: opts.NrDataBlocks, time: opts.Time, hasTime: opts.HasTime}
	if !opts.IgnoreSuperblock && res.Blocks > 0 {
		sb, err := thin.ReadSuperblock(r, 0)
		switch {
		case err != nil && !errors.Is(err, block.ErrCorrupt):
			return nil, err
		case err != nil:
			res.LiveErr = err
		case sb.Magic != thin.Magic:
			res.LiveErr = fmt.Errorf("%w: superblock magic %d", block.ErrCorrupt, sb.Magic)
		default:
			res.Live = &sb
			if lim.nrDataBlocks == 0 {
				lim.nrDataBlocks = sb.DataSM.NrBlocks
			}
			if !lim.hasTime && sb.Time <= 0xFFFFFF {
				lim.time, lim.hasTime = sb.Time, true
			}
		}
	}
	s, err := read(ctx, r, res, &lim, opts.Workers)
	if err != nil {
		return nil, err
	}
	s.resolve()
	s.candidates(res, opts.MaxCandidates, opts.MaxDeviceTrees)
	return res, nil
}

// scanned is the state shared by the phases after the read.
type scanned struct {
	nodes []node
	arena []uint64
	where []int32 // block -> index in nodes, -1 for none
	lim   *limits
	live  *thin.Superblock
}

// node is what the scan keeps of one valid b-tree node, and later the
// summary of the subtree under it.
type node struct {
	nr       block.Nr
	lo, hi   uint64 // keys of the subtree
	mappings uint64
	maxData  uint64
	maxTid   uint64
	atAge    uint64
	age      uint32
	devices  uint32
	off      int64 // arena index of the keys then the values, -1 if not kept
	entries  uint16
	kind     nodeKind
	typ      treeType
	state    uint8 // 0 new, 1 on the stack, 2 done
	height   uint8
	own      Problem // problems of this node itself
	all      Problem // problems anywhere in its subtree
	flags    uint8
	named    bool // a top-level leaf names it
	ref      bool // a valid internal node of the same tree points to it
}

const (
	flagPlausible = 1 << iota
	flagMaybeTop
	flagBadIDs
)

// treeType is the tree a node was found to belong to.
type treeType uint8

const (
	typNone treeType = iota
	typDevice
	typTop
	typDetails
	typIndex
	typOverflow
)

// worker is one goroutine's share of the read.
type worker struct {
	nodes      []node
	arena      []uint64
	sbs        []SuperblockCopy
	bitmaps    int
	indexes    int
	unreadable []block.Nr
}

func read(ctx context.Context, r *block.Reader, res *Result, lim *limits, nw int) (*scanned, error) {
	n := res.Blocks
	chunks := (uint64(n) + ChunkBlocks - 1) / ChunkBlocks
	nw = int(min(uint64(nw), max(chunks, 1)))
	ws := make([]worker, nw)
	var next atomic.Uint64
	var wg sync.WaitGroup
	errs := make([]error, nw)
	for i := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &ws[i]
			buf := make([]byte, ChunkBlocks*block.Size)
			for {
				c := next.Add(1) - 1
				if c >= chunks {
					return
				}
				if err := ctx.Err(); err != nil {
					errs[i] = err
					return
				}
				start := block.Nr(c * ChunkBlocks)
				cnt := min(n-start, ChunkBlocks)
				b := buf[:cnt*block.Size]
				if err := r.ReadRaw(b, start); err != nil {
					w.retry(r, b, start, lim)
					continue
				}
				for j := range cnt {
					w.block(b[j*block.Size:(j+1)*block.Size], start+j, lim)
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	s := &scanned{lim: lim, live: res.Live}
	total, arena := 0, 0
	for i := range ws {
		total += len(ws[i].nodes)
		arena += len(ws[i].arena)
	}
	s.nodes = make([]node, 0, total)
	s.arena = make([]uint64, 0, arena)
	for i := range ws {
		w := &ws[i]
		base := int64(len(s.arena))
		for _, nd := range w.nodes {
			if nd.off >= 0 {
				nd.off += base
			}
			s.nodes = append(s.nodes, nd)
		}
		s.arena = append(s.arena, w.arena...)
		res.Superblocks = append(res.Superblocks, w.sbs...)
		res.Bitmaps += w.bitmaps
		res.Indexes += w.indexes
		for _, u := range w.unreadable {
			if len(res.Unreadable) < maxUnreadable {
				res.Unreadable = append(res.Unreadable, u)
			}
		}
		ws[i] = worker{}
	}
	// Nodes stay in the order the workers found them; later phases go
	// through them in block order by way of where, which is cheaper than
	// sorting records and keeps results independent of scheduling.
	slices.SortFunc(res.Superblocks, func(a, b SuperblockCopy) int { return cmp.Compare(a.At, b.At) })
	if len(res.Superblocks) > maxSuperblocks {
		res.Superblocks, res.Truncated = slices.Clip(res.Superblocks[:maxSuperblocks]), true
	}
	slices.Sort(res.Unreadable)
	res.Nodes = len(s.nodes)
	s.where = make([]int32, n)
	for i := range s.where {
		s.where[i] = -1
	}
	for i := range s.nodes {
		s.where[s.nodes[i].nr] = int32(i)
	}
	return s, nil
}

// retry reads a chunk that failed as a whole one block at a time.
func (w *worker) retry(r *block.Reader, b []byte, start block.Nr, lim *limits) {
	for j := range block.Nr(len(b) / block.Size) {
		bb := b[j*block.Size : (j+1)*block.Size]
		if err := r.ReadRaw(bb, start+j); err != nil {
			w.unreadable = append(w.unreadable, start+j)
			continue
		}
		w.block(bb, start+j, lim)
	}
}

// block records what block b at location at holds.
func (w *worker) block(b []byte, at block.Nr, lim *limits) {
	f, n := classify(b, at, lim)
	switch f.block {
	case block.Superblock:
		if len(w.sbs) < maxSuperblocks {
			w.sbs = append(w.sbs, SuperblockCopy{At: at, Superblock: thin.ParseSuperblock(b)})
		}
	case block.Bitmap:
		w.bitmaps++
	case block.Index:
		w.indexes++
	case block.Node:
		w.nodes = append(w.nodes, w.record(f, n))
	}
}

// record turns facts into a node, keeping in the arena the keys and values
// later phases need.
func (w *worker) record(f facts, n btree.Node) node {
	nd := node{nr: n.Loc, lo: f.lo, hi: f.hi, kind: f.kind, entries: uint16(f.n), off: -1,
		maxData: f.maxData, maxTid: f.maxTid, age: f.age, atAge: uint64(f.atAge)}
	if f.plausible {
		nd.flags |= flagPlausible
	}
	if f.maybeTop {
		nd.flags |= flagMaybeTop
	}
	if f.badIDs {
		nd.flags |= flagBadIDs
	}
	switch f.kind {
	case kindMapping:
		nd.mappings = uint64(f.n)
		if !f.maybeTop {
			return nd
		}
	case kindDetails:
		nd.mappings = f.mapped
		nd.devices = uint32(f.n)
	case kindInternal:
	default:
		return nd
	}
	nd.off = int64(len(w.arena))
	for i := range f.n {
		w.arena = append(w.arena, n.Key(i))
	}
	if f.kind == kindDetails {
		for i := range f.n {
			d := thin.ParseDetails(n.Value(i))
			w.arena = append(w.arena, d.MappedBlocks, d.TransactionID, uint64(d.CreationTime)<<32|uint64(d.SnapshottedTime))
		}
		return nd
	}
	for i := range f.n {
		w.arena = append(w.arena, n.U64(i))
	}
	return nd
}

// keys and vals give the kept keys and 8-byte values of node i.
func (s *scanned) keys(nd *node) []uint64 {
	if nd.off < 0 {
		return nil
	}
	return s.arena[nd.off : int(nd.off)+int(nd.entries)]
}

func (s *scanned) vals(nd *node) []uint64 {
	if nd.off < 0 {
		return nil
	}
	o := int(nd.off) + int(nd.entries)
	return s.arena[o : o+int(nd.entries)]
}

// details gives entry j of a details leaf.
func (s *scanned) details(nd *node, j int) thin.Details {
	o := int(nd.off) + int(nd.entries) + 3*j
	return thin.Details{MappedBlocks: s.arena[o], TransactionID: s.arena[o+1],
		CreationTime: uint32(s.arena[o+2] >> 32), SnapshottedTime: uint32(s.arena[o+2])}
}

// at is the index of the node at block b, or -1.
func (s *scanned) at(b uint64) int32 {
	if b >= uint64(len(s.where)) {
		return -1
	}
	return s.where[b]
}
