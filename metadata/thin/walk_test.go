package thin_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"

	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// s2 holds the metadata of fixture s2 (see testdata/kernel/README.md).
// Blocks used below: 72 top-level leaf, 77 details leaf, 73 device 1's
// internal node over leaves 75 (0..247), 26 (248..373, shared with devices
// 2-4) and 27 (374..).
func s2(t testing.TB) []byte {
	t.Helper()
	return thintest.Load(t, "s2-snapshot-tree")
}

func reader(img []byte) *block.Reader {
	return block.NewReader(bytes.NewReader(img), int64(len(img)))
}

func walker(t testing.TB, img []byte) (*thin.Walker, *[]error) {
	t.Helper()
	r := reader(img)
	sb, err := thin.ReadSuperblock(r, 0)
	assert.NilError(t, err)
	w := thin.NewWalker(r, sb)
	var damage []error
	w.Damaged = func(err error) { damage = append(damage, err) }
	return w, &damage
}

// rewrite re-encodes the node at nr after edit changed its keys and values.
func rewrite(t testing.TB, img []byte, nr block.Nr, valueSize int, edit func(keys []uint64, vals []byte) ([]uint64, []byte)) {
	t.Helper()
	b := img[nr*block.Size : (nr+1)*block.Size]
	n, err := btree.ParseNode(b, nr, valueSize)
	assert.NilError(t, err)
	var keys []uint64
	var vals []byte
	for i := range n.NrEntries {
		keys = append(keys, n.Key(i))
		vals = append(vals, n.Value(i)...)
	}
	keys, vals = edit(keys, vals)
	vs := valueSize
	if n.Internal {
		vs = 8
	}
	btree.Encode(b, nr, n.Internal, keys, vals, vs)
}

func TestWalkerDevices(t *testing.T) {
	w, damage := walker(t, s2(t))
	devs, err := w.Devices()
	assert.NilError(t, err)
	assert.Check(t, is.Len(*damage, 0))
	assert.DeepEqual(t, devs, []thin.Device{
		{ID: 1, Details: thin.Details{MappedBlocks: 606, SnapshottedTime: 4}, Root: 73, HasRoot: true},
		{ID: 2, Details: thin.Details{MappedBlocks: 609, CreationTime: 1, SnapshottedTime: 2}, Root: 41, HasRoot: true},
		{ID: 3, Details: thin.Details{MappedBlocks: 609, CreationTime: 2, SnapshottedTime: 3}, Root: 51, HasRoot: true},
		{ID: 4, Details: thin.Details{MappedBlocks: 609, CreationTime: 3, SnapshottedTime: 3}, Root: 51, HasRoot: true},
		{ID: 5, Details: thin.Details{MappedBlocks: 3, CreationTime: 3, SnapshottedTime: 3}, Root: 66, HasRoot: true},
	})
}

func TestWalkerMappings(t *testing.T) {
	w, damage := walker(t, s2(t))
	devs, err := w.Devices()
	assert.NilError(t, err)
	for _, d := range devs {
		var n uint64
		next := thin.VBlock(0)
		leaves := 0
		err := w.Mappings(d, func(ms []thin.Mapping) error {
			leaves++
			for _, m := range ms {
				assert.Assert(t, n == 0 || m.VBlock >= next, "device %d: %d after %d", d.ID, m.VBlock, next)
				next = m.VBlock + 1
				n++
			}
			return nil
		})
		assert.NilError(t, err)
		assert.Check(t, is.Equal(n, d.Details.MappedBlocks), "device %d", d.ID)
		if d.ID == 1 {
			assert.Check(t, is.Equal(leaves, 3))
		}
	}
	assert.Check(t, is.Len(*damage, 0))

	stop := errors.New("stop")
	err = w.Mappings(devs[0], func([]thin.Mapping) error { return stop })
	assert.Check(t, is.ErrorIs(err, stop))
}

