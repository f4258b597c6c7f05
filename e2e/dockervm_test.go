package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/skip"

	"github.com/docker-devmapper/docker-devmapper/e2e/dockervm"
	"github.com/docker-devmapper/docker-devmapper/e2e/kernelvm"
)

// TestDockerVM puts the plugin through a user's whole story against a real
// docker daemon (Debian's docker.io on the devicemapper driver, loop-lvm)
// in one virtual machine, with the real docker CLI running the plugin:
// status and check on the live pool; docker stopped and one data block's
// reference count lowered in the metadata; check finds it, repair fixes
// it, check is clean; docker starts and the containers read the files
// they wrote; reset gives docker a new pool that works. The machine runs
// testdata/dockervm/story.sh; each step is judged here from its output and
// exit status.
func TestDockerVM(t *testing.T) {
	s, done := bootStory(t, "story.sh", func(t *testing.T, work string) []kernelvm.File {
		damage := filepath.Join(work, "damage.test")
		build := exec.Command("go", "test", "-c", "-o", damage, "./e2e/testdata/dockervm/damage")
		build.Dir = ".."
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := build.CombinedOutput()
		assert.NilError(t, err, "building the damage helper: %s", out)
		return []kernelvm.File{{Path: "/usr/local/bin/damage.test", Src: damage, Mode: 0o755}}
	})
	defer done()

	t.Run("setup", func(t *testing.T) {
		for _, name := range []string{"setup-import", "setup-c1", "setup-commit", "setup-c2"} {
			s.success(t, name)
		}
		sum := strings.Fields(s.out("setup-c1"))
		assert.Check(t, len(sum) == 2 && sum[1] == "/blob", "c1 printed no checksum of /blob: %q", s.out("setup-c1"))
	})

	// 1. Status and check while docker runs: the pool is found through the
	// daemon, and check reads the trees through a metadata snapshot it
	// reserves and releases.
	t.Run("1-live-status", func(t *testing.T) {
		out := s.success(t, "live-status")
		assert.Check(t, is.Contains(out, "devicemapper"))
		st := s.status(t, "live-status-json")
		assert.Check(t, is.Equal(st.Driver, "devicemapper"))
		assert.Check(t, is.Equal(st.Source, "daemon"))
		assert.Check(t, st.Daemon.Running)
		assert.Check(t, is.Equal(st.Health, "ok"), s.out("live-status"))
		assert.Check(t, is.Len(st.Unknowns, 0), "status could not tell everything:\n%s", s.out("live-status"))
		assert.Assert(t, st.Pool != nil, "no pool in status --json")
		assert.Check(t, strings.HasPrefix(st.Pool.Name, "docker-") && strings.HasSuffix(st.Pool.Name, "-pool"), st.Pool.Name)
		assert.Check(t, is.Equal(st.Pool.Layout, "loop-lvm"))
		assert.Check(t, is.Equal(st.Pool.MetadataFile, "/var/lib/docker/devicemapper/devicemapper/metadata"))
		assert.Check(t, st.Pool.Active != nil && *st.Pool.Active, "the pool is not reported active")
	})
	t.Run("1-live-check-through-snapshot", func(t *testing.T) {
		rc, out := s.rc("live-check"), s.out("live-check")
		assert.Check(t, rc == 0, "check of the live pool, through a metadata snapshot, exited %d instead of 0:\n%s", rc, out)
		assert.Check(t, is.Regexp(`(?m)^checking the active pool docker-\S+-pool through a metadata snapshot of /dev/block/7:\d+$`, out))
		assert.Check(t, is.Contains(out, "\nclean\n"))
		// The snapshot is released: the pool's status shows no held root.
		held := s.out("live-pool-after-check")
		assert.Check(t, heldRootReleased(held), "check left a metadata snapshot held in the kernel (the held-root field of the pool's status):\n%s", held)
		// Once more, after the repair and the restart.
		rc, out = s.rc("after-check"), s.out("after-check")
		assert.Check(t, rc == 0, "check of the live pool after the repair exited %d instead of 0:\n%s", rc, out)
		assert.Check(t, is.Contains(out, "through a metadata snapshot"))
		assert.Check(t, is.Contains(out, "\nclean\n"))
		held = s.out("after-check-pool")
		assert.Check(t, heldRootReleased(held), "a metadata snapshot is held after the second check:\n%s", held)
	})

	// ls on the live pool: through a snapshot it releases, with the
	// running daemon naming each device's owner.
	t.Run("1-live-ls", func(t *testing.T) {
		s.liveOwners(t, "live-ls", "live-pool-after-ls", "container c1", "container c2", "image layer tiny:latest", "image layer tiny:c1")
	})

	// 2. Docker stops; the pool is deactivated; one data block that two
	// devices share is counted once.
	var lowered string
	t.Run("2-stop-and-damage", func(t *testing.T) {
		s.success(t, "stop")
		assert.Check(t, is.Contains(s.out("stopped-dmsetup"), "No devices found"), "the pool is still active after docker stopped")
		out := s.success(t, "damage")
		m := regexp.MustCompile(`lowered data block (\d+): count 2 -> 1`).FindStringSubmatch(out)
		assert.Assert(t, m != nil, "the damage helper printed no block: %s", out)
		lowered = m[1]
		// Status finds the stopped pool under the data root.
		out = s.success(t, "stopped-status")
		assert.Check(t, is.Contains(out, "(from the files under the data root)"))
		assert.Check(t, is.Regexp(`(?m)^pool: +docker-\S+-pool \(loop-lvm\), not active$`, out))
	})

	// 3. Check (the daemon stopped: the pool is found under the data
	// root) reports the damage. Docker starts on the damaged pool; repair
	// refuses while it runs, and with --stop-daemon stops it, backs up,
	// repairs and starts it again. Check is clean, live and stopped.
	t.Run("3-check-repair-check", func(t *testing.T) {
		assert.Assert(t, lowered != "", "no damage was made (step 2 failed)")
		out := s.exit(t, "damaged-check", 4)
		assert.Check(t, is.Contains(out, fmt.Sprintf("%s: was 1, expected 2", lowered)))
		assert.Check(t, is.Contains(out, "docker devmapper repair"))
		s.success(t, "damaged-start")
		out = s.exit(t, "repair-running", 8)
		assert.Check(t, is.Contains(out, "dockerd is running"))
		assert.Check(t, is.Contains(out, "add --stop-daemon"))
		out = s.exit(t, "repair", 1)
		for _, want := range []string{
			"stopping docker\n",
			fmt.Sprintf("  %s: was 1, expected 2\n", lowered),
			"backed up /var/lib/docker/devicemapper/devicemapper/metadata to /var/lib/docker/devicemapper/repair-",
			"replaced /var/lib/docker/devicemapper/devicemapper/metadata with the repaired metadata\n",
			"check of the result: clean\n",
			"starting docker\n",
			"docker runs again on the pool docker-",
		} {
			assert.Check(t, is.Contains(out, want))
		}
		out = s.success(t, "repaired-live-check")
		assert.Check(t, is.Contains(out, "through a metadata snapshot"))
		s.success(t, "repaired-stop")
		out = s.success(t, "repaired-check")
		assert.Check(t, is.Contains(out, "checking the inactive pool"))
		assert.Check(t, is.Regexp(`^/var/lib/docker/devicemapper/repair-\d{8}T\d{6}Z/metadata\n$`, s.success(t, "repaired-backup")))
	})

	// 4. Docker starts again on the repaired metadata, and the containers
	// start and read what c1 wrote before the damage.
	t.Run("4-containers-after-repair", func(t *testing.T) {
		s.success(t, "start")
		want := "/blob: OK\nhello-from-c1\n"
		assert.Check(t, is.Equal(s.success(t, "after-c2"), want), "c2, created before the damage, runs")
		assert.Check(t, is.Equal(s.success(t, "after-run"), want), "a new container of tiny:c1")
		assert.Check(t, is.Equal(s.success(t, "after-cp-c1"), "hello-from-c1\n"), "docker cp from c1")
		out := s.success(t, "after-c1")
		assert.Check(t, is.Equal(len(strings.Fields(out)), 2), "c1 runs again: %q", out)
	})

	// 4b. A transaction record above the pool's transaction id, naming
	// c2's device: check says docker would delete it at start-up; repair
	// sets the record back, keeping the original; c2 runs afterwards.
	t.Run("4b-records", func(t *testing.T) {
		info := strings.Fields(s.success(t, "rec-info"))
		assert.Assert(t, len(info) == 3, "c2's device and the pool's transaction id: %q", s.out("rec-info"))
		s.success(t, "rec-stop")
		s.success(t, "rec-damage")
		tx, err := strconv.Atoi(info[2])
		assert.NilError(t, err)
		out := s.exit(t, "rec-check", 4)
		assert.Check(t, is.Contains(out, fmt.Sprintf("docker will delete device %s", info[0])))
		assert.Check(t, is.Contains(out, "the device IS in the pool"))
		out = s.exit(t, "rec-repair", 1)
		assert.Check(t, is.Contains(out, "the pool's metadata checks clean: nothing to repair"))
		assert.Check(t, is.Contains(out, fmt.Sprintf("fix: devicemapper/metadata/transaction-metadata: open_transaction_id %d -> %d", tx+1, tx)))
		assert.Check(t, is.Contains(out, "fixed docker's records; the originals are in /var/lib/docker/devicemapper/repair-"))
		s.success(t, "rec-start")
		assert.Check(t, is.Equal(s.success(t, "rec-c2"), "/blob: OK\nhello-from-c1\n"), "c2 after the records were fixed")
	})

	// 5. Reset: every image and container goes, docker restarts on a new
	// pool, and that pool takes an image and runs a container.
	t.Run("5-reset", func(t *testing.T) {
		out := s.success(t, "reset")
		assert.Check(t, is.Contains(out, "docker runs with a new pool"))
		info := strings.Fields(s.success(t, "reset-info"))
		assert.Assert(t, len(info) == 2, "docker info: %q", s.out("reset-info"))
		assert.Check(t, is.Equal(info[0], "devicemapper"))
		assert.Check(t, is.Contains(out, info[1]), "reset names the pool docker runs with")
		assert.Check(t, is.Equal(strings.TrimSpace(s.success(t, "reset-images")), ""), "images left after reset")
		assert.Check(t, is.Equal(strings.TrimSpace(s.success(t, "reset-ps")), ""), "containers left after reset")
		s.success(t, "reset-import")
		assert.Check(t, is.Equal(s.success(t, "reset-run"), "fresh\n"))
		assert.Check(t, is.Contains(s.success(t, "reset-status"), "health:         ok"))
		assert.Check(t, is.Contains(s.success(t, "reset-aside"), "/var/lib/docker/devicemapper.reset-"))
		// The new pool, once docker stops, checks clean.
		s.success(t, "reset-stop")
		out = s.success(t, "reset-check")
		assert.Check(t, is.Contains(out, "checking the inactive pool "+info[1]))
		assert.Check(t, is.Contains(out, "clean"))
	})
}

