package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/docker-devmapper/docker-devmapper/plugin/daemon"
	"github.com/docker-devmapper/docker-devmapper/plugin/dm"
	"github.com/docker-devmapper/docker-devmapper/plugin/engine"
)

// Pool layouts.
const (
	layoutLoop   = "loop-lvm"   // sparse files on loop devices under docker's root, docker's default
	layoutDirect = "direct-lvm" // a thin pool on block devices (dm.thinpooldev or dm.directlvm_device)
)

// located is where status, check and reset found docker's storage.
type located struct {
	Root      string       // docker's data root that was searched
	Daemon    daemon.State // from processes, pidfile and systemd; never the API
	DaemonErr error        // the daemon's state could not be read
	// Asked is set when the daemon ran and its API was asked (GET /info);
	// AskErr says why it did not answer.
	Asked  bool
	AskErr error
	Engine *engine.Facts // the daemon's answer, nil when not asked or no answer
	// Driver is the storage driver: the daemon's answer, or offline what
	// daemon.json or the folders under Root say; "" when unknown.
	Driver string
	Pool   *poolLocation // nil when no devicemapper pool was found
	// RootErr says why Root could not be searched (other than its not
	// existing): most often, permission denied to a user who is not root.
	RootErr error
}

// poolLocation is one devicemapper pool and where its parts are.
type poolLocation struct {
	Name           string // device-mapper name; "" when it cannot be known
	Layout         string // layoutLoop or layoutDirect
	DataFile       string // loop-lvm: the sparse file behind the data device
	MetadataFile   string // loop-lvm: the sparse file behind the metadata device
	DataDevice     string // the data device as docker names it, if it does
	MetadataDevice string // the metadata device as docker names it, if it does
	Metadata       string // what to read the metadata from
	Active         bool   // the pool's device-mapper device exists
	ActiveErr      error  // whether it is active could not be found out

	// Kernel is the live pool's table and status, when it is active and
	// could be asked; KernelErr says why it could not.
	Kernel    *kernelPool
	KernelErr error

	Docker *deviceSet // docker's own records of its thin devices, if found
}

// kernelPool is what device-mapper says about an active pool.
type kernelPool struct {
	Table  dm.PoolTable
	Status dm.PoolStatus
}

// deviceSet is what docker keeps under ROOT/devicemapper/metadata: one
// JSON file per thin device, and the transaction in progress.
type deviceSet struct {
	Dir               string `json:"dir"`
	Devices           int    `json:"devices"`             // thin devices docker knows, deleted ones included
	Deleted           int    `json:"deleted"`             // of those, marked deleted (awaiting deferred deletion)
	OpenTransactionID uint64 `json:"open_transaction_id"` // transaction-metadata: the transaction docker last opened
	BaseFilesystem    string `json:"base_filesystem"`     // deviceset-metadata: the base device's filesystem
}

// errNotRoot: the job needs root.
var errNotRoot = errors.New("this needs root")

// locate finds docker's storage. If dockerd runs, it asks the daemon (GET
// /info); otherwise, and if the daemon does not answer, it looks under
// root. It never talks to the API of a daemon that is not running. An
// active pool is then asked for its status through device-mapper, which
// needs root.
func locate(ctx context.Context, sys *machine, root string) *located {
	loc := &located{}
	cfg := readDaemonConfig(sys.daemonConfig)
	switch {
	case root != "":
		loc.Root = root
	case cfg.DataRoot != "":
		loc.Root = cfg.DataRoot
	default:
		loc.Root = defaultRoot
	}

	loc.Daemon, loc.DaemonErr = sys.daemon.State(ctx)
	if loc.DaemonErr == nil && loc.Daemon.Running {
		loc.Asked = true
		facts, err := engine.Ask(ctx, sys.api())
		if err != nil {
			loc.AskErr = err
		} else {
			loc.Engine, loc.Driver = facts, facts.Driver
			if r := rootOf(facts); root == "" && r != "" {
				loc.Root = r
			}
			if facts.Pool != nil {
				loc.Pool = fromEngine(facts.Pool)
			}
		}
	}
	if loc.Engine == nil {
		loc.Driver, loc.Pool, loc.RootErr = fromRoot(loc.Root, cfg)
	}
	if loc.Pool == nil {
		return loc
	}
	loc.Pool.Docker = readDeviceSet(filepath.Join(loc.Root, "devicemapper", "metadata"))
	p := loc.Pool
	if p.Name == "" {
		return loc
	}
	p.Active, p.ActiveErr = sys.daemon.PoolActive(p.Name)
	if p.Active {
		p.Kernel, p.KernelErr = askKernel(sys, p.Name)
		if p.Kernel != nil {
			// The device the kernel really uses beats any name for it.
			p.Metadata = sys.blockDevice(p.Kernel.Table.MetadataDev)
			// A pool given to docker is named without its devices; the
			// kernel's table names them.
			if p.MetadataDevice == "" && p.MetadataFile == "" {
				p.MetadataDevice = p.Metadata
			}
			if p.DataDevice == "" && p.DataFile == "" && p.Kernel.Table.DataDev != "" {
				p.DataDevice = sys.blockDevice(p.Kernel.Table.DataDev)
			}
		}
	}
	return loc
}

