package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"gotest.tools/v3/assert"
	"gotest.tools/v3/skip"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

func checkers() []string {
	var cs []string
	if p, err := exec.LookPath("thin_check"); err == nil {
		cs = append(cs, p)
	}
	dir := os.Getenv("TPT11_BIN")
	if dir == "" {
		dir = "../../.cache/tpt11/usr/sbin"
	}
	if p := filepath.Join(dir, "thin_check"); fileExists(p) {
		cs = append(cs, p)
	}
	return cs
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func TestGenerate(t *testing.T) {
	for _, tc := range []struct {
		name     string
		mappings uint64
		seed     uint64
	}{
		{"tiny", 1000, 1},
		{"small", 200_000, 7},
		{"medium", 1_000_000, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "pool")
			st, err := generate(config{out: out, mappings: tc.mappings, seed: tc.seed, dataBlockSize: 128})
			assert.NilError(t, err)
			// Within 1% of the target, or 100 mappings (rounding per
			// device).
			diff := max(int64(st.mapped)-int64(tc.mappings), int64(tc.mappings)-int64(st.mapped))
			assert.Assert(t, diff <= max(int64(tc.mappings)/100, 100), "mapped %d", st.mapped)
			assert.Assert(t, st.private < st.mapped)

			f, err := block.Open(out)
			assert.NilError(t, err)
			sb, err := thin.ReadSuperblock(f.Reader, 0)
			f.Close()
			assert.NilError(t, err)
			assert.Equal(t, sb.MetadataSM.NrBlocks, st.metaBlocks)

			// The same seed gives the same bytes.
			again := filepath.Join(t.TempDir(), "again")
			_, err = generate(config{out: again, mappings: tc.mappings, seed: tc.seed, dataBlockSize: 128})
			assert.NilError(t, err)
			a, _ := os.ReadFile(out)
			b, _ := os.ReadFile(again)
			assert.Assert(t, bytes.Equal(a, b))

			cs := checkers()
			skip.If(t, len(cs) == 0, "reference thin_check not installed")
			for _, c := range cs {
				res, err := exec.Command(c, out).CombinedOutput()
				assert.NilError(t, err, "%s: %s", c, res)
			}
		})
	}
}

func TestRewrite(t *testing.T) {
	runs := []run{{v: 0, d: 100, n: 4}, {v: 10, d: 200, n: 3}}
	got := rewrite(runs, 2, 3, 900, 5)
	assert.DeepEqual(t, got, []run{
		{v: 0, d: 100, n: 2},
		{v: 2, d: 900, n: 2, t: 5},
		{v: 10, d: 902, n: 1, t: 5},
		{v: 11, d: 201, n: 2},
	}, cmpRuns)
	assert.DeepEqual(t, runs, []run{{v: 0, d: 100, n: 4}, {v: 10, d: 200, n: 3}}, cmpRuns)
}

var cmpRuns = cmp.AllowUnexported(run{})

func TestLowerCount(t *testing.T) {
	out := filepath.Join(t.TempDir(), "pool")
	_, err := generate(config{out: out, mappings: 20000, seed: 3, dataBlockSize: 128})
	assert.NilError(t, err)
	b, err := lowerCount(out)
	assert.NilError(t, err)
	f, err := block.Open(out)
	assert.NilError(t, err)
	defer f.Close()
	rep, err := check.Run(t.Context(), f.Reader, check.Options{})
	assert.NilError(t, err)
	assert.Equal(t, rep.Outcome(), check.CountsWrong)
	assert.DeepEqual(t, rep.Data.Mismatches, []check.Mismatch{{Block: b, Was: 1, Expected: 2}})
}
