package scan_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/scan"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// Fixture s2 (testdata/kernel/README.md): the superblock names top-level
// leaf 72 and details leaf 77 (devices 1-5, 2436 mappings, time 4).
// Device 1's tree is internal node 73 over leaves 75, 26 and 27; device 2
// has root 41, devices 3 and 4 share 51, device 5 is leaf 66. The free
// blocks still hold older states, among them top level 65 with details 67:
// the state before device 6 was deleted and device 1 last written, which
// thin_repair and thin_dump --repair fall back to.
const (
	s2Top     = 72
	s2Details = 77
	s2Dev1    = 73
	s2OldTop  = 65
	s2OldDet  = 67
)

func s2(t testing.TB) thintest.Image {
	return thintest.Image(thintest.Load(t, "s2-snapshot-tree"))
}

// tear leaves the second half of blocks first..last as it was before a
// write that did not finish: other bytes, here a fixed pattern.
func tear(img thintest.Image, first, last block.Nr) {
	for n := first; n <= last; n++ {
		for i := block.Size / 2; i < block.Size; i++ {
			img.Block(n)[i] = 0xA5
		}
	}
}

// garbage fills blocks with random bytes; every other one gets a node
// checksum and its own location, so it reaches the header checks.
func garbage(img thintest.Image, seed uint64, blocks ...block.Nr) {
	r := rand.New(rand.NewPCG(seed, seed))
	for i, n := range blocks {
		b := img.Block(n)
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		if i%2 == 0 {
			binary.LittleEndian.PutUint64(b[8:], uint64(n))
			block.Seal(b, block.Node)
		}
	}
}

// node writes a node at n and seals it.
func node(img thintest.Image, n block.Nr, internal bool, keys, vals []uint64) {
	v := make([]byte, 8*len(vals))
	for i, x := range vals {
		binary.LittleEndian.PutUint64(v[8*i:], x)
	}
	btree.Encode(img.Block(n), n, internal, keys, v, 8)
}

// freeBlocks lists n blocks the metadata space map says are free.
func freeBlocks(t testing.TB, img thintest.Image, n int) []block.Nr {
	var free []block.Nr
	for m := img.Superblock().MetadataSM.NrBlocks - 1; m > 0 && len(free) < n; m-- {
		if img.MetaCount(t, m) == 0 {
			free = append(free, block.Nr(m))
		}
	}
	return free
}

func find[T any](s []T, ok func(T) bool) (T, int) {
	for i, x := range s {
		if ok(x) {
			return x, i
		}
	}
	var zero T
	return zero, -1
}

func pairOf(res *scan.Result, top, det block.Nr) (scan.Pair, int) {
	return find(res.Pairs, func(p scan.Pair) bool { return p.Mapping.Root == top && p.Details.Root == det })
}

func deviceTree(res *scan.Result, root block.Nr) (scan.DeviceTree, int) {
	return find(res.Devices, func(d scan.DeviceTree) bool { return d.Root == root })
}

func topLevel(res *scan.Result, root block.Nr) (scan.Tree, int) {
	return find(res.Mappings, func(tr scan.Tree) bool { return tr.Root == root })
}

// describe is what a failing test prints.
func describe(res *scan.Result) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "roots %+v, %d nodes, live error %v\n", res.Roots, res.Nodes, res.LiveErr)
	for _, p := range res.Pairs {
		fmt.Fprintf(&b, "pair %d/%d age %d devices %d mappings %d same %v live %v: %v\n", p.Mapping.Root, p.Details.Root,
			p.Age, p.Details.Devices, p.Mapping.Mappings, p.SameCounts, p.Live, p.Stale)
	}
	for _, d := range res.Devices {
		fmt.Fprintf(&b, "device tree %d: %d mappings, age %d, %v, names %v, reachable %v, matches %v\n", d.Root,
			d.Mappings, d.Age, d.Problems, d.Names, d.Reachable, d.Matches)
	}
	return b.String()
}

