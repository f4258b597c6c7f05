package check_test

import (
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// BenchmarkCheck checks the pool named by CHECK_BENCH_FILE (make bench
// generates large ones), or the s2 fixture.
func BenchmarkCheck(b *testing.B) {
	r := thintest.BenchPool(b, "CHECK_BENCH_FILE")
	for b.Loop() {
		rep, err := check.Run(b.Context(), r, check.Options{})
		assert.NilError(b, err)
		assert.Equal(b, rep.Outcome(), check.Clean)
	}
}
