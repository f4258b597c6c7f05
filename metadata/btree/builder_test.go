package btree_test

import (
	"encoding/binary"
	"fmt"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
)

// memDev is an in-memory metadata device: allocator, sink and loader.
type memDev struct {
	blocks map[block.Nr][]byte
	next   block.Nr
	limit  block.Nr // 0: unlimited
	loads  int
}

func newMemDev() *memDev { return &memDev{blocks: map[block.Nr][]byte{}, next: 1} }

var errFull = fmt.Errorf("device full")

func (m *memDev) Alloc() (block.Nr, error) {
	if m.limit != 0 && m.next >= m.limit {
		return 0, errFull
	}
	m.next++
	return m.next - 1, nil
}

func (m *memDev) WriteNode(at block.Nr, b []byte) error {
	if _, ok := m.blocks[at]; ok {
		return fmt.Errorf("block %d written twice", at)
	}
	m.blocks[at] = append([]byte(nil), b...)
	return nil
}

func (m *memDev) LoadLeaf(at block.Nr) ([]uint64, []byte, error) {
	m.loads++
	b, ok := m.blocks[at]
	if !ok {
		return nil, nil, fmt.Errorf("block %d never written", at)
	}
	n := binary.LittleEndian.Uint32(b[16:])
	max := binary.LittleEndian.Uint32(b[20:])
	vs := binary.LittleEndian.Uint32(b[24:])
	keys := make([]uint64, n)
	for i := range keys {
		keys[i] = binary.LittleEndian.Uint64(b[32+8*i:])
	}
	off := 32 + 8*max
	return keys, append([]byte(nil), b[off:off+n*vs]...), nil
}

func (m *memDev) config(vs int) btree.Config {
	return btree.Config{ValueSize: vs, Alloc: m, Sink: m, Loader: m}
}

// entry is one key and its value, for comparing trees.
type entry struct {
	Key uint64
	Val string
}

// treeStats is what walking a tree found.
type treeStats struct {
	entries []entry
	nodes   int
	leaves  []block.Nr
	height  int
}

// walk parses the tree at root back with ParseNode and checks every rule a
// reference checker applies: checksums, locations, ascending keys, parent
// keys equal to the child's first key, the minimum fill of non-root nodes
// and leaves all at one depth.
func (m *memDev) walk(t *testing.T, root block.Nr, vs int) treeStats {
	t.Helper()
	var st treeStats
	st.height = -1
	var rec func(at block.Nr, depth int, isRoot bool, lo uint64)
	rec = func(at block.Nr, depth int, isRoot bool, lo uint64) {
		b, ok := m.blocks[at]
		assert.Assert(t, ok, "block %d never written", at)
		assert.NilError(t, block.Verify(b, at, block.Node))
		n, err := btree.ParseNode(b, at, vs)
		assert.NilError(t, err)
		st.nodes++
		if !isRoot {
			assert.Assert(t, n.NrEntries >= n.MinEntries(), "node %d: %d entries, min %d", at, n.NrEntries, n.MinEntries())
			assert.Equal(t, n.Key(0), lo, "node %d: parent key", at)
		}
		if !n.Internal {
			if st.height == -1 {
				st.height = depth
			}
			assert.Equal(t, depth, st.height, "leaf %d at another depth", at)
			st.leaves = append(st.leaves, at)
			for i := 0; i < n.NrEntries; i++ {
				if l := len(st.entries); l > 0 && n.Key(i) <= st.entries[l-1].Key {
					t.Fatalf("keys not ascending across leaves at %d", at)
				}
				st.entries = append(st.entries, entry{n.Key(i), string(n.Value(i))})
			}
			return
		}
		for i := 0; i < n.NrEntries; i++ {
			rec(n.Child(i), depth+1, false, n.Key(i))
		}
	}
	rec(root, 0, true, 0)
	return st
}

func val(vs int, k uint64) []byte {
	b := make([]byte, vs)
	for i := range b {
		b[i] = byte(k>>(8*(i%8))) ^ byte(i)
	}
	return b
}