// oldPairListedAsOlder checks that the state thin_repair falls back to is
// listed, below the best pair, and marked older.
func oldPairListedAsOlder(t *testing.T, res *scan.Result) {
	t.Helper()
	p, i := pairOf(res, s2OldTop, s2OldDet)
	assert.Assert(t, i >= 0, "old pair not listed")
	assert.Check(t, is.Equal(p.Details.Devices, 6))
	assert.Check(t, p.Stale.Older(), "old pair not marked older: %v", p.Stale)
	assert.Check(t, p.Age <= 4)
	if best, j := pairOf(res, s2Top, s2Details); j >= 0 {
		assert.Check(t, j < i, "old pair ranked above %d/%d", best.Mapping.Root, best.Details.Root)
	}
}

func TestRunS2(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, img thintest.Image)
		check  func(t *testing.T, res *scan.Result)
	}{
		{
			name: "intact",
			check: func(t *testing.T, res *scan.Result) {
				assert.Check(t, is.DeepEqual(res.Roots, scan.Roots{Mapping: s2Top, MappingFrom: scan.Superblock,
					Details: s2Details, DetailsFrom: scan.Superblock}))
				best, ok := res.Best()
				assert.Assert(t, ok)
				assert.Check(t, best.Live)
				assert.Check(t, is.Equal(best.Stale, scan.Stale(0)))
				assert.Check(t, is.Len(res.Orphans(), 5)) // stale versions and empty leaves
				oldPairListedAsOlder(t, res)
			},
		},
		{
			name:   "superblock wiped",
			damage: func(t *testing.T, img thintest.Image) { img.Zero(0) },
			check: func(t *testing.T, res *scan.Result) {
				assert.Check(t, res.Live == nil)
				assert.Check(t, res.LiveErr != nil)
				assert.Check(t, is.DeepEqual(res.Roots, scan.Roots{Mapping: s2Top, MappingFrom: scan.Scanned,
					Details: s2Details, DetailsFrom: scan.Scanned}))
				best, ok := res.Best()
				assert.Assert(t, ok)
				assert.Check(t, is.Equal(best.Mapping.Root, block.Nr(s2Top)))
				assert.Check(t, is.Equal(best.Details.Root, block.Nr(s2Details)))
				assert.Check(t, is.Equal(best.Mapping.Devices, 5))
				assert.Check(t, is.Equal(best.Details.Devices, 5))
				assert.Check(t, is.Equal(best.Mapping.Mappings, uint64(2436)))
				assert.Check(t, is.Equal(best.Age, uint32(4)))
				assert.Check(t, best.SameCounts)
				assert.Check(t, is.Equal(best.Stale, scan.Stale(0)))
				oldPairListedAsOlder(t, res)
			},
		},
		{
			name:   "top-level leaf zeroed",
			damage: func(t *testing.T, img thintest.Image) { img.Zero(s2Top) },
			check: func(t *testing.T, res *scan.Result) {
				// The details survive; no top level lists the same devices
				// with the same counts, so none is taken: the device trees
				// are orphans for the caller to attach.
				assert.Check(t, is.DeepEqual(res.Roots, scan.Roots{Details: s2Details, DetailsFrom: scan.Superblock}))
				orphans := res.Orphans()
				for _, want := range []struct {
					root    block.Nr
					age     uint32
					matches []uint64
				}{
					{s2Dev1, 4, []uint64{1}}, {41, 1, []uint64{2, 3, 4}}, {51, 2, []uint64{2, 3, 4}}, {66, 3, []uint64{5}},
				} {
					d, i := find(orphans, func(d scan.DeviceTree) bool { return d.Root == want.root })
					if !assert.Check(t, i >= 0, "device tree %d not an orphan", want.root) {
						continue
					}
					assert.Check(t, d.Consistent())
					assert.Check(t, is.Equal(d.Age, want.age))
					var m []uint64
					for _, id := range d.Matches {
						m = append(m, uint64(id))
					}
					assert.Check(t, is.DeepEqual(m, want.matches), "device tree %d", want.root)
				}
				// Device 1's newest tree comes first among its candidates.
				_, i73 := find(orphans, func(d scan.DeviceTree) bool { return d.Root == s2Dev1 })
				_, i24 := find(orphans, func(d scan.DeviceTree) bool { return d.Root == 24 })
				assert.Check(t, i73 < i24)
				oldPairListedAsOlder(t, res)
			},
		},
		{
			name:   "details root zeroed",
			damage: func(t *testing.T, img thintest.Image) { img.Zero(s2Details) },
			check: func(t *testing.T, res *scan.Result) {
				// The live top level stays; the details come from the
				// newest tree listing devices 1-5, flagged as another
				// transaction whose counts need redoing.
				assert.Check(t, is.Equal(res.Roots.Mapping, block.Nr(s2Top)))
				assert.Check(t, is.Equal(res.Roots.MappingFrom, scan.Superblock))
				assert.Check(t, is.Equal(res.Roots.DetailsFrom, scan.Scanned))
				assert.Check(t, is.Equal(res.Roots.Details, block.Nr(61)))
				assert.Check(t, res.Roots.Stale&scan.CountsDiffer != 0)
				assert.Check(t, res.Roots.Stale.Older())
				best, _ := res.Best()
				assert.Check(t, is.Equal(best.Mapping.Root, block.Nr(s2Top)))
				assert.Check(t, is.Equal(best.Details.Root, block.Nr(61)))
				assert.Check(t, !best.SameCounts)
				for _, d := range res.Devices {
					if d.Consistent() && d.Age == 4 {
						assert.Check(t, d.Reachable, "device tree %d", d.Root)
					}
				}
				oldPairListedAsOlder(t, res)
			},
		},
		{
			name:   "torn write over the live roots",
			damage: func(t *testing.T, img thintest.Image) { tear(img, 70, 79) },
			check: func(t *testing.T, res *scan.Result) {
				// Nothing of the live state is left but the superblock:
				// what is found is older, and says so.
				assert.Check(t, res.Live != nil)
				assert.Check(t, res.Roots.MappingFrom == scan.Scanned)
				assert.Check(t, res.Roots.Stale.Older(), "%v", res.Roots.Stale)
				assert.Check(t, res.Roots.Stale&scan.NotLive != 0)
				// The reference tools' choice, kept but marked.
				assert.Check(t, is.Equal(res.Roots.Mapping, block.Nr(s2OldTop)))
				assert.Check(t, is.Equal(res.Roots.Details, block.Nr(s2OldDet)))
				for _, p := range res.Pairs {
					assert.Check(t, p.Stale.Older(), "pair %d/%d", p.Mapping.Root, p.Details.Root)
				}
			},
		},
		{
			name: "random garbage in free blocks",
			damage: func(t *testing.T, img thintest.Image) {
				garbage(img, 1, freeBlocks(t, img, 200)...)
			},
			check: func(t *testing.T, res *scan.Result) {
				assert.Check(t, is.DeepEqual(res.Roots, scan.Roots{Mapping: s2Top, MappingFrom: scan.Superblock,
					Details: s2Details, DetailsFrom: scan.Superblock}))
			},
		},
		{
			name: "random garbage over live nodes",
			damage: func(t *testing.T, img thintest.Image) {
				garbage(img, 2, 26, 41, 66)
			},
			check: func(t *testing.T, res *scan.Result) {
				assert.Check(t, is.Equal(res.Roots.Mapping, block.Nr(s2Top)))
				assert.Check(t, is.Equal(res.Roots.MappingFrom, scan.Superblock))
				top, i := topLevel(res, s2Top)
				assert.Assert(t, i >= 0)
				assert.Check(t, top.Problems&scan.ChildMissing != 0)
				d, i := deviceTree(res, s2Dev1)
				assert.Assert(t, i >= 0)
				assert.Check(t, is.Equal(d.Problems, scan.ChildMissing))
				assert.Check(t, d.Reachable)
			},
		},
		{
			name: "loop to itself",
			damage: func(t *testing.T, img thintest.Image) {
				img.SetValueU64(t, s2Dev1, 2, s2Dev1)
			},
			check: func(t *testing.T, res *scan.Result) {
				assert.Check(t, is.Equal(res.Roots.Mapping, block.Nr(s2Top)))
				d, i := deviceTree(res, s2Dev1)
				assert.Assert(t, i >= 0)
				assert.Check(t, d.Problems&scan.Loop != 0, "%v", d.Problems)
				top, _ := topLevel(res, s2Top)
				assert.Check(t, top.Problems&scan.Loop != 0, "%v", top.Problems)
			},
		},
		{
			name: "loop through two nodes",
			damage: func(t *testing.T, img thintest.Image) {
				f := freeBlocks(t, img, 1)[0]
				node(img, f, true, []uint64{374}, []uint64{s2Dev1})
				img.SetValueU64(t, s2Dev1, 2, uint64(f))
			},
			check: func(t *testing.T, res *scan.Result) {
				assert.Check(t, is.Equal(res.Roots.Mapping, block.Nr(s2Top)))
				d, i := deviceTree(res, s2Dev1)
				assert.Assert(t, i >= 0)
				assert.Check(t, d.Problems&scan.Loop != 0, "%v", d.Problems)
			},
		},
		{
			name: "top level naming itself",
			damage: func(t *testing.T, img thintest.Image) {
				img.SetValueU64(t, s2Top, 0, s2Top)
			},
			check: func(t *testing.T, res *scan.Result) {
				assert.Check(t, is.Equal(res.Roots.Mapping, block.Nr(s2Top)))
				top, i := topLevel(res, s2Top)
				assert.Assert(t, i >= 0)
				assert.Check(t, top.Problems&scan.Loop != 0, "%v", top.Problems)
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img := s2(t)
			if tc.damage != nil {
				tc.damage(t, img)
			}
			res, err := scan.Run(t.Context(), img.Reader(), scan.Options{})
			assert.NilError(t, err)
			tc.check(t, res)
			if t.Failed() {
				t.Log(describe(res))
			}
		})
	}
}

