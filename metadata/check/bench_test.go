package check_test

import (
	"os"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// BenchmarkCheck checks the pool named by CHECK_BENCH_FILE (make bench
// generates large ones), or the s2 fixture.
func BenchmarkCheck(b *testing.B) {
	var r *block.Reader
	if p := os.Getenv("CHECK_BENCH_FILE"); p != "" {
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
		rep, err := check.Run(b.Context(), r, check.Options{})
		assert.NilError(b, err)
		assert.Equal(b, rep.Outcome(), check.Clean)
	}
}
