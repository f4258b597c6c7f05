package repair_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"runtime"
	"testing"
	"time"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/repair"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// Bounds on one fuzzed repair of a fixture (a few MiB): the time it may
// take and the bytes it may allocate, the check of its output included.
const (
	fuzzTimeout = 10 * time.Second
	fuzzAlloc   = 512 << 20
)

// FuzzRepair damages a kernel-written pool in one or two places, with or
// without a valid checksum, repairs it into memory and checks the result.
// Repair must not panic, must stay within fuzzTimeout and fuzzAlloc, and
// whatever it writes must be metadata the checker can read: clean, or
// with its damage reported, and clean whenever the repair says so.
func FuzzRepair(f *testing.F) {
	f.Add(uint8(1), uint16(72), uint16(40), []byte{0xff, 0xff}, true, uint16(0), uint16(0), []byte{})
	f.Add(uint8(1), uint16(73), uint16(1000), []byte{73, 0, 0, 0}, true, uint16(75), uint16(2000), []byte{1})
	f.Add(uint8(1), uint16(0), uint16(320), []byte{73}, true, uint16(0), uint16(0), []byte{})
	f.Add(uint8(1), uint16(77), uint16(100), []byte{1}, false, uint16(78), uint16(64), []byte{7, 7})
	f.Add(uint8(2), uint16(0), uint16(56), []byte{29}, true, uint16(35), uint16(8), []byte{0x20})
	f.Add(uint8(2), uint16(43), uint16(16), []byte{1}, true, uint16(0), uint16(0), []byte{})
	f.Add(uint8(0), uint16(15), uint16(16), []byte{0, 0, 0, 0x10}, false, uint16(16), uint16(16), []byte{2})
	f.Fuzz(func(t *testing.T, fx uint8, blk1, off1 uint16, patch1 []byte, reseal bool, blk2, off2 uint16, patch2 []byte) {
		name := thintest.Fixtures[int(fx)%len(thintest.Fixtures)]
		img := thintest.Image(loadCached(t, name))
		sb := img.Superblock()
		opts := repair.Options{
			TransactionID: ptr(sb.TransactionID),
			DataBlockSize: ptr(sb.DataBlockSize),
			NrDataBlocks:  ptr(sb.DataSM.NrBlocks),
		}
		damage(img, blk1, off1, patch1, reseal)
		damage(img, blk2, off2, patch2, reseal)

		out := make(writerAt, len(img))
		ctx, cancel := context.WithTimeout(t.Context(), fuzzTimeout)
		defer cancel()
		res, err, took, alloc := measure(func() (*repair.Result, error) {
			return repair.Repair(ctx, img.Reader(), out, int64(len(out)), opts)
		})
		assert.Assert(t, took < fuzzTimeout, "repair took %v", took)
		assert.Assert(t, alloc < fuzzAlloc, "repair allocated %d MiB", alloc>>20)
		if err != nil {
			return // not metadata at all, or the output could not be written
		}
		var text bytes.Buffer
		assert.NilError(t, res.WriteText(&text))
		assert.NilError(t, res.WriteJSON(&text))
		if res.Action != repair.SpaceMaps && res.Action != repair.Rebuild {
			return // nothing written
		}
		assert.Assert(t, res.After != nil, "a repair that wrote has no verdict on its output")
		r, err := check.Run(ctx, thintest.Image(out).Reader(), check.Options{})
		assert.NilError(t, err, "repair wrote what the checker cannot read:\n%s", text.String())
		assert.Equal(t, r.Outcome(), res.After.Outcome, "repair's verdict on its output differs from a check")
	})
}

// measure runs fn and returns what it returned, how long it took and how
// many bytes it allocated. A fuzzing worker runs one input at a time, so
// the allocation count is fn's.
func measure(fn func() (*repair.Result, error)) (*repair.Result, error, time.Duration, uint64) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	res, err := fn()
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	return res, err, took, after.TotalAlloc - before.TotalAlloc
}

// damage copies patch into block blk (modulo the image's size) at off,
// and reseals the block as the kind its header suggests.
func damage(img thintest.Image, blk, off uint16, patch []byte, reseal bool) {
	if len(patch) == 0 {
		return
	}
	n := block.Nr(blk) % img.NrBlocks()
	b := img.Block(n)
	copy(b[int(off)%block.Size:], patch)
	if !reseal {
		return
	}
	switch {
	case n == 0:
		block.Seal(b, block.Superblock)
	case binary.LittleEndian.Uint32(b[4:]) == 1 || binary.LittleEndian.Uint32(b[4:]) == 2:
		block.Seal(b, block.Node)
	case block.KindOf(b) == block.Index:
		block.Seal(b, block.Index)
	default:
		block.Seal(b, block.Bitmap)
	}
}

var fixtureCache = map[string][]byte{}

func loadCached(t *testing.T, name string) []byte {
	if fixtureCache[name] == nil {
		fixtureCache[name] = thintest.Load(t, name)
	}
	return bytes.Clone(fixtureCache[name])
}

// TestFuzzBounds shows the bounds FuzzRepair asserts are real: a repair
// cut short by its deadline returns promptly, and measure counts the
// allocations of what it runs.
func TestFuzzBounds(t *testing.T) {
	img := thintest.Image(loadCached(t, "s2-snapshot-tree"))
	img.Zero(img.Superblock().MappingRoot) // forces a scan: the slowest path
	out := make(writerAt, len(img))
	ctx, cancel := context.WithTimeout(t.Context(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	_, err, took, _ := measure(func() (*repair.Result, error) {
		return repair.Repair(ctx, img.Reader(), out, int64(len(out)), repair.Options{})
	})
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Assert(t, took < time.Second, "a cancelled repair took %v", took)

	_, _, _, alloc := measure(func() (*repair.Result, error) {
		sink = make([]byte, 8<<20)
		return nil, nil
	})
	assert.Assert(t, alloc >= 8<<20, "measure saw %d bytes of an 8 MiB allocation", alloc)
}

var sink []byte