// Fixture s3 holds a metadata snapshot at block 29 (devices 0 and 1);
// since then device 9 was created and device 1 deleted. The live roots
// are top level 42 and details 40 (devices 0 and 9); top level 33 with
// details 37 (devices 0, 1 and 9) is the state before the delete.
func TestRunS3(t *testing.T) {
	img := thintest.Image(thintest.Load(t, "s3-bigblock-metasnap"))
	res, err := scan.Run(t.Context(), img.Reader(), scan.Options{})
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(res.Roots, scan.Roots{Mapping: 42, MappingFrom: scan.Superblock, Details: 40, DetailsFrom: scan.Superblock}))
	assert.Assert(t, is.Len(res.Superblocks, 2))
	assert.Check(t, is.Equal(res.Superblocks[1].At, block.Nr(29)))
	snap := res.Superblocks[1].Superblock
	assert.Check(t, is.Equal(snap.TransactionID, uint64(7)))
	_, i := pairOf(res, snap.MappingRoot, snap.DetailsRoot)
	assert.Check(t, i > 0, "the snapshot's roots are not listed below the live ones")

	// Without the superblock the state with the deleted device is just as
	// new and has more mappings: it ranks first, as with thin_dump 1.1.0,
	// but the choice says it is a tie.
	img.Zero(0)
	res, err = scan.Run(t.Context(), img.Reader(), scan.Options{})
	assert.NilError(t, err)
	best, ok := res.Best()
	assert.Assert(t, ok)
	assert.Check(t, is.DeepEqual(best.Details.IDs, []thin.DevID{0, 1, 9}))
	assert.Check(t, best.Stale&scan.Tied != 0)
	assert.Check(t, res.Roots.Stale&scan.Tied != 0)
	_, i = pairOf(res, 42, 40)
	assert.Check(t, is.Equal(i, 1))
}

