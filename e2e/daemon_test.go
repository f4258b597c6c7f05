package e2e

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/icmd"
	"gotest.tools/v3/skip"
)

// Dockerd is a real docker daemon started for one test, on a private
// socket and data root, with the vfs storage driver: it needs no kernel
// support beyond what any root process has.
type Dockerd struct {
	Dir    string // holds the socket, the data and exec roots, the log
	Socket string
	PID    int
	cmd    *exec.Cmd
}

// StartDockerd starts dockerd and waits until its API answers; the test
// is skipped when not run as root or when dockerd is not installed
// ("make deps" installs it). The daemon is stopped when the test ends.
func StartDockerd(t *testing.T) *Dockerd {
	t.Helper()
	skip.If(t, os.Geteuid() != 0, "dockerd needs root")
	bin, err := exec.LookPath("dockerd")
	if err != nil {
		t.Skip("dockerd not installed ('make deps' installs Debian's docker.io)")
	}
	// Short: the socket path, and containerd's below the exec root, must
	// fit in a unix socket address.
	dir, err := os.MkdirTemp("", "d")
	assert.NilError(t, err)
	d := &Dockerd{Dir: dir, Socket: filepath.Join(dir, "docker.sock")}
	logf, err := os.Create(filepath.Join(dir, "dockerd.log"))
	assert.NilError(t, err)
	d.cmd = exec.Command(bin,
		"--host", "unix://"+d.Socket,
		"--data-root", filepath.Join(dir, "root"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "docker.pid"),
		"--storage-driver", "vfs",
		"--iptables=false", "--bridge=none",
	)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	assert.NilError(t, d.cmd.Start())
	d.PID = d.cmd.Process.Pid
	exited := make(chan struct{})
	go func() {
		_ = d.cmd.Wait()
		logf.Close()
		close(exited)
	}()
	t.Cleanup(func() {
		// SIGTERM is dockerd's clean shutdown; it stops its containerd.
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-d.PID, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			if b, err := os.ReadFile(logf.Name()); err == nil {
				t.Logf("dockerd log:\n%s", b)
			}
		}
		os.RemoveAll(dir)
	})
	if err := d.waitReady(exited, 60*time.Second); err != nil {
		b, _ := os.ReadFile(logf.Name())
		t.Fatalf("dockerd did not answer: %v\n%s", err, b)
	}
	return d
}

