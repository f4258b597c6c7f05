package engine_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/docker/docker/api/types/system"
	"github.com/docker/docker/client"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/golden"

	"github.com/docker-devmapper/docker-devmapper/plugin/engine"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		err  string
	}{
		{in: "65.54kB", want: 65540},
		{in: "65.54 kB", want: 65540},
		{in: "524.3 kB", want: 524300},
		{in: "1.074GB", want: 1074000000},
		{in: "5.701 TB", want: 5701000000000},
		{in: "0 B", want: 0},
		{in: "17.43MB", want: 17430000},
		{in: "2MiB", want: 2 << 20},
		{in: "", err: "is not a size"},
		{in: "GB", err: "is not a size"},
		{in: "12 parsecs", err: "unknown unit"},
		{in: "1e400GB", err: "unknown unit"},
		{in: "99999999999999999999EB", err: "too large"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := engine.ParseSize(tc.in)
			if tc.err != "" {
				assert.ErrorContains(t, err, tc.err)
				return
			}
			assert.NilError(t, err)
			assert.Equal(t, got, tc.want)
		})
	}
}

// recorded loads a real `docker info` answer from testdata/docker: the
// text output, or the JSON of GET /info.
func recorded(t *testing.T, path string) *engine.Facts {
	t.Helper()
	b, err := os.ReadFile(path)
	assert.NilError(t, err)
	if strings.HasSuffix(path, ".json") {
		var info system.Info
		assert.NilError(t, json.Unmarshal(b, &info))
		f, err := engine.FromInfo(info.ServerVersion, info.Driver, info.DockerRootDir, info.DriverStatus)
		assert.NilError(t, err)
		return f
	}
	ti := engine.ParseInfoText(string(b))
	f, err := engine.FromInfo(ti.ServerVersion, ti.Driver, ti.RootDir, ti.DriverStatus)
	assert.NilError(t, err)
	return f
}

func recordings(t *testing.T) []string {
	var out []string
	for _, pat := range []string{"*.txt", "*.json"} {
		m, err := filepath.Glob(filepath.Join("..", "..", "testdata", "docker", "info-"+pat))
		assert.NilError(t, err)
		out = append(out, m...)
	}
	assert.Assert(t, len(out) >= 14, "recorded answers missing")
	return out
}

func summary(f *engine.Facts) string {
	var b strings.Builder
	p := f.Pool
	fmt.Fprintf(&b, "engine %q driver %q root %q\n", f.ServerVersion, f.Driver, f.RootDir)
	fmt.Fprintf(&b, "pool %q blocksize %d base %d fs %q loop-lvm %v\n", p.PoolName, p.PoolBlocksize, p.BaseDeviceSize, p.BackingFilesystem, p.LoopLVM())
	fmt.Fprintf(&b, "metadata %q (file %q, loop file %q)\n", p.MetadataPath(), p.MetadataFile, p.MetadataLoopFile)
	fmt.Fprintf(&b, "data space %d/%d avail %d; metadata space %d/%d avail %d; min free %d\n",
		p.Data.Used, p.Data.Total, p.Data.Available, p.Metadata.Used, p.Metadata.Total, p.Metadata.Available, p.MinFreeSpace)
	fmt.Fprintf(&b, "udev %v deferred removal %v deletion %v deleted %d library %q\n",
		p.UdevSync, p.DeferredRemoval, p.DeferredDeletion, p.DeferredDeleted, p.LibraryVersion)
	for _, u := range p.Unknown {
		fmt.Fprintf(&b, "unknown %q = %q\n", u[0], u[1])
	}
	return b.String()
}