// bootStory boots the docker machine (see TestDockerVM) with the plugin
// installed, runs testdata/dockervm/SCRIPT in it, and returns the steps
// it left. extra, when set, adds files to the machine, made in the boot's
// work directory. It skips where the machine cannot run, fails unless the
// script finished, and logs the console and dockerd's log when the test
// fails. done logs how long it all took.
func bootStory(t *testing.T, script string, extra func(t *testing.T, work string) []kernelvm.File) (s steps, done func()) {
	t.Helper()
	skip.If(t, testing.Short(), "-short: the docker daemon test boots a virtual machine, 4 minutes or more")
	skip.If(t, runtime.GOOS != "linux" || runtime.GOARCH != "amd64", "the docker daemon test boots an x86-64 Debian kernel; this is %s/%s", runtime.GOOS, runtime.GOARCH)
	skip.If(t, os.Geteuid() != 0, "the docker daemon test needs root: it fetches the kernel and docker with apt (run it as root, or 'make test')")
	missing := dockervm.Missing()
	sort.Strings(missing)
	skip.If(t, len(missing) > 0, "the docker daemon test needs %s: 'make deps' installs them", strings.Join(missing, ", "))

	start := time.Now()
	cache, err := filepath.Abs(filepath.Join("..", ".cache", "dockervm"))
	assert.NilError(t, err)
	m, err := dockervm.Prepare(t.Context(), cache, t.Logf)
	assert.NilError(t, err)
	t.Logf("kernel %s (%s)", m.Kernel.Package, m.Kernel.Release)

	work := t.TempDir()
	files := []kernelvm.File{{Path: "/root/.docker/cli-plugins/docker-devmapper", Src: binary, Mode: 0o755}}
	if extra != nil {
		files = append(files, extra(t, work)...)
	}
	res, err := m.Boot(t.Context(), dockervm.Config{
		Script:  string(readFile(t, filepath.Join("testdata", "dockervm", script))),
		WorkDir: work,
		Files:   files,
	})
	assert.NilError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("machine console:\n%s", res.Console)
			t.Logf("dockerd log (end):\n%s", lastLines(string(res.Files["dockerd.log"]), 60))
		}
	})
	assert.Assert(t, is.Equal(res.Status, 0), "the machine's script failed: docker did not start, or the script did not finish (console below)")
	return storySteps(res.Files), func() {
		t.Logf("%s took %v (machine %v)", script, time.Since(start).Round(time.Second), res.Elapsed.Round(time.Second))
	}
}

