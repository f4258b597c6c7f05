package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/golden"
	"gotest.tools/v3/icmd"
)

var kernelFixtures = []string{"s1-one-empty-thin", "s2-snapshot-tree", "s3-bigblock-metasnap"}

func kernelImage(t *testing.T, name string) string {
	t.Helper()
	return Gunzip(t, filepath.Join("..", "testdata", "kernel", name+".img.gz"))
}

// damagedImage is s2 with one byte of its mapping tree's top node flipped.
func damagedImage(t *testing.T) string {
	t.Helper()
	img := kernelImage(t, "s2-snapshot-tree")
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	assert.NilError(t, err)
	defer f.Close()
	b := []byte{0}
	_, err = f.ReadAt(b, 72*4096+100)
	assert.NilError(t, err)
	b[0] ^= 0xff
	_, err = f.WriteAt(b, 72*4096+100)
	assert.NilError(t, err)
	return img
}

// runBoth runs "docker devmapper ARGS" and "docker-devmapper ARGS" as
// subtests, so every case proves the two faces agree.
func runBoth(t *testing.T, c *CLI, args []string, check func(t *testing.T, res *icmd.Result)) {
	t.Helper()
	t.Run("docker", func(t *testing.T) {
		check(t, c.RunDocker(t, append([]string{"devmapper"}, args...)...))
	})
	t.Run("standalone", func(t *testing.T) {
		check(t, c.RunStandalone(args...))
	})
}

// TestCheckExitCodes: the documented exit codes reach the caller unchanged
// through the docker CLI.
func TestCheckExitCodes(t *testing.T) {
	c := NewCLI(t, binary)
	dir := t.TempDir()
	type tc struct {
		name     string
		args     []string
		wantCode int
		stderr   string // a substring; "" means stderr must be empty
	}
	var cases []tc
	for _, name := range kernelFixtures {
		cases = append(cases, tc{name: name, args: []string{"check", "--metadata", kernelImage(t, name)}})
	}
	cases = append(cases,
		tc{name: "damaged", args: []string{"check", "--metadata", damagedImage(t)}, wantCode: 4},
		tc{name: "demo-sample", args: []string{"check", "--metadata", Gunzip(t, "../testdata/demo/s2-refcount.img.gz")}, wantCode: 4},
		tc{name: "no-metadata-snapshot", args: []string{"check", "--metadata-snap", "--metadata", kernelImage(t, "s1-one-empty-thin")}, wantCode: 8, stderr: "no metadata snapshot"},
		tc{name: "missing-file", args: []string{"check", "--metadata", filepath.Join(dir, "missing.img")}, wantCode: 8, stderr: "no such file"},
		tc{name: "not-metadata", args: []string{"check", "--metadata", "../go.mod"}, wantCode: 8, stderr: "not the data device"},
		tc{name: "bad-flag", args: []string{"check", "--bogus"}, wantCode: 16, stderr: "unknown flag: --bogus"},
		tc{name: "stray-argument", args: []string{"check", "pool.img"}, wantCode: 16, stderr: "takes no arguments"},
		tc{name: "unknown-command", args: []string{"chek"}, wantCode: 16, stderr: `did you mean "check"?`},
	)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			runBoth(t, c, tc.args, func(t *testing.T, res *icmd.Result) {
				res.Assert(t, icmd.Expected{ExitCode: tc.wantCode})
				if tc.stderr == "" {
					assert.Check(t, is.Equal(res.Stderr(), ""))
				} else {
					assert.Check(t, is.Contains(res.Stderr(), tc.stderr))
				}
			})
		})
	}
}