// TestRecordedAnswers reads every real answer users posted, from engine
// 1.10 to 23.0, both size spellings, loop-lvm and direct-lvm.
func TestRecordedAnswers(t *testing.T) {
	for _, path := range recordings(t) {
		name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
		t.Run(name, func(t *testing.T) {
			f := recorded(t, path)
			assert.Equal(t, f.Driver, "devicemapper")
			assert.Assert(t, f.Pool != nil)
			p := f.Pool
			assert.Check(t, p.PoolBlocksize >= 65536 && p.PoolBlocksize%65536 == 0, "blocksize %d", p.PoolBlocksize)
			assert.Check(t, p.Metadata.Total > 0 && p.Data.Total > 0)
			assert.Check(t, p.MetadataPath() != "")
			if strings.Contains(name, "looplvm") {
				assert.Check(t, p.LoopLVM())
				assert.Check(t, strings.HasSuffix(p.MetadataPath(), "/metadata"), p.MetadataPath())
			} else {
				assert.Check(t, !p.LoopLVM())
			}
			golden.Assert(t, summary(f), name+".golden")
		})
	}
}

func TestNotDeviceMapper(t *testing.T) {
	f, err := engine.FromInfo("28.2.2", "overlay2", "/var/lib/docker", [][2]string{{"Backing Filesystem", "extfs"}})
	assert.NilError(t, err)
	assert.Check(t, f.Pool == nil)

	_, err = engine.FromInfo("1.12.6", "devicemapper", "", [][2]string{{"Pool Blocksize", "65.54 kB"}})
	assert.ErrorContains(t, err, "no Pool Name")
	_, err = engine.FromInfo("1.12.6", "devicemapper", "", [][2]string{{"Pool Name", "p"}, {"Data Space Used", "lots"}})
	assert.ErrorContains(t, err, "Data Space Used")
}

// apiVersions maps the engines in testdata/docker to the API they speak.
var apiVersions = map[string]string{
	"1.10": "1.22", "1.12": "1.24", "1.13": "1.25", "17.03": "1.26", "17.05": "1.29",
	"18.06": "1.38", "18.09": "1.39", "19.03": "1.40", "20.10": "1.41", "23.0": "1.42", "unknown": "1.35",
}

func apiFor(name string) string {
	v := strings.Split(strings.TrimPrefix(name, "info-"), "-")[0]
	for eng, api := range apiVersions {
		if v == eng || strings.HasPrefix(v, eng+".") {
			return api
		}
	}
	return ""
}

// TestAskOldEngines replays each recorded answer from an httptest Engine
// that speaks only its own API version, through the docker client with
// version negotiation, as the CLI sets it up.
func TestAskOldEngines(t *testing.T) {
	for _, path := range recordings(t) {
		name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
		api := apiFor(name)
		assert.Assert(t, api != "", "no API version known for %s", name)
		t.Run(name, func(t *testing.T) {
			want := recorded(t, path)
			info := system.Info{ServerVersion: want.ServerVersion, Driver: want.Driver, DockerRootDir: want.RootDir}
			b, err := os.ReadFile(path)
			assert.NilError(t, err)
			if strings.HasSuffix(path, ".json") {
				assert.NilError(t, json.Unmarshal(b, &info))
			} else {
				info.DriverStatus = engine.ParseInfoText(string(b)).DriverStatus
			}
			var mu sync.Mutex
			var paths []string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				paths = append(paths, r.URL.Path)
				mu.Unlock()
				w.Header().Set("Api-Version", api)
				switch r.URL.Path {
				case "/_ping":
					_, _ = w.Write([]byte("OK"))
				case "/v" + api + "/info":
					_ = json.NewEncoder(w).Encode(info)
				default:
					http.Error(w, `{"message":"client version is too new"}`, http.StatusBadRequest)
				}
			}))
			defer srv.Close()
			c, err := client.NewClientWithOpts(client.WithHost("tcp://"+strings.TrimPrefix(srv.URL, "http://")), client.WithAPIVersionNegotiation())
			assert.NilError(t, err)
			defer c.Close()
			got, err := engine.Ask(t.Context(), c)
			assert.NilError(t, err)
			assert.DeepEqual(t, got, want)
			assert.Check(t, is.Contains(paths, "/v"+api+"/info"))
		})
	}
}
