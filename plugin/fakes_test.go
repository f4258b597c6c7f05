package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/system"
	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/plugin/daemon"
	"github.com/docker-devmapper/docker-devmapper/plugin/dm"
)

// fakeDaemon plays dockerd's process and service: Stop and Start change
// what State says, and can be told to fail or to leave the pool active.
type fakeDaemon struct {
	mu        sync.Mutex
	state     daemon.State
	stateErr  error
	active    map[string]bool
	activeErr error
	stopErr   error
	startErr  error
	keepPool  bool   // Stop leaves the pools active
	keepAlive bool   // Stop leaves the process running
	onStart   func() // called by a successful Start
	calls     []string
}

func newFakeDaemon(running bool) *fakeDaemon {
	d := &fakeDaemon{active: map[string]bool{}}
	if running {
		d.state = daemon.State{Running: true, PIDs: []int{812}, Why: "dockerd runs as process 812"}
	}
	return d
}

func (d *fakeDaemon) State(context.Context) (daemon.State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state, d.stateErr
}

func (d *fakeDaemon) PoolActive(pool string) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.active[pool], d.activeErr
}

func (d *fakeDaemon) Stop(context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, "stop")
	if d.stopErr != nil {
		return d.stopErr
	}
	if !d.keepAlive {
		d.state = daemon.State{Service: "inactive", Socket: "inactive"}
	}
	if !d.keepPool {
		clear(d.active)
	}
	return nil
}

func (d *fakeDaemon) Start(context.Context) error {
	d.mu.Lock()
	d.calls = append(d.calls, "start")
	if d.startErr != nil {
		d.mu.Unlock()
		return d.startErr
	}
	d.state = daemon.State{Running: true, PIDs: []int{913}, Why: "dockerd runs as process 913", Service: "active", Socket: "active", Manager: "systemd"}
	d.mu.Unlock()
	if d.onStart != nil {
		d.onStart()
	}
	return nil
}

// fakeDM plays device-mapper for one pool.
type fakeDM struct {
	table       dm.PoolTable
	status      dm.PoolStatus
	poolErr     error
	reserveErr  error
	reserveHeld bool // a failing reserve still leaves a snapshot held, as a kernel may
	releaseErr  error
	reserved    int
	released    int
	closed      int
}

func (c *fakeDM) Pool(string) (dm.PoolTable, dm.PoolStatus, error) {
	return c.table, c.status, c.poolErr
}

func (c *fakeDM) ReserveSnapshot(string) (uint64, error) {
	if c.reserveErr != nil {
		if c.reserveHeld {
			c.reserved++
			c.status.HeldRoot = 533
		}
		return 0, c.reserveErr
	}
	c.reserved++
	return 29, nil
}

func (c *fakeDM) ReleaseSnapshot(string) error {
	c.released++
	if c.releaseErr == nil {
		c.status.HeldRoot = 0
	}
	return c.releaseErr
}

func (c *fakeDM) Close() error { c.closed++; return nil }

// loopTable is the table docker gives a loop-lvm pool: metadata on
// loop1, data on loop0, 64 KiB blocks.
var loopTable = dm.PoolTable{MetadataDev: "7:1", DataDev: "7:0", DataBlockSize: 128, LowWaterMark: 32768, Features: []string{"skip_block_zeroing"}}

func loopStatus(t *testing.T, line string) dm.PoolStatus {
	t.Helper()
	st, err := dm.ParsePoolStatus(line)
	assert.NilError(t, err)
	return st
}

// fakeEngine answers the Engine API calls the plugin makes and records
// what it was asked to remove.
type fakeEngine struct {
	mu         sync.Mutex
	info       system.Info
	infoErr    error
	containers []container.Summary
	images     []image.Summary
	listErr    error
	removeErr  map[string]error // by id
	removed    []string
}

func (e *fakeEngine) Info(context.Context) (system.Info, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.info, e.infoErr
}

