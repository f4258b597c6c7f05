package dockerroot_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/golden"

	"github.com/docker-devmapper/docker-devmapper/plugin/dockerroot"
	"github.com/docker-devmapper/docker-devmapper/plugin/dockerroot/roottest"
)

// The hash of container c3's device, 9, the last docker created in the
// recorded root: the device of its open transaction.
const c3Hash = "40ea3dc2153808cfd6ea35eb962b7358d2561cde07781c223c2fda2c32204e0b"

// tree reads every file under root: contents and mode, by relative path.
func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	assert.NilError(t, filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		st, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out[filepath.ToSlash(rel)] = st.Mode().String() + " " + string(b)
		return nil
	}))
	return out
}

func kindsOf(fs []dockerroot.Finding) []dockerroot.Kind {
	var out []dockerroot.Kind
	for _, f := range fs {
		out = append(out, f.Kind)
	}
	return out
}

// TestPlanFixes plans and applies the fixes for each kind of finding on
// docker-shaped data roots: what changes, what the files hold after, the
// backup, and what Reconcile finds afterwards.
func TestPlanFixes(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, root string, trans *uint64, pool *[]dockerroot.PoolDevice)
		// changes: the fixed kinds; orphans; left: the kinds left.
		changes []dockerroot.Kind
		orphans []uint32
		left    []dockerroot.Kind
		// open: the transaction record's open_transaction_id after Apply.
		open string
	}{
		{name: "consistent", open: "9"},
		{name: "orphan", edit: func(t *testing.T, root string, trans *uint64, pool *[]dockerroot.PoolDevice) {
			*pool = append(*pool, dockerroot.PoolDevice{ID: 12, TransactionID: 9})
		}, orphans: []uint32{12}, open: "9"},
		{name: "missing-layer", edit: func(t *testing.T, root string, trans *uint64, pool *[]dockerroot.PoolDevice) {
			*pool = slicesDelete(*pool, 7)
		}, left: []dockerroot.Kind{dockerroot.Missing}, open: "9"},
		{name: "missing-container", edit: func(t *testing.T, root string, trans *uint64, pool *[]dockerroot.PoolDevice) {
			*pool = slicesDelete(*pool, 6)
		}, left: []dockerroot.Kind{dockerroot.Missing}, open: "9"},
		{name: "missing-base", edit: func(t *testing.T, root string, trans *uint64, pool *[]dockerroot.PoolDevice) {
			*pool = slicesDelete(*pool, 1)
		}, left: []dockerroot.Kind{dockerroot.Missing}, open: "9"},
		{name: "deleted-present", edit: func(t *testing.T, root string, trans *uint64, pool *[]dockerroot.PoolDevice) {
			p := filepath.Join(root, "devicemapper", "metadata", "bd1a97c99310e0911348c450b8a676fe70dfa3164393a07f0df5b78ca477f918")
			assert.NilError(t, os.WriteFile(p, []byte(`{"device_id":4,"size":1073741824,"transaction_id":4,"initialized":false,"deleted":true}`), 0o600))
		}, left: []dockerroot.Kind{dockerroot.DeletedPresent}, open: "9"},
		{name: "rollback", edit: func(t *testing.T, root string, trans *uint64, pool *[]dockerroot.PoolDevice) {
			*trans = 8 // metadata restored from before the last create
		}, changes: []dockerroot.Kind{dockerroot.Rollback}, left: []dockerroot.Kind{dockerroot.RecordAhead}, open: "8"},
		{name: "rollback-not-in-pool", edit: func(t *testing.T, root string, trans *uint64, pool *[]dockerroot.PoolDevice) {
			// The create never reached the pool: docker's roll-back only
			// removes its record, which is right.
			*trans = 8
			*pool = slicesDelete(*pool, 9)
		}, left: []dockerroot.Kind{dockerroot.Rollback}, open: "9"},
		{name: "rollback-unrecorded", edit: func(t *testing.T, root string, trans *uint64, pool *[]dockerroot.PoolDevice) {
			// Docker's record of the device is lost, but container c3
			// uses it: the device is kept, and not offered as an orphan.
			*trans = 8
			assert.NilError(t, os.Remove(filepath.Join(root, "devicemapper", "metadata", c3Hash)))
		}, changes: []dockerroot.Kind{dockerroot.Rollback}, left: []dockerroot.Kind{dockerroot.Orphan}, open: "8"},
		{name: "rollback-unrecorded-unowned", edit: func(t *testing.T, root string, trans *uint64, pool *[]dockerroot.PoolDevice) {
			// Nothing names the device at all: kept, and an orphan the
			// user may drop.
			*trans = 8
			assert.NilError(t, os.Remove(filepath.Join(root, "devicemapper", "metadata", c3Hash)))
			assert.NilError(t, os.RemoveAll(filepath.Join(root, "image", "devicemapper", "layerdb", "mounts", strings.Repeat("e", 64))))
		}, changes: []dockerroot.Kind{dockerroot.Rollback}, orphans: []uint32{9}, open: "8"},
		{name: "transaction-behind", edit: func(t *testing.T, root string, trans *uint64, pool *[]dockerroot.PoolDevice) {
			*trans = 10
		}, changes: []dockerroot.Kind{dockerroot.TransactionBehind}, open: "10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := roottest.Root(t)
			trans, pool := roottest.Pool(t)
			if tc.edit != nil {
				tc.edit(t, root, &trans, &pool)
			}
			record := filepath.Join(root, filepath.FromSlash(dockerroot.TransactionFile))
			assert.NilError(t, os.Chmod(record, 0o640))
			rec, err := dockerroot.Load(root)
			assert.NilError(t, err)
			plan := dockerroot.PlanFixes(rec, trans, pool)

			var changed []dockerroot.Kind
			for _, c := range plan.Changes {
				changed = append(changed, c.Kind)
				assert.Check(t, is.Equal(c.File, dockerroot.TransactionFile))
				assert.Check(t, is.Equal(c.From, uint64(9)))
				assert.Check(t, is.Equal(c.To, trans))
			}
			var left []dockerroot.Kind
			for _, l := range plan.Left {
				left = append(left, l.Kind)
				assert.Check(t, l.Advice != "", "no advice for %s", l.Kind)
			}
			assert.Check(t, is.DeepEqual(changed, tc.changes))
			assert.Check(t, is.DeepEqual(plan.Orphans, tc.orphans))
			assert.Check(t, is.DeepEqual(left, tc.left))
			assert.Check(t, is.Equal(plan.Empty(), tc.changes == nil && tc.orphans == nil && tc.left == nil))
			var b strings.Builder
			assert.NilError(t, plan.WriteText(&b))
			golden.Assert(t, b.String(), "fix-"+tc.name+".golden")

			before := tree(t, root)
			backup := filepath.Join(t.TempDir(), "backup")
			assert.NilError(t, plan.Apply(root, backup))
			after := tree(t, root)

			// Only the transaction record changes, and only its open
			// transaction id; its mode stays.
			want := before
			if tc.changes != nil {
				want = map[string]string{}
				for k, v := range before {
					want[k] = v
				}
				want[dockerroot.TransactionFile] = "-rw-r----- " + `{"open_transaction_id":` + tc.open + `,"device_hash":"` + c3Hash + `","device_id":9}`
			}
			assert.Check(t, is.DeepEqual(after, want))
			if tc.changes == nil {
				_, err := os.Stat(backup)
				assert.Check(t, os.IsNotExist(err), "a backup directory was made with nothing to change")
			} else {
				assert.Check(t, is.DeepEqual(tree(t, backup), map[string]string{dockerroot.TransactionFile: before[dockerroot.TransactionFile]}))
			}

			// Docker will roll nothing back that the pool holds now, and
			// a second plan has nothing left to change.
			rec, err = dockerroot.Load(root)
			assert.NilError(t, err)
			again := dockerroot.Reconcile(rec, trans, pool)
			for _, f := range again {
				assert.Check(t, f.Kind != dockerroot.TransactionBehind, f.Message)
				assert.Check(t, f.Kind != dockerroot.Rollback || !f.Severe, f.Message)
			}
			wantKinds := slices.Clone(tc.left)
			for range tc.orphans {
				wantKinds = append(wantKinds, dockerroot.Orphan)
			}
			slices.Sort(wantKinds)
			gotKinds := kindsOf(again)
			slices.Sort(gotKinds)
			assert.Check(t, is.DeepEqual(gotKinds, wantKinds))
			assert.Check(t, is.Len(dockerroot.PlanFixes(rec, trans, pool).Changes, 0))
		})
	}
}

