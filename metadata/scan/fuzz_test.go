package scan

import (
	"bytes"
	"encoding/binary"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// FuzzClassify feeds arbitrary blocks to the per-block classifier, sealed
// as b-tree nodes or not. It must never panic, and what it says of a node
// must hold for the node's bytes.
func FuzzClassify(f *testing.F) {
	img := thintest.Image(thintest.Load(f, "s2-snapshot-tree"))
	for _, n := range []block.Nr{0, 26, 41, 72, 73, 74, 76, 77, 78, 79} {
		f.Add(append([]byte(nil), img.Block(n)...), uint64(n), false, uint64(65536), uint32(4))
	}
	f.Add([]byte{}, uint64(0), true, uint64(0), uint32(0))
	f.Fuzz(func(t *testing.T, raw []byte, at uint64, seal bool, nrData uint64, time uint32) {
		b := make([]byte, block.Size)
		copy(b, raw)
		if seal {
			binary.LittleEndian.PutUint64(b[8:], at)
			block.Seal(b, block.Node)
		}
		lim := limits{nrBlocks: 1 << 20, nrDataBlocks: nrData, time: time & 0xFFFFFF, hasTime: time&1 == 0}
		fa, n := classify(b, block.Nr(at), &lim)
		if fa.block != block.Node {
			assert.Equal(t, fa.kind, kindNone)
			return
		}
		assert.Assert(t, fa.kind != kindNone)
		assert.Assert(t, fa.n == n.NrEntries && fa.n <= btree.MaxEntries(4))
		if fa.n > 0 {
			assert.Equal(t, fa.lo, n.Key(0))
			assert.Equal(t, fa.hi, n.Key(fa.n-1))
			assert.Assert(t, fa.lo <= fa.hi)
		}
		if fa.kind != kindMapping {
			return
		}
		for i := range fa.n {
			v := n.U64(i)
			bt := thin.BlockTime(v)
			if fa.maybeTop {
				assert.Assert(t, n.Key(i) <= thin.MaxDevID && v < lim.nrBlocks)
			}
			if fa.plausible && lim.nrDataBlocks != 0 {
				assert.Assert(t, uint64(bt.Block()) < lim.nrDataBlocks)
			}
			if fa.plausible && lim.hasTime {
				assert.Assert(t, bt.Time() <= lim.time)
			}
			assert.Assert(t, uint64(bt.Block()) <= fa.maxData && bt.Time() <= fa.age)
		}
	})
}

// FuzzRun scans small images whose blocks are arbitrary bytes sealed as
// nodes at their own location: arbitrary graphs of valid nodes, with
// loops, shared children and mixed trees. Run must neither panic nor
// fail, and must keep its bounds.
func FuzzRun(f *testing.F) {
	const blocks = 8
	enc := func(internal bool, keys, vals []uint64, vs int) []byte {
		b := make([]byte, block.Size)
		v := make([]byte, vs*len(keys))
		for i, x := range vals {
			binary.LittleEndian.PutUint64(v[vs*i:], x)
		}
		btree.Encode(b, 0, internal, keys, v, vs)
		return b
	}
	var seed bytes.Buffer
	seed.Write(make([]byte, block.Size)) // superblock slot
	seed.Write(enc(true, []uint64{0, 10}, []uint64{2, 3}, 8))
	seed.Write(enc(false, []uint64{0, 1}, []uint64{4, 5}, 8))
	seed.Write(enc(false, []uint64{10}, []uint64{1}, 8))
	f.Add(seed.Bytes(), uint8(0xFF))
	f.Add(bytes.Repeat([]byte{1, 0, 0, 0, 2, 0, 0, 0}, 4096), uint8(0x0F))
	f.Fuzz(func(t *testing.T, raw []byte, sealMask uint8) {
		img := make(thintest.Image, blocks*block.Size)
		copy(img, raw)
		for n := range block.Nr(blocks) {
			if sealMask&(1<<n) == 0 {
				continue
			}
			b := img.Block(n)
			binary.LittleEndian.PutUint64(b[8:], uint64(n))
			block.Seal(b, block.Node)
		}
		res, err := Run(t.Context(), img.Reader(), Options{MaxCandidates: 4, MaxDeviceTrees: 4})
		assert.NilError(t, err)
		assert.Assert(t, res.Nodes <= blocks)
		assert.Assert(t, len(res.Mappings) <= 4 && len(res.Details) <= 4 && len(res.Devices) <= 4 && len(res.Pairs) <= 4)
		for _, d := range res.Devices {
			assert.Assert(t, d.Height <= MaxHeight)
		}
	})
}
