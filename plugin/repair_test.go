package plugin

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/golden"
)

func TestRepairHelp(t *testing.T) {
	r := run(t, "repair", "--help")
	assert.Equal(t, r.code, ExitClean)
	golden.Assert(t, r.stdout, "repair-help.golden")
}

// demoImage is the shipped damaged sample: s2 with two data counts one too
// low and one leak.
func demoImage(t *testing.T) string {
	t.Helper()
	return gunzip(t, filepath.Join("..", "testdata", "demo", "s2-refcount.img.gz"))
}

// TestRepairDemo: the sample repairs with exit 1, the output checks clean,
// and the input is unchanged.
func TestRepairDemo(t *testing.T) {
	img := demoImage(t)
	before, err := os.ReadFile(img)
	assert.NilError(t, err)
	out := filepath.Join(t.TempDir(), "repaired.img")
	r := run(t, "repair", "--metadata", img, "-o", out)
	assert.Equal(t, r.code, ExitRepaired, "error: %v", r.err)
	assert.Equal(t, r.stderr, "")
	golden.Assert(t, strings.ReplaceAll(strings.ReplaceAll(r.stdout, img, "IN"), out, "OUT"), "repair-demo.golden")
	after, err := os.ReadFile(img)
	assert.NilError(t, err)
	assert.Check(t, string(before) == string(after), "repair -o changed its input")

	c := run(t, "check", "--metadata", out)
	assert.Equal(t, c.code, ExitClean, "check of the repaired metadata: %s", c.stdout)
}

func TestRepairExitCodes(t *testing.T) {
	dir := t.TempDir()
	topZeroed := kernelImage(t, "s2-snapshot-tree")
	zeroBlock(t, topZeroed, 72)
	superZeroed := kernelImage(t, "s2-snapshot-tree")
	zeroBlock(t, superZeroed, 0)
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string // substring
		stderr string // substring; "" means empty
	}{
		{name: "clean", args: []string{"--metadata", kernelImage(t, "s1-one-empty-thin"), "--dry-run"}, code: ExitClean, stdout: "nothing to repair"},
		{name: "dry-run", args: []string{"--metadata", demoImage(t), "--dry-run"}, code: ExitRepaired, stdout: "would be repaired"},
		{name: "in-place", args: []string{"--metadata", demoImage(t), "--in-place"}, code: ExitRepaired, stdout: "backup of the original"},
		{name: "lost-roots", args: []string{"--metadata", topZeroed, "-o", filepath.Join(dir, "x")}, code: ExitRepaired, stdout: "tree found by scan"},
		{name: "superblock-lost", args: []string{"--metadata", superZeroed, "--dry-run"}, code: ExitDamage, stdout: "give --transaction-id, --data-block-size, --nr-data-blocks"},
		{name: "superblock-lost-values-given", args: []string{"--metadata", superZeroed, "--dry-run", "--transaction-id", "42", "--data-block-size", "128", "--nr-data-blocks", "65536"},
			code: ExitRepaired, stdout: "transaction id 42 (--transaction-id)"},
		{name: "superblock-lost-values-from-dump", args: []string{"--metadata", superZeroed, "--dry-run", "--values-from", gunzip(t, filepath.Join("..", "testdata", "kernel", "s2-snapshot-tree.thin_dump-0.9.0.xml.gz"))},
			code: ExitRepaired, stdout: "transaction id 42 (--values-from "},
		{name: "values-from-missing-file", args: []string{"--metadata", superZeroed, "--dry-run", "--values-from", filepath.Join(dir, "missing.xml")},
			code: ExitError, stderr: "--values-from"},
		{name: "quiet", args: []string{"--metadata", demoImage(t), "--dry-run", "-q"}, code: ExitRepaired},
		{name: "missing-file", args: []string{"--metadata", filepath.Join(dir, "missing"), "--dry-run"}, code: ExitError, stderr: "no such file"},
		{name: "not-metadata", args: []string{"--metadata", "../go.mod", "--dry-run"}, code: ExitError, stderr: "not the data device"},
		{name: "no-mode", args: []string{"--metadata", "x"}, code: ExitUsage, stderr: "say where the repair goes"},
		{name: "two-modes", args: []string{"--metadata", "x", "-o", "y", "--in-place"}, code: ExitUsage, stderr: "exclude each other"},
		{name: "output-without-metadata", args: []string{"-o", "y"}, code: ExitUsage, stderr: "-o goes with --metadata"},
		{name: "stop-daemon-with-metadata", args: []string{"--metadata", "x", "--in-place", "--stop-daemon"}, code: ExitUsage, stderr: "go with the repair of docker's pool"},
		{name: "root-with-metadata", args: []string{"--metadata", "x", "--dry-run", "--root", "r"}, code: ExitUsage, stderr: "--root and --metadata exclude each other"},
		{name: "pool-values-without-metadata", args: []string{"--yes", "--transaction-id", "7"}, code: ExitUsage, stderr: "go with --metadata"},
		{name: "values-from-without-metadata", args: []string{"--yes", "--values-from", "pool.xml"}, code: ExitUsage, stderr: "--values-from go with --metadata"},
		{name: "backup-without-in-place", args: []string{"--metadata", "x", "--dry-run", "--backup", "b"}, code: ExitUsage, stderr: "--backup goes with --in-place"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, append([]string{"repair"}, tc.args...)...)
			assert.Equal(t, r.code, tc.code, "error: %v\nstdout: %s", r.err, r.stdout)
			if tc.stdout != "" {
				assert.Check(t, is.Contains(r.stdout, tc.stdout))
			}
			if tc.name == "quiet" {
				assert.Check(t, is.Equal(r.stdout+message(r.err), ""))
			}
			if tc.stderr == "" {
				assert.Check(t, is.Equal(r.stderr, ""))
			} else {
				assert.Check(t, is.Contains(message(r.err), tc.stderr))
			}
		})
	}
}

// TestRepairJSON: the report for scripts names the action, the verdict
// and every device.
func TestRepairJSON(t *testing.T) {
	r := run(t, "repair", "--metadata", demoImage(t), "--dry-run", "--json")
	assert.Equal(t, r.code, ExitRepaired, "error: %v", r.err)
	var v struct {
		Action  string `json:"action"`
		DryRun  bool   `json:"dry_run"`
		Devices []struct {
			ID   uint32 `json:"dev_id"`
			Kept uint64 `json:"mappings_kept"`
			Lost uint64 `json:"mappings_lost"`
		} `json:"devices"`
		DataSM struct {
			Wrong  uint64 `json:"wrong"`
			Leaked uint64 `json:"leaked"`
		} `json:"data_space_map"`
		After struct {
			Outcome string `json:"outcome"`
		} `json:"after"`
	}
	assert.NilError(t, json.Unmarshal([]byte(r.stdout), &v))
	assert.Check(t, is.Equal(v.Action, "space-maps"))
	assert.Check(t, v.DryRun)
	assert.Check(t, is.Len(v.Devices, 5))
	assert.Check(t, is.Equal(v.DataSM.Wrong+v.DataSM.Leaked, uint64(3)))
	assert.Check(t, is.Equal(v.After.Outcome, "clean"))
}

func zeroBlock(t *testing.T, path string, nr int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	assert.NilError(t, err)
	defer f.Close()
	_, err = f.WriteAt(make([]byte, 4096), nr*4096)
	assert.NilError(t, err)
}