// TestApplyRefusals: Apply changes nothing when the record changed since
// the plan, when a backup is in the way, or without a backup directory.
func TestApplyRefusals(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before func(t *testing.T, root, backup string)
		backup bool
		want   error
		errMsg string
	}{
		{name: "record-changed", before: func(t *testing.T, root, backup string) {
			p := filepath.Join(root, filepath.FromSlash(dockerroot.TransactionFile))
			assert.NilError(t, os.WriteFile(p, []byte(`{"open_transaction_id":10,"device_hash":"x","device_id":10}`), 0o600))
		}, backup: true, want: dockerroot.ErrStale},
		{name: "backup-exists", before: func(t *testing.T, root, backup string) {
			p := filepath.Join(backup, filepath.FromSlash(dockerroot.TransactionFile))
			assert.NilError(t, os.MkdirAll(filepath.Dir(p), 0o700))
			assert.NilError(t, os.WriteFile(p, []byte("older"), 0o600))
		}, backup: true, want: dockerroot.ErrBackupExists},
		{name: "no-backup-dir", errMsg: "no backup directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := roottest.Root(t)
			_, pool := roottest.Pool(t)
			rec, err := dockerroot.Load(root)
			assert.NilError(t, err)
			plan := dockerroot.PlanFixes(rec, 8, pool)
			assert.Assert(t, is.Len(plan.Changes, 1))
			backup := ""
			if tc.backup {
				backup = filepath.Join(t.TempDir(), "backup")
			}
			if tc.before != nil {
				tc.before(t, root, backup)
			}
			before := tree(t, root)
			var backupBefore map[string]string
			if backup != "" {
				if _, err := os.Stat(backup); err == nil {
					backupBefore = tree(t, backup)
				}
			}
			err = plan.Apply(root, backup)
			if tc.want != nil {
				assert.Check(t, is.ErrorIs(err, tc.want))
			} else {
				assert.Check(t, is.ErrorContains(err, tc.errMsg))
			}
			assert.Check(t, is.DeepEqual(tree(t, root), before))
			if backup != "" {
				if backupBefore == nil {
					_, err := os.Stat(backup)
					assert.Check(t, os.IsNotExist(err))
				} else {
					assert.Check(t, is.DeepEqual(tree(t, backup), backupBefore))
				}
			}
		})
	}
}
