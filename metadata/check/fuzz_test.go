package check_test

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// FuzzCheck damages a kernel-written pool with arbitrary bytes at an
// arbitrary place, reseals the block so the damage gets past the
// checksum, and checks the whole image. The checker must neither panic nor
// hang, and its report must be well formed.
func FuzzCheck(f *testing.F) {
	f.Add(uint8(1), uint16(72), uint16(40), []byte{0xff, 0xff}, true)
	f.Add(uint8(1), uint16(73), uint16(1000), []byte{73, 0, 0, 0}, true)
	f.Add(uint8(2), uint16(0), uint16(56), []byte{29}, true)
	f.Add(uint8(0), uint16(15), uint16(16), []byte{0, 0, 0, 0x10}, false)
	f.Fuzz(func(t *testing.T, fx uint8, blk, off uint16, patch []byte, reseal bool) {
		name := thintest.Fixtures[int(fx)%len(thintest.Fixtures)]
		img := thintest.Image(loadCached(t, name))
		n := block.Nr(blk) % block.Nr(len(img)/block.Size)
		b := img.Block(n)
		copy(b[int(off)%block.Size:], patch)
		if reseal {
			if k := kindAt(n, b); k != block.Unknown {
				block.Seal(b, k)
			}
		}
		start := time.Now()
		r, err := check.Run(t.Context(), img.Reader(), check.Options{})
		assert.Assert(t, time.Since(start) < 10*time.Second)
		if err != nil {
			return
		}
		var out bytes.Buffer
		assert.NilError(t, r.WriteText(&out))
		assert.NilError(t, r.WriteJSON(&out))
	})
}

var cache = map[string][]byte{}

func loadCached(t *testing.T, name string) []byte {
	if cache[name] == nil {
		cache[name] = thintest.Load(t, name)
	}
	return append([]byte(nil), cache[name]...)
}

// kindAt guesses the kind of a block from where it sits and its header,
// good enough to reseal fuzzed blocks.
func kindAt(n block.Nr, b []byte) block.Kind {
	if n == 0 {
		return block.Superblock
	}
	if f := binary.LittleEndian.Uint32(b[4:]); f == 1 || f == 2 {
		return block.Node
	}
	return block.Bitmap
}
