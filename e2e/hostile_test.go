package e2e

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/icmd"
	"gotest.tools/v3/skip"
)

// s2XML is the reference dump of fixture s2, to restore.
func s2XML(t *testing.T) string {
	t.Helper()
	return Gunzip(t, filepath.Join("..", "testdata", "kernel", "s2-snapshot-tree.thin_dump-0.9.0.xml.gz"))
}

// noPanic fails the test if a run panicked or died of a signal.
func noPanic(t *testing.T, res *icmd.Result) {
	t.Helper()
	assert.Check(t, !strings.Contains(res.Stderr(), "panic:") && !strings.Contains(res.Stderr(), "goroutine "), res.Stderr())
	assert.Check(t, res.ExitCode >= 0 && res.ExitCode < 128 || res.ExitCode == 130, "exit %d", res.ExitCode)
}

// absent fails the test if path exists.
func absent(t *testing.T, path string) {
	t.Helper()
	_, err := os.Lstat(path)
	assert.Check(t, errors.Is(err, os.ErrNotExist), "%s exists", path)
}

// mountTmpfs mounts a tmpfs with the given options on a new directory, or
// skips the test where that needs privileges the machine does not give.
func mountTmpfs(t *testing.T, opts string) string {
	t.Helper()
	skip.If(t, os.Geteuid() != 0, "mounting a tmpfs needs root")
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", dir).Run() })
	return dir
}

// TestOutputSymlink: -o to a symbolic link replaces the link with the new
// file, as rename(2) does, and leaves the file the link pointed at alone:
// nothing is written through a link the caller may not have meant. An
// in-place repair follows the link and repairs the file where it lives,
// since that is the metadata the caller named.
func TestOutputSymlink(t *testing.T) {
	for _, tc := range []struct {
		name string
		args func(in, out string) []string
		code int
		in   func(t *testing.T) string
	}{
		{"restore", func(in, out string) []string { return []string{"restore", "-i", in, "-o", out, "--force"} }, 0, s2XML},
		{"repair", func(in, out string) []string { return []string{"repair", "--metadata", in, "-o", out, "--force"} }, 1, demoSample},
	} {
		for _, dangling := range []bool{false, true} {
			name := tc.name
			if dangling {
				name += "-dangling"
			}
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				target := filepath.Join(dir, "target")
				var before string
				if !dangling {
					// Old metadata, which the output would replace.
					copyFile(t, kernelImage(t, "s1-one-empty-thin"), target, 0o600)
					before = SHA256(t, target)
				}
				link := filepath.Join(dir, "link")
				assert.NilError(t, os.Symlink(target, link))
				res := icmd.RunCommand(binary, tc.args(tc.in(t), link)...)
				noPanic(t, res)
				res.Assert(t, icmd.Expected{ExitCode: tc.code})
				st, err := os.Lstat(link)
				assert.NilError(t, err)
				assert.Check(t, st.Mode().IsRegular(), "the link is still a link")
				if dangling {
					absent(t, target)
				} else {
					assert.Check(t, is.Equal(SHA256(t, target), before), "written through the link")
				}
				icmd.RunCommand(binary, "check", "--quiet", "--metadata", link).Assert(t, icmd.Success)
			})
		}
	}
	t.Run("repair-in-place", func(t *testing.T) {
		img := demoSample(t)
		link := filepath.Join(t.TempDir(), "link")
		assert.NilError(t, os.Symlink(img, link))
		icmd.RunCommand(binary, "repair", "--quiet", "--in-place", "--metadata", link).Assert(t, icmd.Expected{ExitCode: 1})
		st, err := os.Lstat(link)
		assert.NilError(t, err)
		assert.Check(t, st.Mode()&os.ModeSymlink != 0, "the link was replaced")
		icmd.RunCommand(binary, "check", "--quiet", "--metadata", img).Assert(t, icmd.Success)
		_, err = os.Stat(img + ".bak")
		assert.Check(t, err, "no backup beside the file the link points at")
	})
}

// TestReadOnlyOutput: an output on a read-only file system is refused
// with the system's reason (exit 8), and nothing is left there.
func TestReadOnlyOutput(t *testing.T) {
	ro := mountTmpfs(t, "ro,size=1m")
	out := filepath.Join(ro, "metadata")
	for _, args := range [][]string{
		{"restore", "-i", s2XML(t), "-o", out},
		{"repair", "--metadata", demoSample(t), "-o", out},
		{"dump", "--metadata", demoSample(t), "-o", out},
	} {
		t.Run(args[0], func(t *testing.T) {
			res := icmd.RunCommand(binary, args...)
			noPanic(t, res)
			res.Assert(t, icmd.Expected{ExitCode: 8, Err: "read-only file system"})
			absent(t, out)
		})
	}
}

