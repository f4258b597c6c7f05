// Package damage is a helper the docker daemon test runs inside its
// virtual machine, built as a static test binary: it lowers the reference
// count of one data block in the bitmap of a stopped pool's metadata, the
// damage 'docker devmapper check' reports as "N: was 1, expected 2". It
// is not part of 'go test ./...' (testdata is skipped).
//
//	DAMAGE_METADATA=/var/lib/docker/devicemapper/devicemapper/metadata ./damage.test -test.run TestLowerDataCount -test.v
package damage

import (
	"bytes"
	"fmt"
	"os"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// TestLowerDataCount finds the lowest data block two thin devices share
// (a bitmap count of 2) and sets its count to 1. Only the changed bitmap
// block is written back, so the file stays sparse.
func TestLowerDataCount(t *testing.T) {
	path := os.Getenv("DAMAGE_METADATA")
	if path == "" {
		t.Skip("DAMAGE_METADATA names no metadata file")
	}
	orig, err := os.ReadFile(path)
	assert.NilError(t, err)
	img := thintest.Image(bytes.Clone(orig))
	sb := img.Superblock()
	found := false
	var d uint64
	for d = 0; d < sb.DataSM.NrBlocks; d++ {
		if img.DataCount(t, d) == 2 {
			found = true
			break
		}
	}
	assert.Assert(t, found, "no data block has a count of 2 in %s (%d data blocks)", path, sb.DataSM.NrBlocks)
	img.SetDataCount(t, d, 1)
	assert.Equal(t, img.DataCount(t, d), uint8(1))

	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	assert.NilError(t, err)
	written := 0
	for off := 0; off+block.Size <= len(orig); off += block.Size {
		if !bytes.Equal(orig[off:off+block.Size], img[off:off+block.Size]) {
			_, err := f.WriteAt(img[off:off+block.Size], int64(off))
			assert.NilError(t, err)
			written++
		}
	}
	assert.NilError(t, f.Sync())
	assert.NilError(t, f.Close())
	assert.Equal(t, written, 1, "one bitmap block changes")
	fmt.Printf("lowered data block %d: count 2 -> 1\n", d)
}
