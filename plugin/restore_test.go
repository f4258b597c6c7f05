package plugin

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/golden"

	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// xmlFixture writes a kernel fixture's reference dump into a temp dir.
func xmlFixture(t *testing.T, name, suffix string) string {
	p := filepath.Join(t.TempDir(), name+".xml")
	assert.NilError(t, os.WriteFile(p, thintest.Dump(t, name, suffix), 0o644))
	return p
}

func TestRestoreRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		fixture, suffix string
	}{
		{"s1-one-empty-thin", "thin_dump-0.9.0.xml"},
		{"s2-snapshot-tree", "thin_dump-0.9.0.xml"},
		{"s2-snapshot-tree", "thin_dump-1.1.0.xml"}, // shared <def>/<ref> leaves
		{"s3-bigblock-metasnap", "thin_dump-0.9.0.xml"},
	} {
		t.Run(tc.fixture+"/"+tc.suffix, func(t *testing.T) {
			in := xmlFixture(t, tc.fixture, tc.suffix)
			out := filepath.Join(t.TempDir(), "meta.img")
			res := run(t, "restore", "-i", in, "-o", out)
			assert.Equal(t, res.code, ExitClean, message(res.err))
			assert.Check(t, is.Contains(res.stdout, "restored "))

			res = run(t, "check", "--metadata", out)
			assert.Equal(t, res.code, ExitClean, res.stdout)

			res = run(t, "dump", "--metadata", out)
			assert.Equal(t, res.code, ExitClean)
			want := thintest.Dump(t, tc.fixture, "thin_dump-0.9.0.xml")
			assert.Check(t, bytes.Equal([]byte(res.stdout), want), "dump of the restored metadata differs from thin_dump 0.9.0's")
		})
	}
}

func TestRestoreRefusals(t *testing.T) {
	s2 := xmlFixture(t, "s2-snapshot-tree", "thin_dump-0.9.0.xml")
	xmlText, err := os.ReadFile(s2)
	assert.NilError(t, err)
	write := func(t *testing.T, text string) string {
		p := filepath.Join(t.TempDir(), "in.xml")
		assert.NilError(t, os.WriteFile(p, []byte(text), 0o644))
		return p
	}
	for _, tc := range []struct {
		name  string
		input func(t *testing.T) string
		out   func(t *testing.T) string // the output path, maybe prepared
		args  []string
		code  int
		keeps bool // the output must be unchanged afterwards
	}{
		{name: "existing-metadata", input: func(*testing.T) string { return s2 },
			out: func(t *testing.T) string { return kernelImage(t, "s1-one-empty-thin") }, code: ExitError, keeps: true},
		{name: "zeroed-output-is-fine", input: func(*testing.T) string { return s2 },
			out: func(t *testing.T) string {
				p := filepath.Join(t.TempDir(), "zero.img")
				assert.NilError(t, os.WriteFile(p, make([]byte, 8<<20), 0o644))
				return p
			}, code: ExitClean},
		{name: "force", input: func(*testing.T) string { return s2 },
			out: func(t *testing.T) string { return kernelImage(t, "s1-one-empty-thin") }, args: []string{"--force"}, code: ExitClean},
		{name: "truncated-xml", input: func(t *testing.T) string { return write(t, string(xmlText[:3000])) },
			out: func(t *testing.T) string { return filepath.Join(t.TempDir(), "new.img") }, code: ExitError},
		{name: "overlapping-mappings", input: func(t *testing.T) string {
			return write(t, strings.Replace(string(xmlText), `origin_begin="4" data_begin="4"`, `origin_begin="3" data_begin="4"`, 1))
		}, out: func(t *testing.T) string { return filepath.Join(t.TempDir(), "new.img") }, code: ExitError},
		{name: "data-block-past-the-end", input: func(t *testing.T) string {
			return write(t, strings.Replace(string(xmlText), `nr_data_blocks="65536"`, `nr_data_blocks="600"`, 1))
		}, out: func(t *testing.T) string { return filepath.Join(t.TempDir(), "new.img") }, code: ExitError},
		{name: "device-twice", input: func(t *testing.T) string {
			return write(t, strings.Replace(string(xmlText), `dev_id="5"`, `dev_id="4"`, 1))
		}, out: func(t *testing.T) string { return filepath.Join(t.TempDir(), "new.img") }, code: ExitError},
		{name: "mapped-blocks-mismatch", input: func(t *testing.T) string {
			return write(t, strings.Replace(string(xmlText), `mapped_blocks="3"`, `mapped_blocks="4"`, 1))
		}, out: func(t *testing.T) string { return filepath.Join(t.TempDir(), "new.img") }, code: ExitError},
		{name: "too-small", input: func(*testing.T) string { return s2 },
			out: func(t *testing.T) string { return filepath.Join(t.TempDir(), "new.img") }, args: []string{"--size", "16KiB"}, code: ExitError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, in := tc.out(t), tc.input(t)
			before, _ := os.ReadFile(out)
			res := run(t, append([]string{"restore", "-i", in, "-o", out}, tc.args...)...)
			assert.Equal(t, res.code, tc.code, message(res.err))
			msg := strings.ReplaceAll(strings.ReplaceAll(message(res.err), in, "IN.xml"), filepath.Dir(out), "DIR")
			golden.Assert(t, msg, "restore-"+tc.name+".golden")
			after, err := os.ReadFile(out)
			switch {
			case tc.keeps:
				assert.Check(t, bytes.Equal(before, after), "the output changed")
			case tc.code != ExitClean && before == nil:
				assert.Check(t, os.IsNotExist(err), "a failed restore left %s behind", out)
			}
			if tc.code != ExitClean {
				ents, _ := os.ReadDir(filepath.Dir(out))
				for _, e := range ents {
					assert.Check(t, !strings.HasSuffix(e.Name(), ".tmp"), "temporary file %s left behind", e.Name())
				}
			}
		})
	}
}