func TestWalkerDamage(t *testing.T) {
	cases := []struct {
		name    string
		damage  func(t *testing.T, img []byte)
		reports []string
		is      error
	}{
		{
			name: "device without mapping tree",
			damage: func(t *testing.T, img []byte) {
				rewrite(t, img, 72, 8, func(k []uint64, v []byte) ([]uint64, []byte) { return k[:4], v[:32] })
			},
			reports: []string{"device 5: corrupt metadata: device has details but no mapping tree"},
			is:      thin.ErrNoMappingTree,
		},
		{
			name: "device without details",
			damage: func(t *testing.T, img []byte) {
				rewrite(t, img, 77, thin.DetailsSize, func(k []uint64, v []byte) ([]uint64, []byte) {
					return append(k[:1:1], k[2:]...), append(v[:24:24], v[48:]...)
				})
			},
			reports: []string{"device 2: corrupt metadata: device has a mapping tree but no details"},
			is:      thin.ErrNoDetails,
		},
		{
			name: "keys outside the parent's range",
			damage: func(t *testing.T, img []byte) {
				rewrite(t, img, 75, 8, func(k []uint64, v []byte) ([]uint64, []byte) {
					for i := range k {
						k[i] += 1000
					}
					return k, v
				})
			},
			reports: []string{"device 1, virtual blocks 0..247: btree node 75 (path [73 75]): corrupt metadata: key outside the range its parent gives: holds 1000..1247"},
			is:      btree.ErrKeyRange,
		},
		{
			name: "wrong value size",
			damage: func(t *testing.T, img []byte) {
				b := img[77*block.Size:]
				binary.LittleEndian.PutUint32(b[24:], 16)
				block.Seal(b[:block.Size], block.Node)
			},
			reports: []string{"device details tree, devices 0..: btree node 77 (path [77]): corrupt metadata: value size mismatch: expected 24, but got 16"},
			is:      btree.ErrValueSize,
		},
		{
			name: "pointer past the end",
			damage: func(t *testing.T, img []byte) {
				rewrite(t, img, 73, 8, func(k []uint64, v []byte) ([]uint64, []byte) {
					binary.LittleEndian.PutUint64(v[8:], 1<<40)
					return k, v
				})
			},
			reports: []string{"device 1, virtual blocks 248..373: btree node 1099511627776 (path [73 1099511627776]): block 1099511627776: corrupt metadata: block past the end of the metadata device"},
			is:      block.ErrOutOfRange,
		},
		{
			name: "thin id over 24 bits",
			damage: func(t *testing.T, img []byte) {
				rewrite(t, img, 72, 8, func(k []uint64, v []byte) ([]uint64, []byte) {
					k[4] = 1 << 24
					return k, v
				})
			},
			reports: []string{
				"mapping tree top level, devices 16777216..16777216: btree node 72 (path [72]): corrupt metadata: thin id 16777216 exceeds 24 bits",
				"device 5: corrupt metadata: device has details but no mapping tree",
			},
			is: block.ErrCorrupt,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			img := s2(t)
			tc.damage(t, img)
			w, damage := walker(t, img)
			devs, err := w.Devices()
			assert.NilError(t, err)
			for _, d := range devs {
				assert.NilError(t, w.Mappings(d, func([]thin.Mapping) error { return nil }))
			}
			var got []string
			for _, e := range *damage {
				got = append(got, e.Error())
			}
			assert.DeepEqual(t, got, tc.reports)
			assert.Check(t, is.ErrorIs((*damage)[0], tc.is))

			// Without a Damaged callback the first damage ends the walk.
			w.Damaged = nil
			_, err = w.Devices()
			for _, d := range devs {
				if err == nil {
					err = w.Mappings(d, func([]thin.Mapping) error { return nil })
				}
			}
			assert.Check(t, is.ErrorIs(err, tc.is))
		})
	}
}

func TestWalkerLoop(t *testing.T) {
	img := s2(t)
	// Device 1's internal node 73 gets itself as its last child.
	rewrite(t, img, 73, 8, func(k []uint64, v []byte) ([]uint64, []byte) {
		binary.LittleEndian.PutUint64(v[16:], 73)
		return k, v
	})
	w, _ := walker(t, img)
	w.Damaged = nil
	devs, err := w.Devices()
	assert.NilError(t, err)
	err = w.Mappings(devs[0], func([]thin.Mapping) error { return nil })
	var ne *thin.NodeError
	assert.Assert(t, errors.As(err, &ne))
	assert.Check(t, is.ErrorIs(err, thin.ErrLoop))
	assert.Check(t, is.DeepEqual(ne.Path, []block.Nr{73, 73}))
	assert.Check(t, is.Equal(ne.Dev, thin.DevID(1)))
	assert.Check(t, is.Equal(ne.Keys, thin.KeyRange{First: 374, Last: 1<<64 - 1}))
}

func TestWalkerTooDeep(t *testing.T) {
	// A chain of internal nodes, each with one child, deeper than MaxDepth.
	const n = thin.MaxDepth + 2
	img := make([]byte, (n+2)*block.Size)
	var sb thin.Superblock
	sb.MappingRoot, sb.DetailsRoot = 1, n+1
	sb.Encode(img, 0)
	for i := block.Nr(1); i <= n; i++ {
		v := binary.LittleEndian.AppendUint64(nil, uint64(i+1))
		btree.Encode(img[i*block.Size:], i, i < n, []uint64{0}, v, 8)
	}
	btree.Encode(img[(n+1)*block.Size:], n+1, false, nil, nil, thin.DetailsSize)
	w, damage := walker(t, img)
	_, err := w.Devices()
	assert.NilError(t, err)
	assert.Assert(t, is.Len(*damage, 1))
	assert.Check(t, is.ErrorIs((*damage)[0], thin.ErrTooDeep))
}

func TestReadHeldSnapshot(t *testing.T) {
	_, err := thin.ReadHeldSnapshot(reader(s2(t)))
	assert.Check(t, is.ErrorIs(err, thin.ErrNoSnapshot))
}

// FuzzWalk replaces one node of s2 with arbitrary bytes that carry a valid
// checksum and location, then walks everything: damage is reported as
// corruption, and the walk always ends.
func FuzzWalk(f *testing.F) {
	img := s2(f)
	for _, nr := range []uint8{72, 73, 75, 26, 27, 77, 51, 54} {
		f.Add(nr, bytes.Clone(img[int(nr)*block.Size:(int(nr)+1)*block.Size]))
	}
	f.Fuzz(func(t *testing.T, nr uint8, raw []byte) {
		if nr == 0 {
			return // the superblock: not a node
		}
		img := bytes.Clone(img)
		b := img[int(nr)*block.Size : (int(nr)+1)*block.Size]
		clear(b)
		copy(b, raw)
		if len(b) >= 16 {
			binary.LittleEndian.PutUint64(b[8:], uint64(nr))
		}
		block.Seal(b, block.Node)
		w, damage := walker(t, img)
		devs, err := w.Devices()
		assert.NilError(t, err)
		for _, d := range devs {
			err := w.Mappings(d, func([]thin.Mapping) error { return nil })
			assert.NilError(t, err)
		}
		for _, e := range *damage {
			assert.Check(t, errors.Is(e, block.ErrCorrupt), "%v", e)
		}
	})
}