func TestBuilderPrivate(t *testing.T) {
	for _, tc := range []struct {
		n  int
		vs int
	}{
		{0, 8}, {1, 8}, {83, 8}, {84, 8}, {252, 8}, {253, 8}, {336, 8}, {337, 8}, {504, 8}, {505, 8},
		{100_000, 8}, {63_504, 8}, {63_505, 8}, {84*252 + 1, 8},
		{0, 4}, {1000, 4}, {5, 16}, {169, 16}, {1000, 24}, {127, 24},
		// Internal nodes hold 252 children whatever the leaf value size.
		{120_000, 4}, {100_000, 24}, {60_000, 16},
	} {
		t.Run(fmt.Sprintf("n%d_vs%d", tc.n, tc.vs), func(t *testing.T) {
			m := newMemDev()
			b := btree.NewBuilder(m.config(tc.vs))
			var want []entry
			for i := 0; i < tc.n; i++ {
				k := uint64(i)*3 + 7
				v := val(tc.vs, k)
				var err error
				if tc.vs == 8 && i%2 == 0 {
					err = b.AddU64(k, binary.LittleEndian.Uint64(v))
				} else {
					err = b.Add(k, v)
				}
				if err != nil {
					t.Fatal(err)
				}
				want = append(want, entry{k, string(v)})
			}
			root, err := b.Finish()
			assert.NilError(t, err)
			assert.Equal(t, root.Entries, uint64(tc.n))
			st := m.walk(t, root.Block, tc.vs)
			assert.DeepEqual(t, st.entries, want)
			assert.Equal(t, st.height, root.Height)
			assert.Equal(t, st.nodes, len(m.blocks), "every written node is in the tree")
			assert.Equal(t, uint64(st.nodes), btree.NodesFor(uint64(tc.n), tc.vs))
			// Fill fully: all leaves but the last two are full.
			max := btree.MaxEntries(tc.vs)
			for i, l := range st.leaves {
				if i < len(st.leaves)-2 {
					n, _ := btree.ParseNode(m.blocks[l], l, tc.vs)
					assert.Equal(t, n.NrEntries, max, "leaf %d of %d", i, len(st.leaves))
				}
			}
		})
	}
}

func TestNodesForMatchesBuilder(t *testing.T) {
	sizes := []uint64{84 * 252, 252 * 252, 252*252 + 1, 336 * 253, 126 * 300, 168 * 400, 300_000}
	for n := uint64(0); n < 3000; n += 7 {
		sizes = append(sizes, n)
	}
	for _, vs := range []int{4, 8, 16, 24} {
		for _, n := range sizes {
			m := newMemDev()
			b := btree.NewBuilder(m.config(vs))
			val := make([]byte, vs)
			for i := uint64(0); i < n; i++ {
				if err := b.Add(i, val); err != nil {
					t.Fatal(err)
				}
			}
			_, err := b.Finish()
			assert.NilError(t, err)
			assert.Equal(t, uint64(len(m.blocks)), btree.NodesFor(n, vs), "n=%d vs=%d", n, vs)
		}
	}
}

// piece is part of a tree under test: private entries or a shared leaf.
type piece struct {
	private int // number of private entries, or
	shared  int // size of a shared leaf
}

