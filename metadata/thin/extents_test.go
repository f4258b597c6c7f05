package thin_test

import (
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

func TestAllocated(t *testing.T) {
	img := thintest.Image(thintest.Load(t, "s2-snapshot-tree"))
	sb := img.Superblock()
	exts := thin.Allocated(img.Reader(), sb, 0)
	var n uint64
	for i, e := range exts {
		n += uint64(e.Len)
		if i > 0 {
			assert.Check(t, e.Start > exts[i-1].Start+exts[i-1].Len, "extents overlap or touch")
		}
		for b := e.Start; b < e.Start+e.Len; b++ {
			assert.Check(t, img.MetaCount(t, uint64(b)) > 0, "block %d is free", b)
		}
	}
	assert.Equal(t, n, sb.MetadataSM.NrAllocated)
	// Gaps merge.
	assert.Check(t, len(thin.Allocated(img.Reader(), sb, 64)) <= len(exts))
	// A broken index gives no hint rather than a wrong one.
	img.Zero(sb.MetadataSM.BitmapRoot)
	assert.Check(t, thin.Allocated(img.Reader(), sb, 0) == nil)
}
