package btree

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
)

// Errors the Builder returns. They describe bad input from its caller, not
// corrupt metadata.
var (
	// ErrBuildOrder: a key is not greater than every key added before it.
	ErrBuildOrder = errors.New("btree builder: keys not strictly ascending")
	// ErrBuildValue: a value has the wrong size, or a leaf was offered to a
	// tree with another value size.
	ErrBuildValue = errors.New("btree builder: value size mismatch")
	// ErrBuildLeaf: a shared leaf is not usable (empty, a bad key range,
	// too many entries) or could not be read back.
	ErrBuildLeaf = errors.New("btree builder: bad shared leaf")
	// ErrBuildDone: the Builder was used after Finish.
	ErrBuildDone = errors.New("btree builder: already finished")
)

// Allocator hands out fresh metadata blocks for new nodes.
type Allocator interface {
	Alloc() (block.Nr, error)
}

// Sink receives every node a Builder finishes, sealed and ready to store,
// right after the block for it was allocated. b is only valid during the
// call.
type Sink interface {
	WriteNode(at block.Nr, b []byte) error
}

// Loader reads back a leaf written earlier. A Builder needs one only to
// unshare a shared leaf, which it does when keeping the leaf would leave a
// neighbouring node under-filled. keys and vals are the leaf's first
// nr_entries keys and their packed values; the Builder keeps and may
// modify both slices.
type Loader interface {
	LoadLeaf(at block.Nr) (keys []uint64, vals []byte, err error)
}

// Leaf summarises a leaf that is already on disk, so that another tree can
// point at it instead of copying it: this is how snapshots share mappings.
type Leaf struct {
	Block   block.Nr
	First   uint64 // smallest key
	Last    uint64 // largest key
	Entries int    // nr_entries, at least 1
}

// Root is what a finished tree looks like.
type Root struct {
	Block   block.Nr
	Entries uint64 // number of keys in the whole tree, shared leaves included
	Height  int    // 0 when the root is a leaf
}

// Config sets up a Builder.
type Config struct {
	ValueSize int       // leaf value size in bytes
	Alloc     Allocator // blocks for new nodes
	Sink      Sink      // where finished nodes go
	Loader    Loader    // optional; without it shared leaves are never unshared
	// KeepLeaves records every leaf of the tree, written or shared, for
	// Leaves.
	KeepLeaves bool
	// LeavesOnly makes a Builder that writes leaves but no node above
	// them; finish it with FinishLeaves. It implies KeepLeaves.
	LeavesOnly bool
}

// level holds the entries of one tree level that are not yet in a node.
type level struct {
	keys    []uint64
	vals    []byte
	emitted int // nodes already written at this level
}

// Builder builds a b-tree bottom-up from keys added in ascending order,
// writing each node as soon as it is complete, so memory stays a few nodes
// per level whatever the tree's size.
//
// Packing rule: nodes are filled to max_entries, except that every node
// but the root keeps at least max_entries/3 entries, the minimum the kernel
// and the reference checkers require. A level writes a full node only once
// more than max_entries + max_entries/3 entries wait, so the rest can always
// be spread over one or two nodes of at least the minimum.
//
// Shared leaves (AddLeaf) are pointed at rather than copied. If private
// entries before a shared leaf are too few for a node of their own, the
// Builder unshares the shared leaf next to them through the Loader and packs
// its entries with them; a shared leaf with fewer than max_entries/3
// entries is always unshared.
//
// A Builder is not safe for concurrent use. After it returns an error
// other than ErrBuildOrder, ErrBuildValue or ErrBuildLeaf for the entry
// offered, the tree is incomplete: do not use the Builder further.
type Builder struct {
	cfg      Config
	max, min int
	levels   []*level
	last     uint64 // last key added
	any      bool   // a key was added
	entries  uint64
	// lastShared is the shared leaf last pushed to level 1, while it is
	// still the last entry there and nothing private follows it.
	lastShared *Leaf
	leaves     []Leaf
	buf        []byte
	done       bool
}

// NewBuilder starts an empty tree.
func NewBuilder(cfg Config) *Builder {
	max := MaxEntries(cfg.ValueSize)
	if cfg.LeavesOnly {
		cfg.KeepLeaves = true
	}
	return &Builder{
		cfg:    cfg,
		max:    max,
		min:    max / 3,
		levels: []*level{{}},
		buf:    make([]byte, block.Size),
	}
}

