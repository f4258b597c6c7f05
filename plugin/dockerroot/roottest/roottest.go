// Package roottest builds docker data roots for tests, around the records
// a real docker 20.10 daemon on devicemapper wrote (testdata/dockervm).
package roottest

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/plugin/dockerroot"
)

// Dir is testdata/dockervm in the repository.
func Dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "testdata", "dockervm")
}

// Root lays out a docker data root holding the records a real
// 20.10 daemon wrote (testdata/dockervm/dm-metadata.txt), plus a layer
// store naming their owners: layer c8a3d… is tiny:latest's only layer,
// 0a73be… the layer tiny:c1 adds; the three containers c1, c2, c3.
func Root(t *testing.T) string {
	root := t.TempDir()
	md := filepath.Join(root, "devicemapper", "metadata")
	assert.NilError(t, os.MkdirAll(md, 0o700))
	f, err := os.Open(filepath.Join(Dir(), "dm-metadata.txt"))
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

// Pool lists the devices of the recorded pool's dump.
func Pool(t *testing.T) (uint64, []dockerroot.PoolDevice) {
	b, err := os.ReadFile(filepath.Join(Dir(), "thin-dump.xml"))
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
