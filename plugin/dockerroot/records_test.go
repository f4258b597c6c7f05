package dockerroot_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/golden"

	"github.com/docker-devmapper/docker-devmapper/plugin/dockerroot"
	"github.com/docker-devmapper/docker-devmapper/plugin/dockerroot/roottest"
)

func TestLoadRecorded(t *testing.T) {
	rec, err := dockerroot.Load(roottest.Root(t))
	assert.NilError(t, err)
	assert.Equal(t, len(rec.Devices), 9)
	assert.Equal(t, rec.Devices[0].Hash, "base")
	assert.Check(t, rec.Transaction != nil && rec.Transaction.OpenTransactionID == 9)
	var b strings.Builder
	for _, d := range rec.Devices {
		o, ok := rec.Owners[d.Hash]
		owner := "unknown"
		if ok {
			owner = o.String()
		}
		b.WriteString(strconv.Itoa(int(d.DeviceID)) + " " + owner + "\n")
	}
	golden.Assert(t, b.String(), "owners.golden")
}

func TestReconcile(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(t *testing.T, root string, trans *uint64, pool *[]dockerroot.PoolDevice)
		kinds []dockerroot.Kind
	}{
		{name: "consistent"},
		{name: "orphan", edit: func(t *testing.T, root string, trans *uint64, pool *[]dockerroot.PoolDevice) {
			*pool = append(*pool, dockerroot.PoolDevice{ID: 12, TransactionID: 9})
		}, kinds: []dockerroot.Kind{dockerroot.Orphan}},
		{name: "missing", edit: func(t *testing.T, root string, trans *uint64, pool *[]dockerroot.PoolDevice) {
			*pool = slicesDelete(*pool, 7)
		}, kinds: []dockerroot.Kind{dockerroot.Missing}},
		{name: "deleted-present", edit: func(t *testing.T, root string, trans *uint64, pool *[]dockerroot.PoolDevice) {
			p := filepath.Join(root, "devicemapper", "metadata", "bd1a97c99310e0911348c450b8a676fe70dfa3164393a07f0df5b78ca477f918")
			assert.NilError(t, os.WriteFile(p, []byte(`{"device_id":4,"size":1073741824,"transaction_id":4,"initialized":false,"deleted":true}`), 0o600))
		}, kinds: []dockerroot.Kind{dockerroot.DeletedPresent}},
		{name: "rollback", edit: func(t *testing.T, root string, trans *uint64, pool *[]dockerroot.PoolDevice) {
			*trans = 8 // metadata restored from before the last create
		}, kinds: []dockerroot.Kind{dockerroot.RecordAhead, dockerroot.Rollback}},
		{name: "rollback-base", edit: func(t *testing.T, root string, trans *uint64, pool *[]dockerroot.PoolDevice) {
			// docker's transaction names the base device by the empty hash.
			p := filepath.Join(root, "devicemapper", "metadata", "transaction-metadata")
			assert.NilError(t, os.WriteFile(p, []byte(`{"open_transaction_id":10,"device_hash":"","device_id":1}`), 0o600))
		}, kinds: []dockerroot.Kind{dockerroot.Rollback}},
		{name: "transaction-behind", edit: func(t *testing.T, root string, trans *uint64, pool *[]dockerroot.PoolDevice) {
			*trans = 10
		}, kinds: []dockerroot.Kind{dockerroot.TransactionBehind}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := roottest.Root(t)
			trans, pool := roottest.Pool(t)
			if tc.edit != nil {
				tc.edit(t, root, &trans, &pool)
			}
			rec, err := dockerroot.Load(root)
			assert.NilError(t, err)
			fs := dockerroot.Reconcile(rec, trans, pool)
			var kinds []dockerroot.Kind
			var b strings.Builder
			for _, f := range fs {
				kinds = append(kinds, f.Kind)
				b.WriteString(f.String() + "\n")
			}
			assert.DeepEqual(t, kinds, tc.kinds)
			golden.Assert(t, b.String(), "reconcile-"+tc.name+".golden")
		})
	}
}

func slicesDelete(pool []dockerroot.PoolDevice, id uint32) []dockerroot.PoolDevice {
	var out []dockerroot.PoolDevice
	for _, d := range pool {
		if d.ID != id {
			out = append(out, d)
		}
	}
	return out
}

func TestLoadErrors(t *testing.T) {
	_, err := dockerroot.Load(t.TempDir())
	assert.ErrorIs(t, err, dockerroot.ErrNoRecords)

	root := roottest.Root(t)
	p := filepath.Join(root, "devicemapper", "metadata", "base")
	assert.NilError(t, os.WriteFile(p, []byte("{garbage"), 0o600))
	_, err = dockerroot.Load(root)
	assert.Check(t, is.ErrorContains(err, "base"))
}

func TestChainID(t *testing.T) {
	// The layer store's ids for a one- and a two-layer image.
	assert.Equal(t, dockerroot.ChainID([]string{"sha256:aa"}), "sha256:aa")
	assert.Equal(t, dockerroot.ChainID(nil), "")
	assert.Check(t, is.Len(dockerroot.ChainID([]string{"sha256:aa", "sha256:bb"}), 71))
}
