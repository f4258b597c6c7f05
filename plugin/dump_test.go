package plugin

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/cli/cli"
	"github.com/docker/cli/cli/command"
	"github.com/spf13/cobra"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/golden"

	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// dumpRun runs "devmapper dump args..." the way the docker CLI does, with
// the dump command in the tree whether or not the root lists it yet.
func dumpRun(t *testing.T, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	dockerCLI, err := command.NewDockerCli(
		command.WithInputStream(io.NopCloser(strings.NewReader(""))),
		command.WithOutputStream(&out),
		command.WithErrorStream(&errb),
	)
	assert.NilError(t, err)
	top := &cobra.Command{Use: "docker [OPTIONS] " + Name + " [ARG...]", SilenceUsage: true, SilenceErrors: true, TraverseChildren: true}
	cli.SetupPluginRootCommand(top)
	top.SetOut(dockerCLI.Out())
	top.SetErr(dockerCLI.Err())
	root := NewRootCommand(dockerCLI)
	if c, _, err := root.Find([]string{"dump"}); err != nil || c == root {
		root.AddCommand(newDumpCommand(dockerCLI))
	}
	top.AddCommand(root)
	top.SetArgs(append([]string{Name, "dump"}, args...))
	err = top.ExecuteContext(t.Context())
	return result{stdout: out.String(), stderr: errb.String(), err: err, code: exitStatus(err)}
}

// referenceDump is the thin_dump 0.9.0 output stored beside a fixture.
func referenceDump(t *testing.T, name string) string {
	t.Helper()
	return string(thintest.Gunzip(t, filepath.Join("..", "testdata", "kernel", name)))
}

func TestDumpHelp(t *testing.T) {
	r := dumpRun(t, "--help")
	assert.Equal(t, r.code, ExitClean)
	golden.Assert(t, r.stdout, "dump-help.golden")
}

// TestDumpKernelFixtures: the XML equals thin_dump 0.9.0's, to stdout and
// to a file, and the input is left as it was.
func TestDumpKernelFixtures(t *testing.T) {
	for _, tc := range []struct {
		fixture, want string
		flags         []string
	}{
		{"s1-one-empty-thin", "s1-one-empty-thin.thin_dump-0.9.0.xml.gz", nil},
		{"s2-snapshot-tree", "s2-snapshot-tree.thin_dump-0.9.0.xml.gz", nil},
		{"s3-bigblock-metasnap", "s3-bigblock-metasnap.thin_dump-0.9.0.xml.gz", []string{"--format", "xml"}},
		{"s3-bigblock-metasnap", "s3-bigblock-metasnap.metasnap.thin_dump-0.9.0.xml.gz", []string{"-m"}},
		{"s3-bigblock-metasnap", "s3-bigblock-metasnap.metasnap.thin_dump-0.9.0.xml.gz", []string{"-m=29"}},
		{"s3-bigblock-metasnap", "s3-bigblock-metasnap.metasnap.thin_dump-0.9.0.xml.gz", []string{"--metadata-snap=29"}},
	} {
		t.Run(tc.want+strings.Join(tc.flags, ""), func(t *testing.T) {
			img := kernelImage(t, tc.fixture)
			before, err := os.ReadFile(img)
			assert.NilError(t, err)
			want := referenceDump(t, tc.want)

			r := dumpRun(t, append([]string{"--metadata", img}, tc.flags...)...)
			assert.Equal(t, r.code, ExitClean, "error: %v", r.err)
			assert.Check(t, is.Equal(r.stderr, ""))
			assert.Check(t, is.Equal(r.stdout, want))

			outFile := filepath.Join(t.TempDir(), "out.xml")
			r = dumpRun(t, append([]string{"--metadata", img, "-o", outFile}, tc.flags...)...)
			assert.Equal(t, r.code, ExitClean, "error: %v", r.err)
			assert.Check(t, is.Equal(r.stdout, ""))
			got, err := os.ReadFile(outFile)
			assert.NilError(t, err)
			assert.Check(t, is.Equal(string(got), want))
			entries, err := os.ReadDir(filepath.Dir(outFile))
			assert.NilError(t, err)
			assert.Check(t, is.Len(entries, 1), "no temporary file left")

			after, err := os.ReadFile(img)
			assert.NilError(t, err)
			assert.Check(t, bytes.Equal(before, after), "input changed")
		})
	}
}