// TestDiskFull: a file system that fills up while an output or a backup
// is written makes the command fail (exit 8) with the system's reason,
// and leaves no file behind, complete or not: the output name is never
// taken and the temporary file is removed.
func TestDiskFull(t *testing.T) {
	t.Run("restore", func(t *testing.T) {
		small := mountTmpfs(t, "size=2m")
		out := filepath.Join(small, "metadata")
		res := icmd.RunCommand(binary, "restore", "-i", bigXML(t, 150000), "-o", out)
		noPanic(t, res)
		res.Assert(t, icmd.Expected{ExitCode: 8, Err: "no space left on device"})
		entries, err := os.ReadDir(small)
		assert.NilError(t, err)
		assert.Check(t, is.Len(entries, 0), "left behind: %v", entries)
	})
	t.Run("repair-backup", func(t *testing.T) {
		// The input fits; its backup beside it does not. The backup is
		// sparse (it costs the blocks the metadata uses, not the file's
		// size), so a filler takes all but 32 KiB of the file system.
		small := mountTmpfs(t, "size=10m")
		img := filepath.Join(small, "metadata")
		copyFile(t, demoSample(t), img, 0o600)
		var fs syscall.Statfs_t
		assert.NilError(t, syscall.Statfs(small, &fs))
		filler := make([]byte, int64(fs.Bavail)*int64(fs.Bsize)-32<<10)
		for i := range filler {
			filler[i] = 1
		}
		assert.NilError(t, os.WriteFile(filepath.Join(small, "filler"), filler, 0o600))
		before := SHA256(t, img)
		res := icmd.RunCommand(binary, "repair", "--in-place", "--metadata", img)
		noPanic(t, res)
		res.Assert(t, icmd.Expected{ExitCode: 8, Err: "no space left on device"})
		assert.Check(t, is.Equal(SHA256(t, img), before), "the input changed")
		onlyOutput(t, small, "metadata", "filler")
		absent(t, img+".bak")
	})
}

// TestRestoreSizeTooSmall: a metadata file too small for the pool is
// refused with what to do (exit 8), and no output is left.
func TestRestoreSizeTooSmall(t *testing.T) {
	out := filepath.Join(t.TempDir(), "metadata")
	res := icmd.RunCommand(binary, "restore", "-i", bigXML(t, 100000), "-o", out, "--size", "64KiB")
	noPanic(t, res)
	res.Assert(t, icmd.Expected{ExitCode: 8, Err: "larger --size"})
	absent(t, out)
	onlyOutput(t, filepath.Dir(out))
}

// fakeDaemon serves the Engine API on a unix socket with handler and
// returns DOCKER_HOST for it.
func fakeDaemon(t *testing.T, handler http.HandlerFunc) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "docker.sock")
	l, err := net.Listen("unix", sock)
	assert.NilError(t, err)
	srv := httptest.NewUnstartedServer(handler)
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return "unix://" + sock
}