// TestCheckQuiet: --quiet prints nothing at all, whatever the outcome, and
// the docker CLI adds nothing either.
func TestCheckQuiet(t *testing.T) {
	c := NewCLI(t, binary)
	for _, tc := range []struct {
		name     string
		img      string
		wantCode int
	}{
		{name: "clean", img: kernelImage(t, "s2-snapshot-tree"), wantCode: 0},
		{name: "damaged", img: damagedImage(t), wantCode: 4},
		{name: "missing", img: filepath.Join(t.TempDir(), "missing.img"), wantCode: 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runBoth(t, c, []string{"check", "--quiet", "--metadata", tc.img}, func(t *testing.T, res *icmd.Result) {
				res.Assert(t, icmd.Expected{ExitCode: tc.wantCode})
				assert.Check(t, is.Equal(res.Combined(), ""))
			})
		})
	}
}

// TestCheckQuietBrokenDockerSetup: a broken docker configuration does not
// matter to a check of a file, and --quiet hides what the docker CLI says
// about it while loading.
func TestCheckQuietBrokenDockerSetup(t *testing.T) {
	c := NewCLI(t, binary)
	img := kernelImage(t, "s1-one-empty-thin")
	badConfig := t.TempDir()
	assert.NilError(t, os.WriteFile(filepath.Join(badConfig, "config.json"), []byte("{garbage"), 0o600))
	for _, tc := range []struct {
		name string
		env  string
	}{
		{name: "bad-host", env: "DOCKER_HOST=bogus://nowhere"},
		{name: "missing-context", env: "DOCKER_CONTEXT=no-such-context"},
		{name: "broken-config", env: "DOCKER_CONFIG=" + badConfig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := c.WithEnv(tc.env).RunStandalone("check", "--quiet", "--metadata", img)
			res.Assert(t, icmd.Expected{ExitCode: 0})
			assert.Check(t, is.Equal(res.Combined(), ""))
		})
	}
}

// TestCheckReport: the report of a kernel-written pool, and no progress
// line when stderr is not a terminal.
func TestCheckReport(t *testing.T) {
	c := NewCLI(t, binary)
	img := kernelImage(t, "s2-snapshot-tree")
	runBoth(t, c, []string{"check", "--metadata", img}, func(t *testing.T, res *icmd.Result) {
		res.Assert(t, icmd.Success)
		golden.Assert(t, res.Stdout(), "check-s2-snapshot-tree.golden")
		assert.Check(t, !strings.Contains(res.Stderr(), "\r"), "progress written to a pipe")
	})
	runBoth(t, c, []string{"check", "--json", "--metadata", img}, func(t *testing.T, res *icmd.Result) {
		res.Assert(t, icmd.Success)
		assert.Check(t, is.Contains(res.Stdout(), `"outcome": "clean"`))
	})
}

// TestCheckLeavesInputUnchanged: check opens the metadata read-only; not
// one byte may change, whatever it finds.
func TestCheckLeavesInputUnchanged(t *testing.T) {
	c := NewCLI(t, binary)
	for _, tc := range []struct {
		name     string
		img      string
		flags    [][]string
		wantCode int
	}{
		{name: "s1", img: kernelImage(t, "s1-one-empty-thin"), flags: [][]string{{"--quiet"}, {"--json"}, {"--skip-mappings"}}},
		{name: "s2", img: kernelImage(t, "s2-snapshot-tree"), flags: [][]string{{"--quiet"}, {"--json"}, {"--skip-mappings"}}},
		{name: "s3", img: kernelImage(t, "s3-bigblock-metasnap"), flags: [][]string{{"--quiet"}, {"--json"}, {"--metadata-snap"}}},
		{name: "damaged", img: damagedImage(t), flags: [][]string{{"--quiet"}, {"--json"}}, wantCode: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := SHA256(t, tc.img)
			for _, flags := range tc.flags {
				args := append([]string{"check", "--metadata", tc.img}, flags...)
				runBoth(t, c, args, func(t *testing.T, res *icmd.Result) {
					res.Assert(t, icmd.Expected{ExitCode: tc.wantCode})
				})
			}
			assert.Equal(t, SHA256(t, tc.img), before)
		})
	}
}
