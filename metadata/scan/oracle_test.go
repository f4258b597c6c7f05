package scan_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/skip"

	"github.com/docker-devmapper/docker-devmapper/metadata/scan"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// reference finds thin_dump: 0.9.0 on PATH, 1.1.0 under TPT11_BIN or the
// repository's .cache/tpt11/usr/sbin.
func reference(v11 bool) string {
	if !v11 {
		p, _ := exec.LookPath("thin_dump")
		return p
	}
	dir := os.Getenv("TPT11_BIN")
	if dir == "" {
		dir = filepath.Join(thintest.Root(), ".cache", "tpt11", "usr", "sbin")
	}
	p := filepath.Join(dir, "thin_dump")
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

var devIDRe = regexp.MustCompile(`<device dev_id="(\d+)"`)

// repairedIDs runs thin_dump --repair and returns the devices it dumps.
func repairedIDs(t *testing.T, bin string, img thintest.Image, args ...string) []thin.DevID {
	t.Helper()
	p := thintest.WriteTemp(t, img)
	var out, errb bytes.Buffer
	cmd := exec.Command(bin, append(append([]string{"-r"}, args...), p)...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	assert.NilError(t, cmd.Run(), "%s: %s", bin, errb.String())
	var ids []thin.DevID
	for _, m := range devIDRe.FindAllSubmatch(out.Bytes(), -1) {
		id, err := strconv.ParseUint(string(m[1]), 10, 32)
		assert.NilError(t, err)
		ids = append(ids, thin.DevID(id))
	}
	return ids
}

// TestReferenceRepair compares the scan with the root search of thin_dump
// --repair, 0.9.0 and 1.1.0, on the same damage. Where the reference
// rolls back to an older state, the scan must list that state and mark it
// older; where it finds the newest, the scan must find the same.
func TestReferenceRepair(t *testing.T) {
	tests := []struct {
		name     string
		damage   func(img thintest.Image)
		args09   []string // values 0.9.0 demands when the superblock is gone
		args11   []string
		rollback bool // the reference resurrects deleted device 6
	}{
		{name: "top-level leaf zeroed", damage: func(img thintest.Image) { img.Zero(s2Top) }, rollback: true},
		{name: "details root zeroed", damage: func(img thintest.Image) { img.Zero(s2Details) }, rollback: true},
		{
			name:   "superblock wiped",
			damage: func(img thintest.Image) { img.Zero(0) },
			args09: []string{"--transaction-id", "42", "--data-block-size", "128", "--nr-data-blocks", "65536"},
			args11: []string{"--data-block-size", "128"},
		},
	}
	for _, v11 := range []bool{false, true} {
		bin := reference(v11)
		for _, tc := range tests {
			t.Run(tc.name+map[bool]string{false: "/0.9.0", true: "/1.1.0"}[v11], func(t *testing.T) {
				skip.If(t, bin == "", "reference thin_dump not installed")
				img := s2(t)
				tc.damage(img)
				args := tc.args09
				if v11 {
					args = tc.args11
				}
				theirs := repairedIDs(t, bin, img, args...)
				res, err := scan.Run(t.Context(), img.Reader(), scan.Options{})
				assert.NilError(t, err)
				p, i := find(res.Pairs, func(p scan.Pair) bool { return slices.Equal(p.Details.IDs, theirs) })
				assert.Assert(t, i >= 0, "no pair lists %v\n%s", theirs, describe(res))
				if tc.rollback {
					assert.Check(t, slices.Contains(theirs, 6))
					assert.Check(t, p.Stale.Older(), "pair %d/%d: %v", p.Mapping.Root, p.Details.Root, p.Stale)
					assert.Check(t, res.Roots.Mapping != p.Mapping.Root || res.Roots.MappingFrom == scan.None)
					assert.Check(t, res.Roots.Details != p.Details.Root)
					return
				}
				assert.Check(t, is.Equal(i, 0))
				assert.Check(t, is.Equal(res.Roots.Mapping, p.Mapping.Root))
				assert.Check(t, is.Equal(res.Roots.Details, p.Details.Root))
				assert.Check(t, !p.Stale.Older())
			})
		}
	}
}