// TestDaemonHostile points the plugin at a daemon that answers garbage or
// never answers. The plugin asks the Engine only when it sees dockerd
// running, so each run happens in a PID namespace of its own, beside a
// stand-in process named dockerd; the machine's own processes (and
// docker) are not touched. Every run must end within engine.Timeout and
// a margin, with a message, not a panic.
func TestDaemonHostile(t *testing.T) {
	skip.If(t, os.Geteuid() != 0, "a PID namespace with a stand-in dockerd needs root")
	sleep, err := exec.LookPath("sleep")
	skip.If(t, err != nil, "no sleep(1) to stand in for dockerd")
	unshare, err := exec.LookPath("unshare")
	skip.If(t, err != nil, "no unshare(1)")
	standIn := filepath.Join(t.TempDir(), "dockerd")
	copyFile(t, sleep, standIn, 0o755)
	if err := exec.Command(unshare, "--pid", "--fork", "--mount-proc", "true").Run(); err != nil {
		t.Skipf("cannot make a PID namespace: %v", err)
	}

	const bound = 15*time.Second + 10*time.Second // engine.Timeout and a margin
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"garbage", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Api-Version", "1.45")
			_, _ = w.Write([]byte("{\"Driver\": [garbage"))
		}},
		{"wrong-types", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Api-Version", "1.45")
			_, _ = w.Write([]byte(`{"Driver": 7, "DriverStatus": "devicemapper", "ServerVersion": []}`))
		}},
		{"error", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "something broke", http.StatusInternalServerError)
		}},
		{"hang", func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(2 * bound):
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			host := fakeDaemon(t, tc.handler)
			for _, command := range []string{"check", "status"} {
				// Start the stand-in and wait until it shows as dockerd:
				// on a loaded machine the plugin could otherwise look at
				// /proc before the stand-in's exec, and see no daemon.
				script := `"$1" 600 & shift; n=0; until grep -qx dockerd /proc/$!/comm 2>/dev/null || [ $n -ge 200 ]; do sleep 0.05; n=$((n+1)); done; exec "$@"`
				res := icmd.RunCmd(icmd.Cmd{
					Command: []string{unshare, "--pid", "--fork", "--mount-proc", "sh", "-c", script, "sh", standIn, binary, command},
					Env:     append(os.Environ(), "DOCKER_HOST="+host),
					Timeout: bound,
				})
				assert.Check(t, !res.Timeout, "%s did not end within %v", command, bound)
				noPanic(t, res)
				assert.Check(t, is.Equal(res.ExitCode, 8), "%s: exit %d\n%s%s", command, res.ExitCode, res.Stdout(), res.Stderr())
				said := res.Stdout() + res.Stderr()
				assert.Check(t, is.Contains(said, "daemon"), "%s says nothing of the daemon", command)
				t.Logf("%s: exit %d: %s", command, res.ExitCode, strings.ReplaceAll(strings.TrimSpace(said), "\n", " | "))
			}
		})
	}
}

// TestNonRoot runs the binary as nobody: what it may not read or write
// is refused with the system's reason (exit 8), never a panic.
func TestNonRoot(t *testing.T) {
	skip.If(t, os.Geteuid() != 0, "running as another user needs root")
	setpriv, err := exec.LookPath("setpriv")
	skip.If(t, err != nil, "no setpriv(1)")
	// nobody needs to reach the binary and the files: let it through the
	// test's directories, but not into the files the test keeps private.
	dir := t.TempDir()
	top := os.Getenv("TMPDIR") // the run's directory, see runTests
	skip.If(t, top == "" || !strings.HasPrefix(dir, top), "the test's directory is not under the run's own")
	for d := dir; len(d) >= len(top); d = filepath.Dir(d) {
		assert.NilError(t, os.Chmod(d, 0o711))
	}
	bin := filepath.Join(dir, "docker-devmapper")
	copyFile(t, binary, bin, 0o755)
	private := filepath.Join(dir, "metadata")
	copyFile(t, demoSample(t), private, 0o600)
	readable := filepath.Join(dir, "readable")
	copyFile(t, demoSample(t), readable, 0o644)
	assert.NilError(t, os.Chmod(dir, 0o755))

	as := func(args ...string) *icmd.Result {
		cmd := append([]string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", bin}, args...)
		return icmd.RunCmd(icmd.Cmd{Command: cmd, Env: []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}, Timeout: time.Minute})
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
		err  string
	}{
		{"check-unreadable", []string{"check", "--metadata", private}, 8, "permission denied"},
		{"check-readable", []string{"check", "--quiet", "--metadata", readable}, 4, ""},
		{"repair-unwritable-dir", []string{"repair", "--metadata", readable, "-o", filepath.Join(dir, "out")}, 8, "permission denied"},
		{"repair-in-place-unwritable", []string{"repair", "--in-place", "--metadata", readable}, 8, "permission denied"},
		{"restore-unwritable-dir", []string{"restore", "-i", s2XML(t), "-o", filepath.Join(dir, "out")}, 8, "permission denied"},
		{"status", []string{"status"}, -1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := as(tc.args...)
			noPanic(t, res)
			assert.Check(t, !res.Timeout)
			if tc.code >= 0 {
				assert.Check(t, is.Equal(res.ExitCode, tc.code), "%s%s", res.Stdout(), res.Stderr())
			} else {
				assert.Check(t, res.ExitCode == 0 || res.ExitCode == 8, "exit %d: %s", res.ExitCode, res.Stderr())
			}
			if tc.err != "" {
				assert.Check(t, is.Contains(res.Stderr(), tc.err))
			}
			t.Logf("exit %d: %s", res.ExitCode, firstLine(res.Stderr()))
		})
	}
	absent(t, filepath.Join(dir, "out"))
	absent(t, readable+".bak")
}