// steps are the results story.sh left: NAME.out and NAME.rc per step.
type steps map[string][]byte

func storySteps(files map[string][]byte) steps { return steps(files) }

func (s steps) out(name string) string { return string(s[name+".out"]) }

// rc is the step's exit status, -1 if it did not run.
func (s steps) rc(name string) int {
	b, ok := s[name+".rc"]
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return -1
	}
	return n
}

// exit asserts the step ran and exited with code, and returns its output.
func (s steps) exit(t *testing.T, name string, code int) string {
	t.Helper()
	rc := s.rc(name)
	assert.Check(t, func() is.Result {
		switch rc {
		case code:
			return is.ResultSuccess
		case -1:
			return is.ResultFailure(fmt.Sprintf("step %s did not run", name))
		}
		return is.ResultFailure(fmt.Sprintf("step %s exited %d, not %d; its output:\n%s", name, rc, code, s.out(name)))
	})
	return s.out(name)
}

func (s steps) success(t *testing.T, name string) string {
	t.Helper()
	return s.exit(t, name, 0)
}

// statusReport is what the docker machine tests read of status --json.
type statusReport struct {
	Driver   string   `json:"driver"`
	Source   string   `json:"source"`
	Root     string   `json:"root"`
	Health   string   `json:"health"`
	Problems []string `json:"problems"`
	Warnings []string `json:"warnings"`
	Unknowns []string `json:"unknowns"`
	Daemon   struct {
		Running bool `json:"running"`
	} `json:"daemon"`
	Pool *struct {
		Name           string `json:"name"`
		Layout         string `json:"layout"`
		DataFile       string `json:"data_file"`
		MetadataFile   string `json:"metadata_file"`
		DataDevice     string `json:"data_device"`
		MetadataDevice string `json:"metadata_device"`
		Metadata       string `json:"metadata"`
		Active         *bool  `json:"active"`
		Kernel         *struct {
			Mode     string `json:"mode"`
			HeldRoot uint64 `json:"held_metadata_root"`
		} `json:"kernel"`
	} `json:"pool"`
}