func TestBuilderShared(t *testing.T) {
	for _, tc := range []struct {
		name   string
		pieces []piece
		loads  int // leaves read back to be unshared
		shared int // shared leaves still pointed at
	}{
		{name: "one shared leaf is the root", pieces: []piece{{shared: 200}}, shared: 1},
		{name: "shared leaves only", pieces: []piece{{shared: 200}, {shared: 252}, {shared: 84}}, shared: 3},
		{name: "private then shared", pieces: []piece{{private: 300}, {shared: 100}, {private: 500}}, shared: 1},
		{name: "short private first", pieces: []piece{{private: 5}, {shared: 100}, {shared: 150}}, loads: 1, shared: 1},
		{name: "short private between", pieces: []piece{{shared: 100}, {private: 3}, {shared: 150}}, loads: 1, shared: 1},
		{name: "short private last", pieces: []piece{{shared: 100}, {shared: 120}, {private: 1}}, loads: 1, shared: 1},
		{name: "small shared leaf inlined", pieces: []piece{{private: 300}, {shared: 10}, {private: 300}}, loads: 1},
		{name: "many shared under one parent", pieces: manyShared(600, 130), shared: 600},
		{name: "mixed", pieces: []piece{{private: 84}, {shared: 84}, {private: 83}, {shared: 252}, {private: 2000}, {shared: 90}}, loads: 1, shared: 2},
		{name: "short private alone after shared unshared", pieces: []piece{{shared: 252}, {private: 83}}, loads: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMemDev()
			const vs = 8
			// Write the shared leaves first, as another tree would have.
			var want []entry
			var adds []func(b *btree.Builder) error
			k := uint64(10)
			for _, p := range tc.pieces {
				if p.private > 0 {
					start := k
					n := p.private
					adds = append(adds, func(b *btree.Builder) error {
						for i := 0; i < n; i++ {
							key := start + uint64(i)*2
							if err := b.Add(key, val(vs, key)); err != nil {
								return err
							}
						}
						return nil
					})
					for i := 0; i < n; i++ {
						key := start + uint64(i)*2
						want = append(want, entry{key, string(val(vs, key))})
					}
					k += uint64(n) * 2
					continue
				}
				lb := btree.NewBuilder(btree.Config{ValueSize: vs, Alloc: m, Sink: m, LeavesOnly: true})
				for i := 0; i < p.shared; i++ {
					key := k + uint64(i)*2
					assert.NilError(t, lb.Add(key, val(vs, key)))
					want = append(want, entry{key, string(val(vs, key))})
				}
				leaves, err := lb.FinishLeaves()
				assert.NilError(t, err)
				assert.Equal(t, len(leaves), 1)
				lf := leaves[0]
				adds = append(adds, func(b *btree.Builder) error { return b.AddLeaf(lf) })
				k += uint64(p.shared) * 2
			}
			before := len(m.blocks)
			sharedBlocks := map[block.Nr]bool{}
			for at := range m.blocks {
				sharedBlocks[at] = true
			}
			cfg := m.config(vs)
			cfg.KeepLeaves = true
			b := btree.NewBuilder(cfg)
			for _, add := range adds {
				assert.NilError(t, add(b))
			}
			root, err := b.Finish()
			assert.NilError(t, err)
			assert.Equal(t, root.Entries, uint64(len(want)))
			st := m.walk(t, root.Block, vs)
			assert.DeepEqual(t, st.entries, want)
			assert.Equal(t, m.loads, tc.loads)
			used := 0
			for _, l := range st.leaves {
				if sharedBlocks[l] {
					used++
				}
			}
			assert.Equal(t, used, tc.shared)
			assert.Equal(t, st.nodes-used, len(m.blocks)-before, "every new node is in the tree")
			var got []block.Nr
			for _, l := range b.Leaves() {
				got = append(got, l.Block)
			}
			assert.DeepEqual(t, got, st.leaves)
		})
	}
}

func manyShared(n, size int) []piece {
	ps := make([]piece, n)
	for i := range ps {
		ps[i].shared = size
	}
	return ps
}

func TestBuilderErrors(t *testing.T) {
	m := newMemDev()
	b := btree.NewBuilder(m.config(8))
	assert.NilError(t, b.AddU64(5, 1))
	assert.ErrorIs(t, b.AddU64(5, 1), btree.ErrBuildOrder)
	assert.ErrorIs(t, b.Add(6, []byte{1}), btree.ErrBuildValue)
	assert.ErrorIs(t, b.AddLeaf(btree.Leaf{Block: 9, First: 3, Last: 400, Entries: 100}), btree.ErrBuildOrder)
	assert.ErrorIs(t, b.AddLeaf(btree.Leaf{Block: 9, First: 10, Last: 20, Entries: 100}), btree.ErrBuildLeaf)
	assert.ErrorIs(t, b.AddLeaf(btree.Leaf{Block: 9, First: 10, Last: 2000, Entries: 0}), btree.ErrBuildLeaf)
	_, err := b.Finish()
	assert.NilError(t, err)
	assert.ErrorIs(t, b.AddU64(100, 1), btree.ErrBuildDone)
	_, err = b.Finish()
	assert.ErrorIs(t, err, btree.ErrBuildDone)

	// Unsharing without a loader.
	lb := btree.NewBuilder(btree.Config{ValueSize: 8, Alloc: m, Sink: m, LeavesOnly: true})
	for i := uint64(100); i < 200; i++ {
		assert.NilError(t, lb.AddU64(i, i))
	}
	leaves, err := lb.FinishLeaves()
	assert.NilError(t, err)
	nb := btree.NewBuilder(btree.Config{ValueSize: 8, Alloc: m, Sink: m})
	assert.NilError(t, nb.AddU64(1, 1))
	assert.ErrorIs(t, nb.AddLeaf(leaves[0]), btree.ErrBuildLeaf)

	// Out of space.
	full := newMemDev()
	full.limit = 3
	fb := btree.NewBuilder(full.config(8))
	for i := uint64(0); i < 2000; i++ {
		if err = fb.AddU64(i, i); err != nil {
			break
		}
	}
	if err == nil {
		_, err = fb.Finish()
	}
	assert.ErrorIs(t, err, errFull)

	// A value size no node can hold.
	bad := btree.NewBuilder(btree.Config{ValueSize: 5000, Alloc: m, Sink: m})
	assert.ErrorIs(t, bad.Add(1, make([]byte, 5000)), btree.ErrBuildValue)
}