// Len is the number of keys added so far, shared leaves included.
func (b *Builder) Len() uint64 { return b.entries }

// Add appends one entry. key must be greater than every key added before;
// val must be ValueSize bytes.
func (b *Builder) Add(key uint64, val []byte) error {
	if len(val) != b.cfg.ValueSize {
		return fmt.Errorf("%w: %d bytes, want %d", ErrBuildValue, len(val), b.cfg.ValueSize)
	}
	if err := b.order(key); err != nil {
		return err
	}
	l := b.levels[0]
	l.keys = append(l.keys, key)
	l.vals = append(l.vals, val...)
	b.entries++
	return b.spill(0)
}

// AddU64 is Add for trees whose values are 8 bytes, without a slice.
func (b *Builder) AddU64(key uint64, v uint64) error {
	if b.cfg.ValueSize != 8 {
		return fmt.Errorf("%w: 8 bytes, want %d", ErrBuildValue, b.cfg.ValueSize)
	}
	if err := b.order(key); err != nil {
		return err
	}
	l := b.levels[0]
	l.keys = append(l.keys, key)
	l.vals = binary.LittleEndian.AppendUint64(l.vals, v)
	b.entries++
	return b.spill(0)
}

// AddRunU64 adds n entries with 8-byte values: keys key, key+1, ... and
// values v, v+step, v+2*step, ... It is AddU64 in a loop, at a fraction of
// the cost; n = 0 adds nothing. key+n-1 must not overflow.
func (b *Builder) AddRunU64(key, v, step, n uint64) error {
	if n == 0 {
		return nil
	}
	if b.cfg.ValueSize != 8 {
		return fmt.Errorf("%w: 8 bytes, want %d", ErrBuildValue, b.cfg.ValueSize)
	}
	if key+(n-1) < key {
		return fmt.Errorf("%w: run of %d from %d overflows", ErrBuildOrder, n, key)
	}
	if err := b.order(key); err != nil {
		return err
	}
	b.last = key + n - 1
	b.entries += n
	l := b.levels[0]
	for n > 0 {
		// Take as many as fit before the level must spill.
		k := min(n, uint64(b.max+b.min+1-len(l.keys)))
		for i := range k {
			l.keys = append(l.keys, key+i)
			l.vals = binary.LittleEndian.AppendUint64(l.vals, v+i*step)
		}
		key, v, n = key+k, v+k*step, n-k
		if err := b.spill(0); err != nil {
			return err
		}
	}
	return nil
}

func (b *Builder) order(key uint64) error {
	if err := b.usable(); err != nil {
		return err
	}
	if b.any && key <= b.last {
		return fmt.Errorf("%w: %d after %d", ErrBuildOrder, key, b.last)
	}
	b.last, b.any = key, true
	return nil
}

// AddLeaf appends a leaf that is already on disk. Its keys must all be
// greater than every key added before. The leaf must hold values of this
// tree's value size; the Builder cannot check that without reading it.
func (b *Builder) AddLeaf(lf Leaf) error {
	if err := b.usable(); err != nil {
		return err
	}
	if lf.Entries < 1 || lf.Entries > b.max || lf.Last < lf.First || uint64(lf.Entries-1) > lf.Last-lf.First {
		return fmt.Errorf("%w: block %d, %d entries, keys %d..%d", ErrBuildLeaf, lf.Block, lf.Entries, lf.First, lf.Last)
	}
	if b.any && lf.First <= b.last {
		return fmt.Errorf("%w: shared leaf %d starts at %d after %d", ErrBuildOrder, lf.Block, lf.First, b.last)
	}
	if lf.Entries < b.min {
		return b.inline(lf)
	}
	l0 := b.levels[0]
	if p := len(l0.keys); p > 0 && p < b.min {
		if b.lastShared != nil {
			// Take back the shared leaf before the short run and pack
			// both together.
			if err := b.unshareLast(); err != nil {
				return err
			}
		} else {
			// Nothing to lean on before: copy this leaf instead.
			return b.inline(lf)
		}
	}
	if err := b.flush(0); err != nil {
		return err
	}
	b.last, b.any = lf.Last, true
	b.entries += uint64(lf.Entries)
	if err := b.push(1, lf.First, lf.Block, &lf); err != nil {
		return err
	}
	b.lastShared = &lf
	return nil
}