// status reads the output of the step name, a status --json.
func (s steps) status(t *testing.T, name string) statusReport {
	t.Helper()
	var st statusReport
	assert.NilError(t, json.Unmarshal([]byte(s.success(t, name)), &st), s.out(name))
	return st
}

// liveOwners judges the step ls (ls --format json on the live pool): each
// owner in want owns a device, and the pool's status left by the step
// status shows no metadata snapshot held.
func (s steps) liveOwners(t *testing.T, ls, status string, want ...string) {
	t.Helper()
	var rows []struct {
		Owner *struct {
			Kind string `json:"kind"`
			Name string `json:"name"`
		} `json:"owner"`
	}
	out := s.success(t, ls)
	assert.NilError(t, json.Unmarshal([]byte(out), &rows), out)
	owners := map[string]bool{}
	for _, r := range rows {
		if r.Owner != nil {
			owners[r.Owner.Kind+" "+r.Owner.Name] = true
		}
	}
	for _, w := range want {
		assert.Check(t, owners[w], "no device owned by %s in:\n%s", w, out)
	}
	held := s.out(status)
	assert.Check(t, heldRootReleased(held), "ls left a metadata snapshot held:\n%s", held)
}

// heldRootReleased reads "dmsetup status" lines and says whether every
// thin-pool among them holds no metadata snapshot ("-" in the held-root
// field).
func heldRootReleased(status string) bool {
	pools := 0
	for _, line := range strings.Split(status, "\n") {
		f := strings.Fields(line)
		// NAME: 0 LEN thin-pool TRANSACTION META DATA HELD MODE ...
		if len(f) >= 9 && f[3] == "thin-pool" {
			pools++
			if f[7] != "-" {
				return false
			}
		}
	}
	return pools > 0
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func TestHeldRootReleased(t *testing.T) {
	free := "docker-254:0-8193-pool: 0 209715200 thin-pool 7 3411/32768 889/1638400 - rw discard_passdown queue_if_no_space - 1024 \n"
	held := "docker-254:0-8193-pool: 0 209715200 thin-pool 7 3412/32768 983/1638400 427 rw discard_passdown queue_if_no_space - 1024 \n"
	assert.Check(t, heldRootReleased(free))
	assert.Check(t, !heldRootReleased(held))
	assert.Check(t, !heldRootReleased("No devices found\n"), "no pool at all")
}
