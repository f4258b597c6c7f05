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

	"github.com/docker-devmapper/docker-devmapper/plugin/dockerroot/roottest"
)

// recordedPool restores the pool a real docker 20.10 left behind
// (testdata/dockervm/thin-dump.xml) into a metadata file.
func recordedPool(t *testing.T) string {
	out := filepath.Join(t.TempDir(), "metadata")
	res := run(t, "restore", "-i", filepath.Join(roottest.Dir(), "thin-dump.xml"), "-o", out, "--size", "16MiB")
	assert.Equal(t, res.code, ExitClean, message(res.err))
	return out
}

func TestLs(t *testing.T) {
	meta := recordedPool(t)
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, root string)
		args []string
		code int
	}{
		{name: "table"},
		{name: "sort-size", args: []string{"--sort", "size"}},
		{name: "template", args: []string{"--format", "{{.DeviceID}} {{.Hash}} {{.MappedBlocks}}/{{.ExclusiveBlocks}}"}},
		{name: "orphan", edit: func(t *testing.T, root string) {
			assert.NilError(t, os.Remove(filepath.Join(root, "devicemapper", "metadata", "0a73be878311d739f962885bfefad1e6da27369cc89026b17ae068b02ac10f86")))
		}},
		{name: "missing", code: ExitDamage, edit: func(t *testing.T, root string) {
			// docker knows device 20; the pool never got it.
			p := filepath.Join(root, "devicemapper", "metadata", "feedface")
			assert.NilError(t, os.WriteFile(p, []byte(`{"device_id":20,"size":1073741824,"transaction_id":9,"initialized":false,"deleted":false}`), 0o600))
		}},
		{name: "rollback", code: ExitDamage, edit: func(t *testing.T, root string) {
			p := filepath.Join(root, "devicemapper", "metadata", "transaction-metadata")
			assert.NilError(t, os.WriteFile(p, []byte(`{"open_transaction_id":10,"device_hash":"40ea3dc2153808cfd6ea35eb962b7358d2561cde07781c223c2fda2c32204e0b","device_id":9}`), 0o600))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := roottest.Root(t)
			if tc.edit != nil {
				tc.edit(t, root)
			}
			res := run(t, append([]string{"ls", "--metadata", meta, "--root", root}, tc.args...)...)
			assert.Equal(t, res.code, tc.code, message(res.err))
			golden.Assert(t, res.stdout, "ls-"+tc.name+".golden")
		})
	}
}

func TestLsJSON(t *testing.T) {
	meta := recordedPool(t)
	res := run(t, "ls", "--metadata", meta, "--root", roottest.Root(t), "--format", "json")
	assert.Equal(t, res.code, ExitClean, message(res.err))
	var rows []map[string]any
	assert.NilError(t, json.Unmarshal([]byte(res.stdout), &rows))
	assert.Equal(t, len(rows), 9)
	for _, key := range []string{"device_id", "mapped_blocks", "exclusive_blocks", "shared_blocks", "owner"} {
		_, ok := rows[0][key]
		assert.Check(t, ok, "key %s missing", key)
	}
	assert.Check(t, is.Equal(rows[0]["owner"].(map[string]any)["kind"], "base"))

	// A data root that is not there is an error; --root= lists the pool
	// alone, owners null.
	res = run(t, "ls", "--metadata", meta, "--root", filepath.Join(t.TempDir(), "none"), "--format", "json")
	assert.Equal(t, res.code, ExitError)
	assert.Check(t, is.Contains(message(res.err), "--root"))
	res = run(t, "ls", "--metadata", meta, "--root=", "--format", "json")
	assert.Equal(t, res.code, ExitClean, message(res.err))
	rows = nil
	assert.NilError(t, json.Unmarshal([]byte(res.stdout), &rows))
	assert.Equal(t, len(rows), 9)
	assert.Check(t, rows[0]["owner"] == nil)
}

func TestLsUsage(t *testing.T) {
	res := run(t, "ls")
	assert.Equal(t, res.code, ExitUsage)
	res = run(t, "ls", "--metadata", "x", "--sort", "colour")
	assert.Equal(t, res.code, ExitUsage)
	assert.Check(t, strings.Contains(message(res.err), "use id or size"))
}
