package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/golden"
)

var kernelFixtures = []string{"s1-one-empty-thin", "s2-snapshot-tree", "s3-bigblock-metasnap"}

func TestCheckHelp(t *testing.T) {
	r := run(t, "check", "--help")
	assert.Equal(t, r.code, ExitClean)
	golden.Assert(t, r.stdout, "check-help.golden")
}

// TestCheckKernelFixtures: metadata a real kernel wrote is clean, in every
// output mode, and --quiet prints nothing at all.
func TestCheckKernelFixtures(t *testing.T) {
	for _, name := range kernelFixtures {
		img := kernelImage(t, name)
		for _, tc := range []struct {
			mode  string
			flags []string
		}{
			{mode: "text"},
			{mode: "quiet", flags: []string{"--quiet"}},
			{mode: "quiet-short", flags: []string{"-q"}},
			{mode: "json", flags: []string{"--json"}},
			{mode: "skip-mappings", flags: []string{"--skip-mappings"}},
		} {
			t.Run(name+"/"+tc.mode, func(t *testing.T) {
				r := run(t, append([]string{"check", "--metadata", img}, tc.flags...)...)
				assert.Equal(t, r.code, ExitClean, "error: %v", r.err)
				assert.Equal(t, r.stderr, "")
				switch tc.mode {
				case "quiet", "quiet-short":
					assert.Equal(t, r.stdout, "")
				case "json":
					var v struct {
						Input   string `json:"input"`
						Outcome string `json:"outcome"`
					}
					assert.NilError(t, json.Unmarshal([]byte(r.stdout), &v))
					assert.Check(t, is.Equal(v.Outcome, "clean"))
					assert.Check(t, is.Equal(v.Input, img))
				default:
					assert.Check(t, strings.HasSuffix(r.stdout, "clean\n"), "stdout: %q", r.stdout)
				}
			})
		}
	}
}

// TestCheckMetadataSnap: s3 holds a metadata snapshot, which checks clean.
func TestCheckMetadataSnap(t *testing.T) {
	r := run(t, "check", "--metadata-snap", "--metadata", kernelImage(t, "s3-bigblock-metasnap"))
	assert.Equal(t, r.code, ExitClean, "error: %v", r.err)
	assert.Check(t, strings.HasSuffix(r.stdout, "clean\n"), "stdout: %q", r.stdout)
}

// TestCheckDamage: a broken block gives exit 4, with the report on stdout
// and nothing on stderr; --quiet keeps the code and drops the report.
func TestCheckDamage(t *testing.T) {
	img := kernelImage(t, "s2-snapshot-tree")
	flipByte(t, img, 72) // the top level of the mapping tree
	for _, tc := range []struct {
		name       string
		flags      []string
		wantStdout bool
	}{
		{name: "text", wantStdout: true},
		{name: "json", flags: []string{"--json"}, wantStdout: true},
		{name: "quiet", flags: []string{"--quiet"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, append([]string{"check", "--metadata", img}, tc.flags...)...)
			assert.Equal(t, r.code, ExitDamage, "error: %v", r.err)
			assert.Check(t, is.Equal(r.stderr, ""))
			assert.Check(t, is.Equal(message(r.err), ""), "the report already says it all")
			assert.Check(t, is.Equal(r.stdout != "", tc.wantStdout), "stdout: %q", r.stdout)
			if tc.name == "json" {
				var v struct{ Outcome string }
				assert.NilError(t, json.Unmarshal([]byte(r.stdout), &v))
				assert.Check(t, v.Outcome != "clean")
			}
		})
	}
}

// TestCheckOperationalErrors: input we cannot check gives exit 8 with a
// message saying what to do, or nothing at all with --quiet.
func TestCheckOperationalErrors(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small.img")
	assert.NilError(t, os.WriteFile(small, []byte("not metadata"), 0o644))
	zeros := filepath.Join(dir, "zeros.img")
	assert.NilError(t, os.WriteFile(zeros, make([]byte, 64*4096), 0o644))

	for _, tc := range []struct {
		name    string
		path    string
		wantMsg string
	}{
		{name: "missing", path: filepath.Join(dir, "missing.img"), wantMsg: "check the path given to --metadata"},
		{name: "too-small", path: small, wantMsg: "not the data device"},
		{name: "zeros", path: zeros, wantMsg: "not the data device"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, "check", "--metadata", tc.path)
			assert.Equal(t, r.code, ExitError, "error: %v", r.err)
			assert.Check(t, is.Equal(r.stdout, ""))
			assert.Check(t, is.Contains(message(r.err), tc.path))
			assert.Check(t, is.Contains(message(r.err), tc.wantMsg))

			r = run(t, "check", "--quiet", "--metadata", tc.path)
			assert.Equal(t, r.code, ExitError)
			assert.Check(t, is.Equal(r.stdout+r.stderr+message(r.err), ""))
		})
	}
}

// TestCheckCancelled: a cancelled check exits 130 and keeps the cause.
func TestCheckCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	dockerCLI, _, _ := newTestCLI(t)
	err := runCheck(ctx, dockerCLI, checkOptions{metadata: kernelImage(t, "s2-snapshot-tree")})
	assert.Equal(t, exitStatus(err), ExitCancelled, "error: %v", err)
	assert.Check(t, errors.Is(err, context.Canceled))
}

// TestStatus covers the mapping every command uses for failures.
func TestStatus(t *testing.T) {
	cause := errors.New("disk on fire")
	for _, tc := range []struct {
		name     string
		err      error
		quiet    bool
		wantCode int
		wantMsg  string
	}{
		{name: "plain", err: cause, wantCode: ExitError, wantMsg: "disk on fire\ncall someone"},
		{name: "quiet", err: cause, quiet: true, wantCode: ExitError, wantMsg: ""},
		{name: "cancelled", err: context.Canceled, wantCode: ExitCancelled, wantMsg: "cancelled before finishing"},
		{name: "cancelled-wrapped", err: errors.Join(cause, context.Canceled), quiet: true, wantCode: ExitCancelled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := operational(tc.err, "call someone", tc.quiet)
			assert.Check(t, is.Equal(exitStatus(err), tc.wantCode))
			assert.Check(t, is.Equal(message(err), tc.wantMsg))
			assert.Check(t, errors.Is(err, tc.err))
		})
	}
}

// TestProgressLine: updates are throttled, the last one always shows, and
// clear leaves the terminal line empty.
func TestProgressLine(t *testing.T) {
	var b strings.Builder
	p := newProgressLine(&b, time.Hour)
	p.update("mappings", 1, 10)
	p.update("mappings", 5, 10) // within the interval: dropped
	p.update("mappings", 10, 10)
	p.update("space maps", 7, 0) // total unknown: a count
	q := newProgressLine(&b, 0)
	q.update("reading", 12, 10) // overshoot shows as 100%
	q.update("reading", 3, 0)   // total unknown: a count
	q.clear()
	p.clear()
	p.clear() // nothing left to clear
	assert.Equal(t, b.String(),
		"\r\x1b[Kchecking mappings: 10%"+
			"\r\x1b[Kchecking mappings: 100%"+
			"\r\x1b[Kchecking reading: 100%"+
			"\r\x1b[Kchecking reading: 3"+
			"\r\x1b[K"+ // q.clear
			"\r\x1b[K") // p.clear

	var none *progressLine
	none.clear() // progress off: must not panic
}