func (e *fakeEngine) ImageList(_ context.Context, _ image.ListOptions) ([]image.Summary, error) {
	return e.images, e.listErr
}

func (e *fakeEngine) ContainerList(_ context.Context, _ container.ListOptions) ([]container.Summary, error) {
	return e.containers, e.listErr
}

func (e *fakeEngine) ImageRemove(_ context.Context, id string, _ image.RemoveOptions) ([]image.DeleteResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.removeErr[id]; err != nil {
		return nil, err
	}
	e.removed = append(e.removed, "image "+id)
	return []image.DeleteResponse{{Deleted: id}}, nil
}

func (e *fakeEngine) ContainerRemove(_ context.Context, id string, _ container.RemoveOptions) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.removeErr[id]; err != nil {
		return err
	}
	e.removed = append(e.removed, "container "+id)
	return nil
}

func (e *fakeEngine) setInfo(info system.Info) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.info = info
}

// errNotFound is what the client returns for a missing object.
var errNotFound = cerrdefs.ErrNotFound

// testSystem is a machine made of fakes. Nothing of the real machine is
// read: daemon.json and /dev/block point into the test's directory.
func testSystem(t *testing.T, d *fakeDaemon, api engineAPI, c *fakeDM, euid int) *machine {
	t.Helper()
	dir := t.TempDir()
	return &machine{
		daemon: d,
		api: func() engineAPI {
			if api == nil {
				t.Error("the Engine API was asked, though the daemon does not run")
				return &fakeEngine{infoErr: errors.New("no daemon")}
			}
			return api
		},
		openDM: func() (dmControl, error) {
			if c == nil {
				return nil, errors.New("opening the device-mapper control node: open /dev/mapper/control: no such file or directory")
			}
			return c, nil
		},
		euid:         func() int { return euid },
		now:          func() time.Time { return time.Date(2026, 11, 26, 2, 30, 0, 0, time.UTC) },
		daemonConfig: filepath.Join(dir, "daemon.json"),
		retry:        time.Millisecond,
		devBlock:     filepath.Join(dir, "dev-block"),
		sysDevBlock:  filepath.Join(dir, "sys-dev-block"),
		dev:          filepath.Join(dir, "dev"),
		freeSpace:    func(string) (uint64, error) { return 1 << 40, nil },
	}
}

// putDevice places a kernel-written metadata image as /dev/block/MAJ:MIN.
func putDevice(t *testing.T, sys *machine, majMin, fixture string) string {
	t.Helper()
	assert.NilError(t, os.MkdirAll(sys.devBlock, 0o755))
	dst := filepath.Join(sys.devBlock, majMin)
	assert.NilError(t, os.Rename(kernelImage(t, fixture), dst))
	return dst
}

// fakeRoot lays out a data root as docker's devicemapper driver does with
// loop-lvm: the sparse data and metadata files (the metadata written by a
// kernel, s2: transaction 42) and docker's per-device records.
func fakeRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	dmDir := filepath.Join(root, "devicemapper")
	assert.NilError(t, os.MkdirAll(filepath.Join(dmDir, "devicemapper"), 0o700))
	assert.NilError(t, os.MkdirAll(filepath.Join(dmDir, "metadata"), 0o700))
	assert.NilError(t, os.MkdirAll(filepath.Join(dmDir, "mnt"), 0o700))
	assert.NilError(t, os.Rename(kernelImage(t, "s2-snapshot-tree"), filepath.Join(dmDir, "devicemapper", "metadata")))
	data, err := os.Create(filepath.Join(dmDir, "devicemapper", "data"))
	assert.NilError(t, err)
	assert.NilError(t, data.Truncate(65536*65536))
	assert.NilError(t, data.Close())
	records := map[string]string{
		"base": `{"device_id":1,"size":10737418240,"transaction_id":1,"initialized":true,"deleted":false}`,
		"3f1c0c8d5e2b9a7f6e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f":      `{"device_id":2,"size":10737418240,"transaction_id":2,"initialized":false,"deleted":false}`,
		"9c2d1e0f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d-init": `{"device_id":3,"size":10737418240,"transaction_id":3,"initialized":false,"deleted":false}`,
		"9c2d1e0f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d":      `{"device_id":4,"size":10737418240,"transaction_id":4,"initialized":false,"deleted":false}`,
		"5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f":      `{"device_id":5,"size":10737418240,"transaction_id":41,"initialized":false,"deleted":true}`,
		"deviceset-metadata":   `{"next_device_id":6,"BaseDeviceUUID":"033b9637-8300-4555-8f71-6b12076859e1","BaseDeviceFilesystem":"xfs"}`,
		"transaction-metadata": `{"open_transaction_id":42,"device_hash":"","device_id":5}`,
		".tmp123456":           `{"half written`,
	}
	for name, body := range records {
		assert.NilError(t, os.WriteFile(filepath.Join(dmDir, "metadata", name), []byte(body), 0o600))
	}
	return root
}