// rootOf is the daemon's data root as its answer gives it, or "": some
// answers (as users posted them) leave it out, but a loop-lvm pool's
// files sit under it.
func rootOf(facts *engine.Facts) string {
	if facts.RootDir != "" || facts.Pool == nil {
		return facts.RootDir
	}
	const under = "/devicemapper/devicemapper/metadata"
	if r, ok := strings.CutSuffix(facts.Pool.MetadataLoopFile, under); ok && r != "" {
		return r
	}
	return ""
}

// fromEngine turns the daemon's view of its pool into a location.
func fromEngine(d *engine.DeviceMapper) *poolLocation {
	p := &poolLocation{
		Name:           d.PoolName,
		Layout:         layoutDirect,
		DataFile:       d.DataLoopFile,
		MetadataFile:   d.MetadataLoopFile,
		DataDevice:     d.DataFile,
		MetadataDevice: d.MetadataFile,
		Metadata:       d.MetadataPath(),
	}
	if d.LoopLVM() {
		p.Layout = layoutLoop
	}
	return p
}

// fromRoot finds the storage driver and the pool of a daemon that is not
// running, the way dockerd itself would on its next start: devicemapper
// keeps its state in ROOT/devicemapper; loop-lvm pools are named after
// the device and inode of that folder; direct-lvm pools set up by docker
// (dm.directlvm_device) are always docker-thinpool; pools given with
// dm.thinpooldev are named only in dockerd's configuration.
func fromRoot(root string, cfg daemonConfig) (string, *poolLocation, error) {
	dir := filepath.Join(root, "devicemapper")
	fi, err := os.Stat(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return cfg.Driver, nil, err
	}
	if err != nil || !fi.IsDir() {
		if cfg.Driver != "" {
			return cfg.Driver, nil, nil
		}
		return driverFromFolders(root), nil, nil
	}
	if cfg.Driver != "" && cfg.Driver != "devicemapper" {
		// Left over from an earlier setup; the daemon now uses another.
		return cfg.Driver, nil, nil
	}
	p := &poolLocation{Layout: layoutDirect}
	data := filepath.Join(dir, "devicemapper", "data")
	meta := filepath.Join(dir, "devicemapper", "metadata")
	if exists(data) || exists(meta) {
		p.Layout, p.DataFile, p.MetadataFile, p.Metadata = layoutLoop, data, meta, meta
		var st unix.Stat_t
		if unix.Stat(dir, &st) == nil {
			p.Name = fmt.Sprintf("docker-%d:%d-%d-pool", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
		}
	}
	if exists(filepath.Join(dir, "setup-config.json")) {
		p.Name = "docker-thinpool" // what dm.directlvm_device makes
	}
	if cfg.ThinPoolDev != "" {
		p.Layout = layoutDirect
		p.Name = strings.TrimPrefix(cfg.ThinPoolDev, "/dev/mapper/")
	}
	if cfg.MetadataDev != "" {
		p.MetadataDevice, p.Metadata = cfg.MetadataDev, cfg.MetadataDev
	}
	if cfg.DataDev != "" {
		p.DataDevice = cfg.DataDev
	}
	if p.Metadata == "" && p.Name != "" {
		// LVM's name for a thin pool's hidden metadata volume.
		p.Metadata = "/dev/mapper/" + p.Name + "_tmeta"
	}
	return "devicemapper", p, nil
}

// driverFromFolders names the driver whose state folder sits under root,
// as dockerd picks its "prior driver"; "" when there is none, or several.
func driverFromFolders(root string) string {
	var found []string
	for _, d := range []string{"overlay2", "fuse-overlayfs", "btrfs", "zfs", "aufs", "overlay", "vfs"} {
		if fi, err := os.Stat(filepath.Join(root, d)); err == nil && fi.IsDir() {
			found = append(found, d)
		}
	}
	if len(found) == 1 {
		return found[0]
	}
	return ""
}

// daemonConfig is what the plugin reads from dockerd's configuration file.
type daemonConfig struct {
	DataRoot    string
	Driver      string
	ThinPoolDev string
	MetadataDev string
	DataDev     string
	BlockSize   string // dm.blocksize, as written
}

// readDaemonConfig reads daemon.json; a missing or unreadable file gives
// the zero config: dockerd's defaults.
func readDaemonConfig(path string) daemonConfig {
	var raw struct {
		DataRoot    string   `json:"data-root"`
		Graph       string   `json:"graph"` // before 17.05
		Driver      string   `json:"storage-driver"`
		StorageOpts []string `json:"storage-opts"`
	}
	b, err := os.ReadFile(path)
	if err != nil || json.Unmarshal(b, &raw) != nil {
		return daemonConfig{}
	}
	c := daemonConfig{DataRoot: raw.DataRoot, Driver: raw.Driver}
	if c.DataRoot == "" {
		c.DataRoot = raw.Graph
	}
	for _, o := range raw.StorageOpts {
		k, v, _ := strings.Cut(o, "=")
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "dm.thinpooldev":
			c.ThinPoolDev = strings.TrimSpace(v)
		case "dm.metadatadev":
			c.MetadataDev = strings.TrimSpace(v)
		case "dm.datadev":
			c.DataDev = strings.TrimSpace(v)
		case "dm.blocksize":
			c.BlockSize = strings.TrimSpace(v)
		}
	}
	return c
}

