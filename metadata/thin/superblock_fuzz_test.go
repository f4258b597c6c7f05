package thin_test

import (
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// FuzzSuperblock round-trips any superblock bytes through Parse and Encode:
// the fields it knows re-encode to the same bytes.
func FuzzSuperblock(f *testing.F) {
	for _, name := range thintest.Fixtures {
		img := thintest.Image(thintest.Load(f, name))
		f.Add(append([]byte(nil), img.Block(0)...))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		b := make([]byte, block.Size)
		copy(b, raw)
		s := thin.ParseSuperblock(b)
		again := make([]byte, block.Size)
		s.Encode(again, s.Location)
		assert.NilError(t, block.Verify(again, s.Location, block.Superblock))
		// Encode writes the known fields and zeroes the rest.
		assert.DeepEqual(t, again[4:96], b[4:96])
		assert.DeepEqual(t, again[192:224], b[192:224])
		assert.DeepEqual(t, again[320:364], b[320:364])
		assert.DeepEqual(t, thin.ParseSuperblock(again), s)
	})
}