func (b *Builder) usable() error {
	if b.done {
		return ErrBuildDone
	}
	if b.max < 3 {
		return fmt.Errorf("%w: %d-byte values do not fit a node", ErrBuildValue, b.cfg.ValueSize)
	}
	return nil
}

// inline adds a shared leaf's entries as private ones.
func (b *Builder) inline(lf Leaf) error {
	keys, vals, err := b.load(lf)
	if err != nil {
		return err
	}
	vs := b.cfg.ValueSize
	for i, k := range keys {
		if err := b.Add(k, vals[i*vs:(i+1)*vs]); err != nil {
			return err
		}
	}
	return nil
}

func (b *Builder) load(lf Leaf) ([]uint64, []byte, error) {
	if b.cfg.Loader == nil {
		return nil, nil, fmt.Errorf("%w: leaf %d must be unshared, but there is no loader", ErrBuildLeaf, lf.Block)
	}
	keys, vals, err := b.cfg.Loader.LoadLeaf(lf.Block)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: leaf %d: %w", ErrBuildLeaf, lf.Block, err)
	}
	if len(keys) != lf.Entries || len(vals) != len(keys)*b.cfg.ValueSize ||
		keys[0] != lf.First || keys[len(keys)-1] != lf.Last {
		return nil, nil, fmt.Errorf("%w: leaf %d does not hold what its summary says", ErrBuildLeaf, lf.Block)
	}
	return keys, vals, nil
}

// unshareLast removes the shared leaf that is the last entry of level 1
// and puts its entries in front of the pending private ones.
func (b *Builder) unshareLast() error {
	lf := *b.lastShared
	b.lastShared = nil
	keys, vals, err := b.load(lf)
	if err != nil {
		return err
	}
	if !b.cfg.LeavesOnly {
		l1 := b.levels[1]
		n := len(l1.keys) - 1
		l1.keys, l1.vals = l1.keys[:n], l1.vals[:n*8]
	}
	if b.cfg.KeepLeaves {
		b.leaves = b.leaves[:len(b.leaves)-1]
	}
	l0 := b.levels[0]
	l0.keys = append(keys[:len(keys):len(keys)], l0.keys...)
	l0.vals = append(vals[:len(vals):len(vals)], l0.vals...)
	return nil
}

// fill is the most and the least entries a node of level i holds: leaves
// hold values of the tree's size, internal nodes 8-byte child pointers.
func (b *Builder) fill(i int) (max, min int) {
	if i == 0 {
		return b.max, b.min
	}
	max = MaxEntries(8)
	return max, max / 3
}

// spill writes full nodes from level i while more than max+min entries
// wait there.
func (b *Builder) spill(i int) error {
	l := b.levels[i]
	max, min := b.fill(i)
	for len(l.keys) > max+min {
		if err := b.emit(i, max); err != nil {
			return err
		}
	}
	return nil
}

// flush writes every pending entry of level i as one node, or two of
// about equal size when they do not fit in one.
func (b *Builder) flush(i int) error {
	if err := b.spill(i); err != nil {
		return err
	}
	l := b.levels[i]
	max, _ := b.fill(i)
	if p := len(l.keys); p > max {
		if err := b.emit(i, p/2); err != nil {
			return err
		}
	}
	if len(l.keys) > 0 {
		return b.emit(i, len(l.keys))
	}
	return nil
}

// emit writes the first n pending entries of level i as one node and
// pushes it to the level above.
func (b *Builder) emit(i, n int) error {
	l := b.levels[i]
	at, err := b.cfg.Alloc.Alloc()
	if err != nil {
		return err
	}
	vs := b.valueSize(i)
	Encode(b.buf, at, i > 0, l.keys[:n], l.vals[:n*vs], vs)
	if err := b.cfg.Sink.WriteNode(at, b.buf); err != nil {
		return err
	}
	first, last := l.keys[0], l.keys[n-1]
	l.keys = append(l.keys[:0], l.keys[n:]...)
	l.vals = append(l.vals[:0], l.vals[n*vs:]...)
	l.emitted++
	if i == 0 {
		b.lastShared = nil
		var lf *Leaf
		if b.cfg.KeepLeaves {
			// Last is only known for leaves; internal nodes do not need it.
			lf = &Leaf{Block: at, First: first, Last: last, Entries: n}
		}
		return b.push(1, first, at, lf)
	}
	return b.push(i+1, first, at, nil)
}

func (b *Builder) valueSize(i int) int {
	if i == 0 {
		return b.cfg.ValueSize
	}
	return 8
}

