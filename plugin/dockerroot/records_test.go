package dockerroot_test

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/golden"

	"github.com/docker-devmapper/docker-devmapper/plugin/dockerroot"
)

const recorded = "../../testdata/dockervm"

// recordedRoot lays out a docker data root holding the records a real
// 20.10 daemon wrote (testdata/dockervm/dm-metadata.txt), plus a layer
// store naming their owners: layer c8a3d… is tiny:latest's only layer,
// 0a73be… the layer tiny:c1 adds; the three containers c1, c2, c3.
func recordedRoot(t *testing.T) string {
	root := t.TempDir()
	md := filepath.Join(root, "devicemapper", "metadata")
	assert.NilError(t, os.MkdirAll(md, 0o700))
	f, err := os.Open(filepath.Join(recorded, "dm-metadata.txt"))
	assert.NilError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	name := ""
	for sc.Scan() {
		line := sc.Text()
		if n, ok := strings.CutPrefix(line, "== "); ok {
			name = n
			continue
		}
		assert.NilError(t, os.WriteFile(filepath.Join(md, name), []byte(line), 0o600))
	}
	store := filepath.Join(root, "image", "devicemapper")
	write := func(p, s string) {
		assert.NilError(t, os.MkdirAll(filepath.Dir(p), 0o700))
		assert.NilError(t, os.WriteFile(p, []byte(s), 0o600))
	}
	base := "sha256:" + strings.Repeat("1", 64)
	added := "sha256:" + strings.Repeat("2", 64)
	top := dockerroot.ChainID([]string{base, added})
	write(filepath.Join(store, "layerdb", "sha256", strings.TrimPrefix(base, "sha256:"), "cache-id"), "c8a3d1190ce3dd24a21a3a0ed2ccadf403554aa8299254f9b6f3907b67e04916")
	write(filepath.Join(store, "layerdb", "sha256", strings.TrimPrefix(top, "sha256:"), "cache-id"), "0a73be878311d739f962885bfefad1e6da27369cc89026b17ae068b02ac10f86")
	cfg := func(diffs ...string) string {
		b, _ := json.Marshal(map[string]any{"rootfs": map[string]any{"type": "layers", "diff_ids": diffs}})
		return string(b)
	}
	write(filepath.Join(store, "imagedb", "content", "sha256", strings.Repeat("a", 64)), cfg(base))
	write(filepath.Join(store, "imagedb", "content", "sha256", strings.Repeat("b", 64)), cfg(base, added))
	write(filepath.Join(store, "repositories.json"), `{"Repositories":{"tiny":{"tiny:latest":"sha256:`+strings.Repeat("a", 64)+`","tiny:c1":"sha256:`+strings.Repeat("b", 64)+`"}}}`)
	for _, c := range []struct{ id, hash, name string }{
		{strings.Repeat("c", 64), "bd1a97c99310e0911348c450b8a676fe70dfa3164393a07f0df5b78ca477f918", "c1"},
		{strings.Repeat("d", 64), "03aef4e32bd6d1f34e8b322b4908dbeaacd43754273132c3f518bf609e02e9b3", "c2"},
		{strings.Repeat("e", 64), "40ea3dc2153808cfd6ea35eb962b7358d2561cde07781c223c2fda2c32204e0b", "c3"},
	} {
		write(filepath.Join(store, "layerdb", "mounts", c.id, "mount-id"), c.hash)
		write(filepath.Join(store, "layerdb", "mounts", c.id, "init-id"), c.hash+"-init\n")
		write(filepath.Join(root, "containers", c.id, "config.v2.json"), `{"Name":"/`+c.name+`"}`)
	}
	return root
}

// recordedPool lists the devices of the recorded pool's dump.
func recordedPool(t *testing.T) (uint64, []dockerroot.PoolDevice) {
	b, err := os.ReadFile(filepath.Join(recorded, "thin-dump.xml"))
	assert.NilError(t, err)
	trans := regexp.MustCompile(`<superblock [^>]*transaction="(\d+)"`).FindSubmatch(b)
	poolTrans, _ := strconv.ParseUint(string(trans[1]), 10, 64)
	var out []dockerroot.PoolDevice
	for _, m := range regexp.MustCompile(`<device dev_id="(\d+)"[^>]* transaction="(\d+)"`).FindAllSubmatch(b, -1) {
		id, _ := strconv.ParseUint(string(m[1]), 10, 32)
		tr, _ := strconv.ParseUint(string(m[2]), 10, 64)
		out = append(out, dockerroot.PoolDevice{ID: uint32(id), TransactionID: tr})
	}
	return poolTrans, out
}

func TestLoadRecorded(t *testing.T) {
	rec, err := dockerroot.Load(recordedRoot(t))
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
		{name: "transaction-behind", edit: func(t *testing.T, root string, trans *uint64, pool *[]dockerroot.PoolDevice) {
			*trans = 10
		}, kinds: []dockerroot.Kind{dockerroot.TransactionBehind}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := recordedRoot(t)
			trans, pool := recordedPool(t)
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

	root := recordedRoot(t)
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
