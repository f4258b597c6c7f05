package scan_test

import (
	"os"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/scan"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// BenchmarkRun scans the pool named by SCAN_BENCH_FILE (cmd/mkpool makes
// large ones), or the s2 fixture.
func BenchmarkRun(b *testing.B) {
	var r *block.Reader
	if p := os.Getenv("SCAN_BENCH_FILE"); p != "" {
		f, err := block.Open(p)
		assert.NilError(b, err)
		defer f.Close()
		r = f.Reader
		b.SetBytes(f.Size())
	} else {
		img := thintest.Image(thintest.Load(b, "s2-snapshot-tree"))
		r = img.Reader()
		b.SetBytes(int64(len(img)))
	}
	for b.Loop() {
		res, err := scan.Run(b.Context(), r, scan.Options{})
		assert.NilError(b, err)
		assert.Equal(b, res.Roots.MappingFrom, scan.Superblock)
	}
}