// push adds a child pointer to level i.
func (b *Builder) push(i int, key uint64, child block.Nr, lf *Leaf) error {
	if i == len(b.levels) {
		b.levels = append(b.levels, &level{})
	}
	if i == 1 && b.cfg.KeepLeaves && lf != nil {
		b.leaves = append(b.leaves, *lf)
	}
	if b.cfg.LeavesOnly {
		return nil // the leaves are all there is
	}
	l := b.levels[i]
	l.keys = append(l.keys, key)
	l.vals = binary.LittleEndian.AppendUint64(l.vals, uint64(child))
	return b.spill(i)
}

// Finish writes the nodes still pending and returns the root. An empty tree
// is one empty leaf. A tree that is a single shared leaf has that leaf as
// its root.
func (b *Builder) Finish() (Root, error) {
	if err := b.usable(); err != nil {
		return Root{}, err
	}
	if b.cfg.LeavesOnly {
		return Root{}, fmt.Errorf("%w: a LeavesOnly builder ends with FinishLeaves", ErrBuildDone)
	}
	b.done = true
	if p := len(b.levels[0].keys); p > 0 && p < b.min && b.lastShared != nil {
		if err := b.unshareLast(); err != nil {
			return Root{}, err
		}
	}
	for i := 0; ; i++ {
		l := b.levels[i]
		top := i == len(b.levels)-1
		if top && l.emitted == 0 {
			if i > 0 && len(l.keys) == 1 {
				return Root{Block: block.Nr(binary.LittleEndian.Uint64(l.vals)), Entries: b.entries, Height: i - 1}, nil
			}
			if max, _ := b.fill(i); len(l.keys) <= max {
				at, err := b.cfg.Alloc.Alloc()
				if err != nil {
					return Root{}, err
				}
				vs := b.valueSize(i)
				Encode(b.buf, at, i > 0, l.keys, l.vals, vs)
				if err := b.cfg.Sink.WriteNode(at, b.buf); err != nil {
					return Root{}, err
				}
				if i == 0 && b.cfg.KeepLeaves && len(l.keys) > 0 {
					b.leaves = append(b.leaves, Leaf{Block: at, First: l.keys[0], Last: l.keys[len(l.keys)-1], Entries: len(l.keys)})
				}
				return Root{Block: at, Entries: b.entries, Height: i}, nil
			}
		}
		if err := b.flush(i); err != nil {
			return Root{}, err
		}
	}
}

// Leaves lists the leaves of the finished tree in key order, shared ones
// included, when Config.KeepLeaves was set. The slice belongs to the
// Builder.
func (b *Builder) Leaves() []Leaf { return b.leaves }

// FinishLeaves writes the pending entries as leaves and returns all the
// leaves, shared ones included, in key order. It needs Config.LeavesOnly:
// such a Builder writes leaves and nothing above them, the way to prepare
// leaves that other trees will share. The slice belongs to the Builder.
func (b *Builder) FinishLeaves() ([]Leaf, error) {
	if !b.cfg.LeavesOnly {
		return nil, fmt.Errorf("%w: FinishLeaves needs LeavesOnly", ErrBuildDone)
	}
	if err := b.usable(); err != nil {
		return nil, err
	}
	b.done = true
	if p := len(b.levels[0].keys); p > 0 && p < b.min && b.lastShared != nil {
		if err := b.unshareLast(); err != nil {
			return nil, err
		}
	}
	if err := b.flush(0); err != nil {
		return nil, err
	}
	return b.leaves, nil
}

// NodesFor is the number of nodes a Builder writes for a tree of n private
// entries whose values are valueSize bytes, so that callers can reserve
// the blocks before building.
func NodesFor(n uint64, valueSize int) uint64 {
	max := uint64(MaxEntries(valueSize))
	total := uint64(0)
	for level := 0; ; level++ {
		if level == 1 {
			max = uint64(MaxEntries(8)) // internal nodes
		}
		min := max / 3
		if level > 0 && n == 1 {
			return total // the single child is the root
		}
		if n <= max {
			return total + 1
		}
		// Full nodes while more than max+min wait, then one or two.
		var full uint64
		if n > max+min {
			full = (n - max - min + max - 1) / max
		}
		rest := n - full*max
		nodes := full + 1
		if rest > max {
			nodes++
		}
		total += nodes
		n = nodes
	}
}
