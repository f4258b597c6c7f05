package plugin

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/storage"
	"github.com/docker/docker/client"
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
			// c3's init layer is device 20 to docker; the pool never got
			// it (and holds a device 8 docker does not know).
			p := filepath.Join(root, "devicemapper", "metadata", "40ea3dc2153808cfd6ea35eb962b7358d2561cde07781c223c2fda2c32204e0b-init")
			assert.NilError(t, os.WriteFile(p, []byte(`{"device_id":20,"size":1073741824,"transaction_id":9,"initialized":false,"deleted":false}`), 0o600))
		}},
		{name: "missing-unused", edit: func(t *testing.T, root string) {
			// docker knows device 20, which nothing uses; the pool never
			// got it: reported, harmless.
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
	res := run(t, "ls", "--metadata-snap")
	assert.Equal(t, res.code, ExitUsage)
	assert.Check(t, strings.Contains(message(res.err), "--metadata-snap needs --metadata FILE"))
	res = run(t, "ls", "--metadata", "x", "--sort", "colour")
	assert.Equal(t, res.code, ExitUsage)
	assert.Check(t, strings.Contains(message(res.err), "use id or size"))
}

// liveOwners is a running daemon that names, through GraphDriver data, the
// owners of the devices in s3's held metadata snapshot: 0 and 1.
type liveOwners struct{ *fakeEngine }

func (liveOwners) ImageInspect(_ context.Context, id string, _ ...client.ImageInspectOption) (image.InspectResponse, error) {
	return image.InspectResponse{ID: id, RepoTags: []string{"tiny:latest"},
		GraphDriver: storage.DriverData{Name: "devicemapper", Data: map[string]string{"DeviceId": "1"}}}, nil
}

func (liveOwners) ContainerInspect(_ context.Context, id string) (container.InspectResponse, error) {
	return container.InspectResponse{ContainerJSONBase: &container.ContainerJSONBase{ID: id, Name: "/c1",
		GraphDriver: storage.DriverData{Name: "devicemapper", Data: map[string]string{"DeviceId": "0"}}}}, nil
}

// TestLsPool: without --metadata, ls lists docker's pool as check finds
// it: a stopped pool's metadata file under the data root, with owners
// from docker's records; an active pool through a metadata snapshot it
// reserves and releases, with owners from the running daemon.
func TestLsPool(t *testing.T) {
	t.Run("stopped", func(t *testing.T) {
		root := fakeRoot(t)
		sys := testSystem(t, newFakeDaemon(false), nil, nil, 0)
		dockerCLI, out, errb := newTestCLI(t)
		err := runLsPool(t.Context(), dockerCLI, sys, lsOptions{root: root, format: "json", sort: "id"}, true)
		assert.NilError(t, err, errb.String())
		var rows []lsRow
		assert.NilError(t, json.Unmarshal(out.Bytes(), &rows), out.String())
		ids := []uint32{}
		for _, r := range rows {
			ids = append(ids, r.DeviceID)
		}
		assert.Check(t, is.DeepEqual(ids, []uint32{1, 2, 3, 4, 5}))
		assert.Check(t, is.Equal(rows[0].Hash, "base"))
		assert.Check(t, is.Equal(rows[0].Size, uint64(10737418240)))
		assert.Check(t, is.DeepEqual(rows[4].Findings, []string{"deleted-present"}))
	})
	t.Run("active", func(t *testing.T) {
		root := fakeRoot(t)
		api := liveOwners{&fakeEngine{
			info:       recordedInfo(t, "info-20.10.24-looplvm-vm.json", root),
			images:     []image.Summary{{ID: "sha256:aaaa"}},
			containers: []container.Summary{{ID: "cccc"}},
		}}
		d := newFakeDaemon(true)
		d.active["docker-254:16-393219-pool"] = true
		c := &fakeDM{table: loopTable, status: loopStatus(t, rwStatus)}
		sys := testSystem(t, d, api, c, 0)
		putDevice(t, sys, "7:1", "s3-bigblock-metasnap")
		dockerCLI, out, errb := newTestCLI(t)
		err := runLsPool(t.Context(), dockerCLI, sys, lsOptions{root: "/var/lib/docker", format: "{{.DeviceID}} {{.MappedBlocks}} {{.Owner}}", sort: "id"}, false)
		assert.NilError(t, err, errb.String())
		assert.Check(t, is.Equal(out.String(), "0 8 container cccc (c1)\n1 8 image layer aaaa (tiny:latest)\n"))
		assert.Check(t, is.Equal(c.reserved, 1))
		assert.Check(t, is.Equal(c.released, 1))
	})
	t.Run("active-not-root", func(t *testing.T) {
		sys, c := activePool(t, "s3-bigblock-metasnap", rwStatus)
		sys.euid = func() int { return 1000 }
		dockerCLI, _, _ := newTestCLI(t)
		err := runLsPool(t.Context(), dockerCLI, sys, lsOptions{root: "/var/lib/docker", format: "json", sort: "id"}, false)
		assert.Check(t, is.Equal(exitStatus(err), ExitError))
		assert.Check(t, is.Contains(message(err), "only root may reserve one"))
		assert.Check(t, is.Contains(message(err), "'sudo docker devmapper ls'"))
		assert.Check(t, is.Equal(c.reserved, 0))
	})
}