// TestDumpFormats: human_readable matches thin_dump 0.9.0 when installed;
// every format and filter has a golden.
func TestDumpFormats(t *testing.T) {
	img := kernelImage(t, "s3-bigblock-metasnap")
	for _, tc := range []struct {
		name  string
		flags []string
		ref   []string // thin_dump arguments giving the same output, if any
	}{
		{"human", []string{"--format", "human_readable"}, []string{"-f", "human_readable"}},
		{"json", []string{"--format", "json"}, nil},
		{"json-skip-mappings", []string{"-f", "json", "--skip-mappings"}, nil},
		{"dev-id", []string{"--dev-id", "9", "--dev-id", "7"}, []string{"--dev-id", "9", "--dev-id", "7"}},
		{"skip-mappings", []string{"--skip-mappings"}, []string{"--skip-mappings"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := dumpRun(t, append([]string{"--metadata", img}, tc.flags...)...)
			assert.Equal(t, r.code, ExitClean, "error: %v", r.err)
			golden.Assert(t, r.stdout, "dump-s3-"+tc.name+".golden")
			if tc.ref == nil || !onPath("thin_dump") {
				return
			}
			var ref bytes.Buffer
			cmd := exec.Command("thin_dump", append(tc.ref, img)...)
			cmd.Stdout = &ref
			assert.NilError(t, cmd.Run())
			assert.Check(t, is.Equal(r.stdout, ref.String()))
		})
	}
}

func onPath(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}

// TestDumpDamaged: a damaged shared leaf is left out of four devices; the
// rest is dumped, each skipped part is named on stderr, and the exit is 4.
func TestDumpDamaged(t *testing.T) {
	img := kernelImage(t, "s2-snapshot-tree")
	flipByte(t, img, 26)
	outFile := filepath.Join(t.TempDir(), "out.xml")
	r := dumpRun(t, "--metadata", img, "-o", outFile)
	assert.Equal(t, r.code, ExitDamage, "error: %v", r.err)
	assert.Check(t, errors.Is(r.err, errDumpDamaged))
	golden.Assert(t, r.stderr, "dump-s2-damaged-stderr.golden")
	golden.Assert(t, message(r.err), "dump-s2-damaged-status.golden")
	got, err := os.ReadFile(outFile)
	assert.NilError(t, err)
	golden.Assert(t, string(got), "dump-s2-damaged.golden")

	if onPath("thin_dump") {
		// The reference gives up on the same input.
		err := exec.Command("thin_dump", img).Run()
		assert.Check(t, err != nil)
	}
}

func TestDumpErrors(t *testing.T) {
	s2 := kernelImage(t, "s2-snapshot-tree")
	badSuper := kernelImage(t, "s1-one-empty-thin")
	flipByte(t, badSuper, 0)
	missingDir := filepath.Join(t.TempDir(), "no", "such", "dir", "out.xml")
	for _, tc := range []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"no metadata", nil, ExitUsage, "dump: no --metadata given"},
		{"bad format", []string{"--metadata", s2, "--format", "yaml"}, ExitUsage, `dump: unknown format "yaml" (want xml, human_readable or json)`},
		{"bad snap block", []string{"--metadata", s2, "--metadata-snap=x"}, ExitUsage, `invalid argument "x" for "-m, --metadata-snap" flag`},
		{"snap block as separate word", []string{"--metadata", s2, "-m", "29"}, ExitUsage, `takes no arguments, got "29"`},
		{"dev id too big", []string{"--metadata", s2, "--dev-id", "16777216"}, ExitUsage, "dump: --dev-id 16777216: thin ids are below 2^24"},
		{"unknown flag", []string{"--metadata", s2, "--repair"}, ExitUsage, "unknown flag: --repair"},
		{"missing input", []string{"--metadata", filepath.Join(t.TempDir(), "nope")}, ExitError, "cannot open the metadata: open "},
		{"not metadata", []string{"--metadata", badSuper}, ExitError, "not readable thin-pool metadata: block 0: corrupt metadata: bad checksum in superblock"},
		{"no snapshot", []string{"--metadata", s2, "-m"}, ExitError, "no metadata snapshot held"},
		{"snapshot block not a superblock", []string{"--metadata", s2, "-m=72"}, ExitError, "block 72: corrupt metadata: bad checksum: expected a superblock, found a btree node"},
		{"output dir missing", []string{"--metadata", s2, "-o", missingDir}, ExitError, "cannot create the output"},
		{"output is the input", []string{"--metadata", s2, "-o", s2}, ExitUsage, "is the metadata being dumped"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := dumpRun(t, tc.args...)
			assert.Check(t, is.Equal(r.code, tc.code), "error: %v", r.err)
			assert.Check(t, is.Contains(message(r.err), tc.msg))
			assert.Check(t, is.Equal(r.stdout, ""))
		})
	}
}

// TestDumpNoPartialFile: an operational error leaves no output file and
// no temporary file behind.
func TestDumpNoPartialFile(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out.xml")
	r := dumpRun(t, "--metadata", kernelImage(t, "s2-snapshot-tree"), "-m", "-o", out)
	assert.Equal(t, r.code, ExitError)
	entries, err := os.ReadDir(dir)
	assert.NilError(t, err)
	assert.Check(t, is.Len(entries, 0))
}

func TestDumpCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	dockerCLI, out, _ := newTestCLI(t)
	err := runDump(ctx, dockerCLI, dumpOptions{metadata: kernelImage(t, "s2-snapshot-tree"), format: "xml"})
	assert.Check(t, is.Equal(exitStatus(err), ExitCancelled))
	assert.Check(t, errors.Is(err, context.Canceled))
	assert.Check(t, !strings.Contains(out.String(), "<device"))
}