// readDeviceSet reads docker's per-device records in dir, or returns nil
// when there are none.
func readDeviceSet(dir string) *deviceSet {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	ds := &deviceSet{Dir: dir}
	for _, e := range ents {
		name := e.Name()
		path := filepath.Join(dir, name)
		switch {
		case e.IsDir(), strings.HasPrefix(name, "."), strings.HasSuffix(name, ".migrated"):
		case name == "transaction-metadata":
			var tx struct {
				OpenTransactionID uint64 `json:"open_transaction_id"`
			}
			if readJSON(path, &tx) == nil {
				ds.OpenTransactionID = tx.OpenTransactionID
			}
		case name == "deviceset-metadata":
			var set struct {
				BaseDeviceFilesystem string
			}
			if readJSON(path, &set) == nil {
				ds.BaseFilesystem = set.BaseDeviceFilesystem
			}
		default:
			var dev struct {
				Deleted bool `json:"deleted"`
			}
			if readJSON(path, &dev) == nil {
				ds.Devices++
				if dev.Deleted {
					ds.Deleted++
				}
			}
		}
	}
	return ds
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// askKernel reads an active pool's table and status through device-mapper.
func askKernel(sys *machine, name string) (*kernelPool, error) {
	if sys.euid() != 0 {
		return nil, errNotRoot
	}
	c, err := sys.openDM()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	tab, st, err := c.Pool(name)
	if err != nil {
		return nil, err
	}
	return &kernelPool{Table: tab, Status: st}, nil
}

// poolProblem says why the command named verb has no pool to work on in
// loc, or returns nil when there is one whose metadata is known.
func poolProblem(loc *located, verb string, quiet bool) error {
	const giveFile = "or give the metadata device, or a copy of it, with --metadata FILE"
	p := loc.Pool
	switch {
	case p == nil && loc.AskErr != nil:
		return operational(fmt.Errorf("dockerd runs but did not answer, and no devicemapper storage was found under %s: %w", loc.Root, loc.AskErr),
			"check that you may use docker (DOCKER_HOST, membership of the docker group), "+giveFile, quiet)
	case p == nil && loc.RootErr != nil:
		return operational(fmt.Errorf("cannot look for docker's storage: %w", loc.RootErr),
			"run it as root ('sudo docker devmapper "+verb+"'), "+giveFile, quiet)
	case p == nil && loc.Engine != nil:
		return operational(fmt.Errorf("the daemon uses the %s storage driver, not devicemapper: there is no thin pool to %s", loc.Driver, verb),
			"to "+verb+" pool metadata from elsewhere, give it with --metadata FILE", quiet)
	case p == nil:
		return operational(fmt.Errorf("dockerd is not running and there is no devicemapper storage under %s", loc.Root),
			"if docker keeps its data elsewhere, give --root DIR; "+giveFile, quiet)
	case p.Metadata == "":
		return operational(errors.New("the pool's metadata device is not known: docker names a dm.thinpooldev pool only in its configuration"),
			"start docker so that it can be asked, "+giveFile, quiet)
	}
	return nil
}