// waitReady pings the API until it answers.
func (d *Dockerd) waitReady(exited <-chan struct{}, limit time.Duration) error {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", d.Socket)
		},
	}}
	deadline := time.Now().Add(limit)
	for {
		resp, err := hc.Get("http://docker/_ping")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return errExited
		default:
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

var errExited = errors.New("dockerd exited")

// tinyImage writes a tar holding one file, for "docker import".
func tinyImage(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tiny.tar")
	f, err := os.Create(path)
	assert.NilError(t, err)
	tw := tar.NewWriter(f)
	body := []byte("hello from a tiny image\n")
	assert.NilError(t, tw.WriteHeader(&tar.Header{Name: "hello", Mode: 0o755, Size: int64(len(body)), ModTime: time.Unix(0, 0)}))
	_, err = tw.Write(body)
	assert.NilError(t, err)
	assert.NilError(t, tw.Close())
	assert.NilError(t, f.Close())
	return path
}

// TestRealDaemon runs status, check and reset through the docker CLI
// against a real dockerd that does not use devicemapper.
func TestRealDaemon(t *testing.T) {
	d := StartDockerd(t)
	c := NewCLI(t, binary).WithEnv("DOCKER_HOST=unix://" + d.Socket)
	docker := func(t *testing.T, args ...string) *icmd.Result {
		t.Helper()
		res := c.RunDocker(t, args...)
		res.Assert(t, icmd.Success)
		return res
	}
	docker(t, "import", tinyImage(t), "tiny:latest")
	docker(t, "volume", "create", "keepme")
	docker(t, "create", "--name", "c1", "-v", "keepme:/data", "tiny:latest", "/hello")
	pid := strconv.Itoa(d.PID)

	t.Run("status", func(t *testing.T) {
		runBoth(t, c, []string{"status"}, func(t *testing.T, res *icmd.Result) {
			res.Assert(t, icmd.Expected{ExitCode: 0})
			out := res.Stdout()
			assert.Check(t, is.Regexp(`(?m)^storage driver: vfs \(docker 20\.10\.\S+, from the daemon\)$`, out))
			assert.Check(t, is.Contains(out, "data root:      "+filepath.Join(d.Dir, "root")+"\n"))
			assert.Check(t, is.Regexp(`(?m)^daemon: +running \(dockerd runs as process ([0-9]+, )*`+pid+`\b`, out))
			assert.Check(t, is.Contains(out, "this daemon does not use devicemapper"))
			assert.Check(t, is.Equal(res.Stderr(), ""))
		})
	})
	t.Run("status-json", func(t *testing.T) {
		res := c.RunDocker(t, "devmapper", "status", "--json")
		res.Assert(t, icmd.Success)
		var st struct {
			Driver       string
			DeviceMapper bool `json:"devicemapper"`
			Source       string
			Daemon       struct{ Running bool }
			Health       string
		}
		assert.NilError(t, json.Unmarshal([]byte(res.Stdout()), &st))
		assert.Check(t, is.Equal(st.Driver, "vfs"))
		assert.Check(t, !st.DeviceMapper)
		assert.Check(t, is.Equal(st.Source, "daemon"))
		assert.Check(t, st.Daemon.Running)
		assert.Check(t, is.Equal(st.Health, "none"))
	})
	t.Run("check", func(t *testing.T) {
		runBoth(t, c, []string{"check"}, func(t *testing.T, res *icmd.Result) {
			res.Assert(t, icmd.Expected{ExitCode: 8, Err: "the daemon uses the vfs storage driver, not devicemapper"})
		})
	})

	images := func(t *testing.T) string {
		return strings.TrimSpace(docker(t, "images", "-q").Stdout())
	}
	t.Run("reset-refuses", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			args []string
			code int
			err  string
		}{
			{name: "without-remove-images", args: []string{"--yes"}, code: 16, err: "runs only with --remove-images"},
			{name: "not-devicemapper", args: []string{"--remove-images", "--yes"}, code: 8, err: "not devicemapper: there is no pool to reset; nothing was changed"},
			{name: "no-terminal", args: []string{"--remove-images", "--keep-pool"}, code: 16, err: "there is no terminal to confirm on, and no --yes"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				res := c.RunDocker(t, append([]string{"devmapper", "reset"}, tc.args...)...)
				res.Assert(t, icmd.Expected{ExitCode: tc.code, Err: tc.err})
				assert.Check(t, images(t) != "", "the image must still be there")
			})
		}
	})
	t.Run("reset-keep-pool", func(t *testing.T) {
		res := c.RunDocker(t, "devmapper", "reset", "--remove-images", "--keep-pool", "--yes")
		res.Assert(t, icmd.Success)
		out := res.Stdout()
		for _, re := range []string{
			`(?m)^  1 image:$`,
			`(?m)^    tiny:latest \([0-9a-f]{12}, \d+ B, used by c1\)$`,
			`(?m)^  1 container \(volumes are kept\):$`,
			`(?m)^    c1 \([0-9a-f]{12}, created, image tiny:latest\)$`,
			`(?m)^removed container c1 \(1/1\)$`,
			`(?m)^removed image tiny:latest \(1/1\)$`,
		} {
			assert.Check(t, is.Regexp(regexp.MustCompile(re), out))
		}
		assert.Check(t, is.Equal(images(t), ""))
		assert.Check(t, is.Equal(strings.TrimSpace(docker(t, "ps", "-aq").Stdout()), ""))
		assert.Check(t, is.Contains(docker(t, "volume", "ls", "-q").Stdout(), "keepme"))
	})
}
