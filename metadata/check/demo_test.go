package check_test

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"testing"

	"gotest.tools/v3/assert"
	"gotest.tools/v3/golden"

	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// TestDemoSample keeps testdata/demo/s2-refcount.img.gz, the sample that
// `make demo` checks and repairs, what the README says it is: the
// kernel-written s2 pool with the damage of the classic report, two data
// blocks whose count is one too low ("was 1, expected 2"), and a leaked
// data block. Run with -update to write it again.
func TestDemoSample(t *testing.T) {
	path := filepath.Join(thintest.Root(), "testdata", "demo", "s2-refcount.img.gz")
	if golden.FlagUpdate() {
		img := thintest.Image(thintest.Load(t, "s2-snapshot-tree"))
		n := 0
		for d := range uint64(641) {
			if img.DataCount(t, d) == 2 && n < 2 && d > 300 {
				img.SetDataCount(t, d, 1)
				n++
			}
		}
		img.SetDataCount(t, 10122, 1)
		var z bytes.Buffer
		w, err := gzip.NewWriterLevel(&z, gzip.BestCompression)
		assert.NilError(t, err)
		_, err = w.Write(img)
		assert.NilError(t, err)
		assert.NilError(t, w.Close())
		assert.NilError(t, os.WriteFile(path, z.Bytes(), 0o644))
	}
	img := thintest.Image(thintest.Gunzip(t, path))
	r := run(t, img, check.Options{})
	assert.Equal(t, r.Outcome(), check.CountsWrong)
	golden.Assert(t, text(t, r), "demo.golden")
}
