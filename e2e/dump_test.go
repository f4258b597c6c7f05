package e2e

import (
	"os"
	"path/filepath"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/icmd"
)

// TestDump: the XML of every kernel-written pool is byte for byte what the
// reference thin_dump 0.9.0 printed for it, on stdout and with -o.
func TestDump(t *testing.T) {
	c := NewCLI(t, binary)
	for _, name := range kernelFixtures {
		t.Run(name, func(t *testing.T) {
			img := kernelImage(t, name)
			want, err := os.ReadFile(Gunzip(t, filepath.Join("..", "testdata", "kernel", name+".thin_dump-0.9.0.xml.gz")))
			assert.NilError(t, err)
			before := SHA256(t, img)

			runBoth(t, c, []string{"dump", "--metadata", img}, func(t *testing.T, res *icmd.Result) {
				res.Assert(t, icmd.Success)
				assert.Check(t, res.Stdout() == string(want), "dump differs from thin_dump 0.9.0")
			})
			out := filepath.Join(t.TempDir(), "pool.xml")
			runBoth(t, c, []string{"dump", "--metadata", img, "-o", out}, func(t *testing.T, res *icmd.Result) {
				res.Assert(t, icmd.Success)
				assert.Check(t, is.Equal(res.Stdout(), ""))
				got, err := os.ReadFile(out)
				assert.NilError(t, err)
				assert.Check(t, string(got) == string(want), "dump -o differs from thin_dump 0.9.0")
			})
			assert.Check(t, is.Equal(SHA256(t, img), before), "dump changed its input")
		})
	}
}
