package plugin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/system"
	"github.com/docker/docker/client"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/docker-devmapper/docker-devmapper/plugin/daemon"
	"github.com/docker-devmapper/docker-devmapper/plugin/engine"
)

// engineAPIs maps the engines recorded in testdata/docker to the newest
// API version each speaks.
var engineAPIs = map[string]string{
	"1.10": "1.22", "1.12": "1.24", "1.13": "1.25", "17.03": "1.26", "17.05": "1.29",
	"18.06": "1.38", "18.09": "1.39", "19.03": "1.40", "20.10": "1.41", "23.0": "1.42", "unknown": "1.35",
}

// oldEngine serves one recorded `docker info` answer the way that engine
// would: only at its own API version, refusing newer ones. A root other
// than "" replaces the answer's data root in every path of it.
func oldEngine(t *testing.T, path, root string) (*client.Client, system.Info) {
	t.Helper()
	name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	version := strings.Split(strings.TrimPrefix(name, "info-"), "-")[0]
	api := ""
	for eng, v := range engineAPIs {
		if version == eng || strings.HasPrefix(version, eng+".") {
			api = v
		}
	}
	assert.Assert(t, api != "", "no API version known for %s", name)

	b, err := os.ReadFile(path)
	assert.NilError(t, err)
	var info system.Info
	if strings.HasSuffix(path, ".json") {
		assert.NilError(t, json.Unmarshal(b, &info))
	} else {
		ti := engine.ParseInfoText(string(b))
		info = system.Info{ServerVersion: ti.ServerVersion, Driver: ti.Driver, DockerRootDir: ti.RootDir, DriverStatus: ti.DriverStatus}
	}
	if root != "" {
		// The data root the answer names, or the one its loop files sit
		// under; /var/lib/docker for a direct-lvm answer that says neither.
		was := info.DockerRootDir
		for _, kv := range info.DriverStatus {
			if r, ok := strings.CutSuffix(kv[1], "/devicemapper/devicemapper/metadata"); ok && was == "" {
				was = r
			}
		}
		if was == "" {
			was = "/var/lib/docker"
		}
		info.DockerRootDir = strings.Replace(info.DockerRootDir, was, root, 1)
		for i, kv := range info.DriverStatus {
			info.DriverStatus[i][1] = strings.Replace(kv[1], was, root, 1)
		}
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Api-Version", api)
		switch r.URL.Path {
		case "/_ping":
			_, _ = w.Write([]byte("OK"))
		case "/v" + api + "/info":
			_ = json.NewEncoder(w).Encode(info)
		default:
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"message":"client version is too new"}`))
		}
	}))
	t.Cleanup(srv.Close)
	c, err := client.NewClientWithOpts(client.WithHost("tcp://"+strings.TrimPrefix(srv.URL, "http://")), client.WithAPIVersionNegotiation())
	assert.NilError(t, err)
	t.Cleanup(func() { c.Close() })
	return c, info
}

// TestOldEngines runs status and check, start to end, against every real
// answer recorded from engines 1.10 to 23.0, served at the API version
// each engine speaks. The pool is active; device-mapper is a fake whose
// metadata device holds kernel-written metadata with a held snapshot.
func TestOldEngines(t *testing.T) {
	for _, path := range recordedAnswers(t) {
		name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
		t.Run(name, func(t *testing.T) {
			api, info := oldEngine(t, path, "")
			facts, err := engine.FromInfo(info.ServerVersion, info.Driver, info.DockerRootDir, info.DriverStatus)
			assert.NilError(t, err)
			pool := facts.Pool.PoolName

			d := newFakeDaemon(true)
			d.active[pool] = true
			c := &fakeDM{table: loopTable, status: loopStatus(t, "8 60/1024 0/1024 - rw discard_passdown queue_if_no_space - 1024")}
			sys := testSystem(t, d, api, c, 0)
			putDevice(t, sys, "7:1", "s3-bigblock-metasnap")

			dockerCLI, out, errb := newTestCLI(t)
			err = runStatus(t.Context(), dockerCLI, sys, statusOptions{})
			assert.NilError(t, err)
			got := out.String()
			assert.Check(t, is.Contains(got, "storage driver: devicemapper (docker "+info.ServerVersion+", from the daemon)"))
			assert.Check(t, is.Contains(got, "pool:           "+pool+" ("))
			assert.Check(t, is.Contains(got, "(0.0%, from the kernel)"))
			assert.Check(t, is.Contains(got, "health:         ok\n"))
			if strings.Contains(name, "looplvm") {
				assert.Check(t, is.Contains(got, "(loop-lvm), active"))
			} else {
				assert.Check(t, is.Contains(got, "(direct-lvm), active"))
			}

			out.Reset()
			errb.Reset()
			err = runCheckPool(t.Context(), dockerCLI, sys, checkOptions{})
			assert.NilError(t, err)
			assert.Check(t, is.Equal(out.String(), "transaction id 7, time 1, 2 devices, 16 mappings\nclean\n"))
			assert.Check(t, is.Contains(errb.String(), "checking the active pool "+pool+" through a metadata snapshot"))
			assert.Check(t, is.Equal(c.reserved, 1))
			assert.Check(t, is.Equal(c.released, 1))
		})
	}
}

// recordedAnswers lists the recorded `docker info` answers.
func recordedAnswers(t *testing.T) []string {
	t.Helper()
	var paths []string
	for _, pat := range []string{"info-*.txt", "info-*.json"} {
		m, err := filepath.Glob(filepath.Join("..", "testdata", "docker", pat))
		assert.NilError(t, err)
		paths = append(paths, m...)
	}
	assert.Assert(t, len(paths) >= 14, "recorded answers missing")
	return paths
}

// TestOldEnginesRepair runs repair --stop-daemon --yes, start to end,
// against every recorded answer: the daemon runs and names its pool and
// data root; repair stops it, finds the pool again under the data root (a
// loop-lvm pool whose metadata is the damaged sample), repairs it and
// starts the daemon, which answers again. A pool given to docker
// (direct-lvm) is refused before docker is stopped.
func TestOldEnginesRepair(t *testing.T) {
	for _, path := range recordedAnswers(t) {
		name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
		t.Run(name, func(t *testing.T) {
			h := newPoolHost(t, false)
			api, info := oldEngine(t, path, h.root)
			facts, err := engine.FromInfo(info.ServerVersion, info.Driver, info.DockerRootDir, info.DriverStatus)
			assert.NilError(t, err)
			h.daemon.state = daemon.State{Running: true, PIDs: []int{812}, Why: "dockerd runs as process 812", Service: "active", Socket: "active", Manager: "systemd"}
			h.daemon.active[facts.Pool.PoolName] = true
			// The kernel names the active pool's metadata by its device.
			c := &fakeDM{table: loopTable, status: loopStatus(t, "42 60/1024 0/1024 - rw discard_passdown queue_if_no_space - 1024")}
			sys := testSystem(t, h.daemon, api, c, 0)
			sys.retry = time.Millisecond

			dockerCLI, out, errb := resetCLI(t, "", false)
			err = runRepairPool(t.Context(), dockerCLI, sys, repairOptions{yes: true, stopDaemon: true})
			if !facts.Pool.LoopLVM() {
				assert.Check(t, is.Equal(exitStatus(err), ExitError))
				assert.Check(t, is.Contains(message(err), "was given to docker"))
				assert.Check(t, is.Len(h.daemon.calls, 0), "docker was stopped for a pool repair cannot do")
				h.unchanged(t)
				return
			}
			assert.Check(t, is.Equal(exitStatus(err), ExitRepaired), "stdout:\n%s\nstderr:\n%s%s", out, errb, message(err))
			assert.Check(t, is.DeepEqual(h.daemon.calls, []string{"stop", "start"}))
			assert.Check(t, is.Contains(errb.String(), "docker runs again on the pool "+facts.Pool.PoolName))
			h.repaired(t)
		})
	}
}
