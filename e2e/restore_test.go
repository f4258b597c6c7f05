package e2e

import (
	"os"
	"path/filepath"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/icmd"
)

// TestRestoreRoundTrip: the reference XML of every kernel-written pool
// restores into metadata that checks clean and dumps back to the same
// bytes, through docker and standalone.
func TestRestoreRoundTrip(t *testing.T) {
	c := NewCLI(t, binary)
	for _, name := range kernelFixtures {
		t.Run(name, func(t *testing.T) {
			xml := Gunzip(t, filepath.Join("..", "testdata", "kernel", name+".thin_dump-0.9.0.xml.gz"))
			want, err := os.ReadFile(xml)
			assert.NilError(t, err)
			for _, via := range []string{"docker", "standalone"} {
				t.Run(via, func(t *testing.T) {
					run := func(args ...string) *icmd.Result {
						if via == "docker" {
							return c.RunDocker(t, append([]string{"devmapper"}, args...)...)
						}
						return c.RunStandalone(args...)
					}
					img := filepath.Join(t.TempDir(), "restored.img")
					res := run("restore", "--quiet", "-i", xml, "-o", img)
					res.Assert(t, icmd.Success)
					assert.Check(t, is.Equal(res.Combined(), ""), "--quiet printed")

					run("check", "--quiet", "--metadata", img).Assert(t, icmd.Success)
					res = run("dump", "--metadata", img)
					res.Assert(t, icmd.Success)
					assert.Check(t, res.Stdout() == string(want), "restore then dump differs from the reference XML")
				})
			}
		})
	}
}
