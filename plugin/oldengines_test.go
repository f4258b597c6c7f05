package plugin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
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
	return oldEngineWith(t, path, root, nil)
}

// oldState is what an old engine holds beyond its info answer: containers
// and images it lists and removes at its own API version, and whether it
// has restarted on a new pool.
type oldState struct {
	mu         sync.Mutex
	containers []map[string]any
	images     []map[string]any
	removed    []string
	fresh      bool // restarted: info names a new, empty pool
}

// oldEngineWith is oldEngine, also answering st's lists and removals.
func oldEngineWith(t *testing.T, path, root string, st *oldState) (*client.Client, system.Info) {
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
		v := "/v" + api
		switch {
		case r.URL.Path == "/_ping":
			_, _ = w.Write([]byte("OK"))
		case r.URL.Path == v+"/info":
			answer := info
			if st != nil {
				st.mu.Lock()
				if st.fresh {
					answer = freshInfo(info)
				}
				st.mu.Unlock()
			}
			_ = json.NewEncoder(w).Encode(answer)
		case st != nil && r.Method == http.MethodGet && r.URL.Path == v+"/containers/json":
			st.mu.Lock()
			_ = json.NewEncoder(w).Encode(st.containers)
			st.mu.Unlock()
		case st != nil && r.Method == http.MethodGet && r.URL.Path == v+"/images/json":
			st.mu.Lock()
			_ = json.NewEncoder(w).Encode(st.images)
			st.mu.Unlock()
		case st != nil && r.Method == http.MethodDelete && strings.HasPrefix(r.URL.Path, v+"/containers/"):
			st.mu.Lock()
			st.removed = append(st.removed, "container "+strings.TrimPrefix(r.URL.Path, v+"/containers/"))
			st.mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		case st != nil && r.Method == http.MethodDelete && strings.HasPrefix(r.URL.Path, v+"/images/"):
			id := strings.TrimPrefix(r.URL.Path, v+"/images/")
			st.mu.Lock()
			st.removed = append(st.removed, "image "+id)
			st.mu.Unlock()
			_ = json.NewEncoder(w).Encode([]map[string]string{{"Deleted": id}})
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

// freshInfo is info after a restart on a new pool: another name, and
// little space used.
func freshInfo(info system.Info) system.Info {
	info.DriverStatus = append([][2]string(nil), info.DriverStatus...)
	for i, kv := range info.DriverStatus {
		switch kv[0] {
		case "Pool Name":
			info.DriverStatus[i][1] = kv[1] + "-new"
		case "Data Space Used":
			info.DriverStatus[i][1] = "11.76 MB"
		case "Metadata Space Used":
			info.DriverStatus[i][1] = "1.221 MB"
		}
	}
	return info
}

// TestOldEnginesReset runs reset --remove-images --yes, start to end,
// against every recorded answer, each engine serving its lists and
// removals at its own API version: the container and the image go through
// the Engine API, docker stops, devicemapper/ moves aside, and docker
// comes up on a new pool. A pool given to docker (direct-lvm) is refused
// before anything is removed.
func TestOldEnginesReset(t *testing.T) {
	for _, path := range recordedAnswers(t) {
		name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
		t.Run(name, func(t *testing.T) {
			root := fakeRoot(t)
			st := &oldState{
				containers: []map[string]any{{"Id": "c1c1c1c1c1c1", "Names": []string{"/c1"}, "Image": "tiny:latest", "ImageID": "sha256:aaaa", "State": "exited"}},
				images:     []map[string]any{{"Id": "sha256:aaaa", "RepoTags": []string{"tiny:latest"}, "Size": 4404019}},
			}
			api, info := oldEngineWith(t, path, root, st)
			facts, err := engine.FromInfo(info.ServerVersion, info.Driver, info.DockerRootDir, info.DriverStatus)
			assert.NilError(t, err)
			d := newFakeDaemon(true)
			d.state.Service, d.state.Socket, d.state.Manager = "active", "active", "systemd"
			d.active[facts.Pool.PoolName] = true
			d.onStart = func() { st.mu.Lock(); st.fresh = true; st.mu.Unlock() }
			sys := testSystem(t, d, api, nil, 0)

			dockerCLI, out, _ := resetCLI(t, "", false)
			err = runReset(t.Context(), dockerCLI, sys, resetOptions{removeImages: true, yes: true})
			switch {
			case !facts.Pool.LoopLVM():
				assert.Check(t, is.Equal(exitStatus(err), ExitError))
				assert.Check(t, is.Contains(message(err), "reset handles docker's own loop-lvm pool only"))
				assert.Check(t, is.Len(st.removed, 0))
				assert.Check(t, is.Len(d.calls, 0))
			default:
				// Answers that leave the data root out are handled too:
				// the loop files sit under it.
				assert.Check(t, err == nil, "stdout:\n%s\n%s", out, message(err))
				assert.Check(t, is.DeepEqual(st.removed, []string{"container c1c1c1c1c1c1", "image sha256:aaaa"}))
				assert.Check(t, is.DeepEqual(d.calls, []string{"stop", "start"}))
				assert.Check(t, is.Contains(out.String(), "docker runs with a new pool "+facts.Pool.PoolName+"-new"))
				assert.Check(t, exists(filepath.Join(root, "devicemapper.reset-20261126T023000Z", "devicemapper", "metadata")))
			}
		})
	}
}
