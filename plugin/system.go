package plugin

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/docker/cli/cli/command"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"

	"github.com/docker-devmapper/docker-devmapper/plugin/daemon"
	"github.com/docker-devmapper/docker-devmapper/plugin/dm"
	"github.com/docker-devmapper/docker-devmapper/plugin/engine"
)

// defaultRoot is docker's data root unless dockerd runs with --data-root.
const defaultRoot = "/var/lib/docker"

// defaultDaemonConfig is where dockerd reads its configuration file.
const defaultDaemonConfig = "/etc/docker/daemon.json"

// engineAPI is every Engine API call the plugin makes. The docker CLI's
// client satisfies it; tests pass small fakes or a client pointed at an
// httptest server.
type engineAPI interface {
	engine.InfoClient
	ImageList(ctx context.Context, options image.ListOptions) ([]image.Summary, error)
	ImageRemove(ctx context.Context, id string, options image.RemoveOptions) ([]image.DeleteResponse, error)
	ContainerList(ctx context.Context, options container.ListOptions) ([]container.Summary, error)
	ContainerRemove(ctx context.Context, id string, options container.RemoveOptions) error
}

// daemonHost finds, stops and starts dockerd without touching its API;
// *daemon.Host is the real one.
type daemonHost interface {
	State(ctx context.Context) (daemon.State, error)
	PoolActive(pool string) (bool, error)
	Stop(ctx context.Context) error
	Start(ctx context.Context) error
}

// dmControl is the part of device-mapper the plugin uses; *dm.Control is
// the real one.
type dmControl interface {
	Pool(name string) (dm.PoolTable, dm.PoolStatus, error)
	ReserveSnapshot(pool string) (uint64, error)
	ReleaseSnapshot(pool string) error
	Close() error
}

// machine is everything outside this process that status, check and reset
// touch: the daemon's process and service, its API, device-mapper, and who
// we run as. Tests replace each part.
type machine struct {
	daemon daemonHost
	// api gives the Engine API client. It is called only once the daemon
	// is known to run: creating the docker CLI's client pings the API
	// socket, and a ping can start a socket-activated daemon.
	api    func() engineAPI
	openDM func() (dmControl, error)
	euid   func() int
	now    func() time.Time
	// daemonConfig is dockerd's configuration file, read for the storage
	// options of a pool that is named nowhere else.
	daemonConfig string
	// retry is how long reset waits between attempts to reach a starting
	// daemon.
	retry time.Duration
	// devBlock holds a node per block device, named MAJOR:MINOR, where
	// udev makes them; sysDevBlock names each device's node otherwise.
	devBlock    string
	sysDevBlock string
	dev         string
	// freeSpace is how many bytes the file system holding dir has free
	// for root.
	freeSpace func(dir string) (uint64, error)
}

// newSystem is the real machine, with the docker CLI's API client.
func newSystem(dockerCLI command.Cli) *machine {
	return &machine{
		daemon: &daemon.Host{},
		api:    func() engineAPI { return dockerCLI.Client() },
		openDM: func() (dmControl, error) {
			c, err := dm.Open()
			if err != nil {
				return nil, err
			}
			return c, nil
		},
		euid:         os.Geteuid,
		now:          time.Now,
		daemonConfig: defaultDaemonConfig,
		retry:        time.Second,
		devBlock:     "/dev/block",
		sysDevBlock:  "/sys/dev/block",
		dev:          "/dev",
		freeSpace:    statfsFree,
	}
}

// statfsFree is the space free for root on the file system holding dir.
func statfsFree(dir string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bfree * uint64(st.Bsize), nil
}

// loopsBacking lists the loop devices whose backing file is path, from
// what /sys says of each block device.
func (m *machine) loopsBacking(path string) ([]string, error) {
	want, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	files, err := filepath.Glob(filepath.Join(m.sysDevBlock, "*", "loop", "backing_file"))
	if err != nil {
		return nil, err
	}
	var loops []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // detached meanwhile
		}
		back := strings.TrimSpace(string(b))
		if fi, err := os.Stat(back); err == nil && os.SameFile(fi, want) {
			majMin := filepath.Base(filepath.Dir(filepath.Dir(f)))
			loops = append(loops, m.blockDevice(majMin))
		}
	}
	return loops, nil
}

// blockDevice is the path of the block device majMin ("7:1"): its
// /dev/block link, or without udev the node /sys names for it.
func (m *machine) blockDevice(majMin string) string {
	link := filepath.Join(m.devBlock, majMin)
	if _, err := os.Stat(link); err == nil {
		return link
	}
	b, err := os.ReadFile(filepath.Join(m.sysDevBlock, majMin, "uevent"))
	if err != nil {
		return link
	}
	for _, line := range strings.Split(string(b), "\n") {
		if name, ok := strings.CutPrefix(line, "DEVNAME="); ok && name != "" {
			return filepath.Join(m.dev, name)
		}
	}
	return link
}