func TestRunS1(t *testing.T) {
	img := thintest.Image(thintest.Load(t, "s1-one-empty-thin"))
	img.Zero(0)
	res, err := scan.Run(t.Context(), img.Reader(), scan.Options{})
	assert.NilError(t, err)
	best, ok := res.Best()
	assert.Assert(t, ok)
	assert.Check(t, is.DeepEqual(best.Mapping.IDs, []thin.DevID{0}))
	assert.Check(t, is.Equal(best.Mapping.Mappings, uint64(0)))
	assert.Check(t, is.Equal(res.Roots.MappingFrom, scan.Scanned))
}

func TestOptions(t *testing.T) {
	t.Run("ignore superblock", func(t *testing.T) {
		res, err := scan.Run(t.Context(), s2(t).Reader(), scan.Options{IgnoreSuperblock: true})
		assert.NilError(t, err)
		assert.Check(t, res.Live == nil)
		assert.Check(t, is.DeepEqual(res.Roots, scan.Roots{Mapping: s2Top, MappingFrom: scan.Scanned, Details: s2Details, DetailsFrom: scan.Scanned}))
	})
	t.Run("small data device", func(t *testing.T) {
		// Device 1's newest writes map data blocks 637-640.
		res, err := scan.Run(t.Context(), s2(t).Reader(), scan.Options{NrDataBlocks: 637})
		assert.NilError(t, err)
		d, i := deviceTree(res, s2Dev1)
		assert.Assert(t, i >= 0)
		assert.Check(t, is.Equal(d.Problems, scan.Implausible))
		assert.Check(t, is.Equal(res.Roots.Mapping, block.Nr(s2Top)), "live roots stay the answer")
	})
	t.Run("old pool time", func(t *testing.T) {
		res, err := scan.Run(t.Context(), s2(t).Reader(), scan.Options{Time: 3, HasTime: true})
		assert.NilError(t, err)
		d, _ := deviceTree(res, s2Dev1)
		assert.Check(t, is.Equal(d.Problems, scan.Implausible))
		d, _ = deviceTree(res, 66)
		assert.Check(t, d.Consistent())
	})
	t.Run("candidate limit", func(t *testing.T) {
		res, err := scan.Run(t.Context(), s2(t).Reader(), scan.Options{MaxCandidates: 1, MaxDeviceTrees: 1, Workers: 3})
		assert.NilError(t, err)
		assert.Check(t, res.Truncated)
		assert.Check(t, is.Len(res.Pairs, 1))
		assert.Check(t, is.Len(res.Devices, 1))
		assert.Check(t, is.Equal(res.Pairs[0].Mapping.Root, block.Nr(s2Top)))
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := scan.Run(ctx, s2(t).Reader(), scan.Options{})
		assert.Check(t, is.ErrorIs(err, context.Canceled))
	})
	t.Run("empty device", func(t *testing.T) {
		res, err := scan.Run(t.Context(), block.NewReader(bytes.NewReader(nil), 0), scan.Options{})
		assert.NilError(t, err)
		assert.Check(t, is.Equal(res.Roots.MappingFrom, scan.None))
	})
}

// failing fails reads that touch block bad.
type failing struct {
	io.ReaderAt
	bad int64
}

func (f failing) ReadAt(p []byte, off int64) (int, error) {
	if off <= f.bad*block.Size && f.bad*block.Size < off+int64(len(p)) {
		return 0, errors.New("input/output error")
	}
	return f.ReaderAt.ReadAt(p, off)
}

func TestUnreadable(t *testing.T) {
	img := s2(t)
	r := block.NewReader(failing{bytes.NewReader(img), s2Details}, int64(len(img)))
	res, err := scan.Run(t.Context(), r, scan.Options{})
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(res.Unreadable, []block.Nr{s2Details}))
	// The rest of the chunk was read block by block.
	assert.Check(t, is.Equal(res.Roots.Mapping, block.Nr(s2Top)))
	assert.Check(t, is.Equal(res.Roots.MappingFrom, scan.Superblock))

	r = block.NewReader(failing{bytes.NewReader(img), 0}, int64(len(img)))
	_, err = scan.Run(t.Context(), r, scan.Options{})
	assert.Check(t, err != nil && !errors.Is(err, block.ErrCorrupt), "%v", err)
}