// rootMetadata is the metadata file of a fakeRoot.
func rootMetadata(root string) string {
	return filepath.Join(root, "devicemapper", "devicemapper", "metadata")
}

// setNeedsCheck sets or clears the needs_check flag in the superblock of
// the metadata at path, resealing it as the kernel would.
func setNeedsCheck(t *testing.T, path string, on bool) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	assert.NilError(t, err)
	defer f.Close()
	b := make([]byte, block.Size)
	_, err = f.ReadAt(b, 0)
	assert.NilError(t, err)
	s := thin.ParseSuperblock(b)
	if on {
		s.Flags |= thin.FlagNeedsCheck
	} else {
		s.Flags &^= thin.FlagNeedsCheck
	}
	s.Encode(b, 0)
	_, err = f.WriteAt(b, 0)
	assert.NilError(t, err)
}

// recordedInfo loads a real GET /info answer from testdata/docker and
// moves every path under /var/lib/docker to root.
func recordedInfo(t *testing.T, name, root string) system.Info {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", "docker", name))
	assert.NilError(t, err)
	var info system.Info
	assert.NilError(t, json.Unmarshal(b, &info))
	if root != "" {
		info.DockerRootDir = strings.Replace(info.DockerRootDir, "/var/lib/docker", root, 1)
		for i, kv := range info.DriverStatus {
			info.DriverStatus[i][1] = strings.Replace(kv[1], "/var/lib/docker", root, 1)
		}
	}
	return info
}

// setDriverStatus replaces the value of one DriverStatus key.
func setDriverStatus(info *system.Info, key, value string) {
	for i, kv := range info.DriverStatus {
		if kv[0] == key {
			info.DriverStatus[i][1] = value
		}
	}
}

var poolNameRE = regexp.MustCompile(`docker-\d+:\d+-\d+-pool`)

// normalize makes output independent of the test's directories and of
// the device and inode the pool's name is made of.
// Other temporary directories become TMP.
func normalize(s string, dirs map[string]string) string {
	for dir, name := range dirs {
		if dir != "" {
			s = strings.ReplaceAll(s, dir, name)
		}
	}
	s = tempDirRE.ReplaceAllString(s, "TMP")
	return poolNameRE.ReplaceAllString(s, "docker-MAJ:MIN-INODE-pool")
}

var tempDirRE = regexp.MustCompile(regexp.QuoteMeta(os.TempDir()) + `/Test[^/\s"]*/\d+`)

// offlinePool is the name docker gives the pool of a fakeRoot.
func offlinePool(t *testing.T, root string) string {
	t.Helper()
	_, p, err := fromRoot(root, daemonConfig{})
	assert.NilError(t, err)
	assert.Assert(t, p != nil)
	return p.Name
}

// contextCancelled is a context cancelled before use, as by Ctrl-C.
func contextCancelled(t *testing.T) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	return ctx, cancel
}