// FuzzBuilder builds trees from a script of private runs and shared leaves
// and checks that they parse back whole and keep every fill rule.
func FuzzBuilder(f *testing.F) {
	f.Add([]byte{0x10, 0x81, 0x05, 0xff, 0x02})
	f.Add([]byte{0x80, 0x80, 0x80})
	f.Add([]byte{0x03, 0x90, 0x01})
	f.Add([]byte{0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0xc0, 0x01})
	f.Fuzz(func(t *testing.T, script []byte) {
		if len(script) > 64 {
			script = script[:64]
		}
		const vs = 8
		m := newMemDev()
		var want []entry
		var adds []func(b *btree.Builder) error
		k := uint64(0)
		for _, op := range script {
			n := int(op&0x7f)*4 + 1
			if op&0x80 == 0 {
				start := k
				adds = append(adds, func(b *btree.Builder) error {
					if op&1 == 1 {
						return b.AddRunU64(start, start, 1, uint64(n))
					}
					for i := 0; i < n; i++ {
						if err := b.AddU64(start+uint64(i), start+uint64(i)); err != nil {
							return err
						}
					}
					return nil
				})
			} else {
				n = n%252 + 1
				lb := btree.NewBuilder(btree.Config{ValueSize: vs, Alloc: m, Sink: m, LeavesOnly: true})
				for i := 0; i < n; i++ {
					assert.NilError(t, lb.AddU64(k+uint64(i), k+uint64(i)))
				}
				leaves, err := lb.FinishLeaves()
				assert.NilError(t, err)
				for _, lf := range leaves {
					adds = append(adds, func(b *btree.Builder) error { return b.AddLeaf(lf) })
				}
			}
			for i := 0; i < n; i++ {
				want = append(want, entry{k + uint64(i), string(binary.LittleEndian.AppendUint64(nil, k+uint64(i)))})
			}
			k += uint64(n) + uint64(op&3)
		}
		b := btree.NewBuilder(m.config(vs))
		for _, add := range adds {
			assert.NilError(t, add(b))
		}
		root, err := b.Finish()
		assert.NilError(t, err)
		st := m.walk(t, root.Block, vs)
		if len(want) == 0 {
			want = nil
		}
		assert.DeepEqual(t, st.entries, want)
	})
}

// AddRunU64 must write exactly what AddU64 in a loop writes.
func TestBuilderAddRun(t *testing.T) {
	runs := [][2]uint64{{0, 1}, {5, 300}, {400, 85}, {1000, 700}, {5000, 3}, {6000, 1}}
	one, many := newMemDev(), newMemDev()
	b1, b2 := btree.NewBuilder(one.config(8)), btree.NewBuilder(many.config(8))
	for _, r := range runs {
		assert.NilError(t, b1.AddRunU64(r[0], r[0]<<24|7, 1<<24, r[1]))
		for i := uint64(0); i < r[1]; i++ {
			assert.NilError(t, b2.AddU64(r[0]+i, (r[0]+i)<<24|7))
		}
	}
	assert.NilError(t, b1.AddRunU64(7000, 0, 1, 0))
	assert.ErrorIs(t, b1.AddRunU64(6000, 0, 1, 2), btree.ErrBuildOrder)
	assert.ErrorIs(t, b1.AddRunU64(1<<63, 0, 1, 1<<63+1), btree.ErrBuildOrder)
	r1, err := b1.Finish()
	assert.NilError(t, err)
	r2, err := b2.Finish()
	assert.NilError(t, err)
	assert.Equal(t, r1, r2)
	assert.DeepEqual(t, one.blocks, many.blocks)
}
