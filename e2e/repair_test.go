package e2e

import (
	"math/rand/v2"
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

	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// demoSample unpacks the shipped damaged sample: s2 with two data counts
// one too low and one leak.
func demoSample(t *testing.T) string {
	t.Helper()
	return Gunzip(t, filepath.Join("..", "testdata", "demo", "s2-refcount.img.gz"))
}

// TestRepairDemo is what "make demo" shows: check finds damage (4),
// repair writes a new file (1), check of that file is clean (0), and the
// input is unchanged.
func TestRepairDemo(t *testing.T) {
	c := NewCLI(t, binary)
	img := demoSample(t)
	before := SHA256(t, img)
	t.Run("check", func(t *testing.T) {
		runBoth(t, c, []string{"check", "--metadata", img}, func(t *testing.T, res *icmd.Result) {
			res.Assert(t, icmd.Expected{ExitCode: 4})
		})
	})
	t.Run("dry-run", func(t *testing.T) {
		runBoth(t, c, []string{"repair", "--metadata", img, "--dry-run"}, func(t *testing.T, res *icmd.Result) {
			res.Assert(t, icmd.Expected{ExitCode: 1, Out: "would be repaired"})
		})
	})
	for _, face := range []string{"docker", "standalone"} {
		t.Run("repair/"+face, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "repaired.img")
			args := []string{"repair", "--metadata", img, "-o", out}
			var res *icmd.Result
			if face == "docker" {
				res = c.RunDocker(t, append([]string{"devmapper"}, args...)...)
			} else {
				res = c.RunStandalone(args...)
			}
			res.Assert(t, icmd.Expected{ExitCode: 1, Out: "the result checks clean"})
			assert.Check(t, is.Equal(res.Stderr(), ""))
			c.RunStandalone("check", "--metadata", out).Assert(t, icmd.Success)
			// A second repair into the same output refuses: it holds
			// metadata now.
			again := c.RunStandalone(args...)
			again.Assert(t, icmd.Expected{ExitCode: 8})
			assert.Check(t, is.Contains(again.Stderr(), "--force"))
		})
	}
	assert.Equal(t, SHA256(t, img), before, "repair without --in-place changed its input")
}

// TestRepairLocked: a second repair of the same metadata refuses while
// the first holds its lock.
func TestRepairLocked(t *testing.T) {
	c := NewCLI(t, binary)
	img := demoSample(t)
	f, err := os.Open(img)
	assert.NilError(t, err)
	defer f.Close()
	assert.NilError(t, syscall.Flock(int(f.Fd()), syscall.LOCK_EX))
	res := c.RunStandalone("repair", "--metadata", img, "--in-place")
	res.Assert(t, icmd.Expected{ExitCode: 8})
	assert.Check(t, is.Contains(res.Stderr(), "another repair is running"))
	_, err = os.Stat(img + ".bak")
	assert.Check(t, os.IsNotExist(err), "a refused repair wrote a backup")
}

// TestRepairInPlaceKilled kills the real binary at random moments of an
// in-place repair. Whenever it dies, the metadata is either the original
// or the complete repair, never a mix, and once it has changed the backup
// holds the original.
func TestRepairInPlaceKilled(t *testing.T) {
	// The repaired bytes, from an undisturbed run on another copy.
	ref := demoSample(t)
	orig := SHA256(t, ref)
	start := time.Now()
	icmd.RunCmd(icmd.Cmd{Command: []string{binary, "repair", "--quiet", "--in-place", "--metadata", ref}}).
		Assert(t, icmd.Expected{ExitCode: 1})
	took := time.Since(start)
	repaired := SHA256(t, ref)
	assert.Assert(t, repaired != orig)

	const runs = 30
	seen := map[string]int{}
	for i := range runs {
		img := demoSample(t)
		cmd := exec.Command(binary, "repair", "--quiet", "--in-place", "--metadata", img)
		assert.NilError(t, cmd.Start())
		// Spread the kills over a whole run, a little past its end.
		time.Sleep(time.Duration(rand.Int64N(int64(took) * 5 / 4)))
		_ = cmd.Process.Kill()
		_ = cmd.Wait()

		got := SHA256(t, img)
		switch got {
		case orig:
			seen["original"]++
		case repaired:
			seen["repaired"]++
			assert.Check(t, is.Equal(SHA256(t, img+".bak"), orig), "run %d: repaired without a whole backup", i)
		default:
			t.Fatalf("run %d: killed after %v, the metadata is neither the original nor the repair", i, took)
		}
		if _, err := os.Stat(img + ".bak"); err == nil {
			assert.Check(t, is.Equal(SHA256(t, img+".bak"), orig), "run %d: the backup is not the original", i)
		}
		// Whatever the temporary files left, the target name never holds
		// a partial file.
		entries, err := os.ReadDir(filepath.Dir(img))
		assert.NilError(t, err)
		for _, e := range entries {
			name := e.Name()
			assert.Check(t, name == filepath.Base(img) || name == filepath.Base(img)+".bak" || strings.HasPrefix(name, "."),
				"run %d: unexpected file %s", i, name)
		}
	}
	t.Logf("%d kills: %v (an undisturbed run took %v)", runs, seen, took)
}

// loopDevice attaches a copy of the demo sample to a loop device, or skips
// the test where that needs privileges the machine does not give.
func loopDevice(t *testing.T) string {
	t.Helper()
	return loopDeviceOf(t, demoSample(t))
}

// loopDeviceOf attaches img to a loop device, detached when the test ends.
func loopDeviceOf(t *testing.T, img string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("attaching a loop device needs root")
	}
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		t.Skipf("no loop device: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "--detach", dev).Run() })
	return dev
}

// TestRepairBlockDevice: a device the kernel holds is refused with what to
// do about it; a free one repairs into a file; --in-place on a device
// refuses to go without --backup.
func TestRepairBlockDevice(t *testing.T) {
	dev := loopDevice(t)
	c := NewCLI(t, binary)
	out := filepath.Join(t.TempDir(), "repaired.img")

	// Hold the device the way an active pool does: exclusively.
	fd, err := syscall.Open(dev, syscall.O_RDONLY|syscall.O_EXCL, 0)
	assert.NilError(t, err)
	res := c.RunStandalone("repair", "--metadata", dev, "-o", out)
	res.Assert(t, icmd.Expected{ExitCode: 8})
	assert.Check(t, is.Contains(res.Stderr(), "dmsetup remove"))
	assert.NilError(t, syscall.Close(fd))

	c.RunStandalone("repair", "--metadata", dev, "-o", out).Assert(t, icmd.Expected{ExitCode: 1})
	c.RunStandalone("check", "--metadata", out).Assert(t, icmd.Success)

	before := SHA256(t, dev)
	res = c.RunStandalone("repair", "--metadata", dev, "--in-place")
	res.Assert(t, icmd.Expected{ExitCode: 8})
	assert.Check(t, is.Contains(res.Stderr(), "needs --backup FILE"))
	assert.Check(t, is.Equal(SHA256(t, dev), before))
}

// TestRepairBlockDeviceInPlace: the demo sample's wrong counts are repaired
// in place on a loop device, which then checks clean with our check and
// thin_check; a sample whose trees must be rebuilt is refused, the device
// unchanged and no backup taken.
func TestRepairBlockDeviceInPlace(t *testing.T) {
	dev := loopDevice(t)
	c := NewCLI(t, binary)
	backup := filepath.Join(t.TempDir(), "meta.bak")
	before := SHA256(t, dev)

	// Held as an active pool holds it, the device is refused.
	fd, err := syscall.Open(dev, syscall.O_RDONLY|syscall.O_EXCL, 0)
	assert.NilError(t, err)
	res := c.RunStandalone("repair", "--metadata", dev, "--in-place", "--backup", backup)
	res.Assert(t, icmd.Expected{ExitCode: 8})
	assert.Check(t, is.Contains(res.Stderr(), "dmsetup remove"))
	assert.NilError(t, syscall.Close(fd))

	res = c.RunStandalone("repair", "--metadata", dev, "--in-place", "--backup", backup)
	res.Assert(t, icmd.Expected{ExitCode: 1})
	assert.Check(t, is.Equal(SHA256(t, backup), before))
	c.RunStandalone("check", "--metadata", dev).Assert(t, icmd.Success)
	if thinCheck, err := exec.LookPath("thin_check"); err == nil {
		out, err := exec.Command(thinCheck, dev).CombinedOutput()
		assert.Check(t, err, "thin_check rejects the device repaired in place:\n%s", out)
	}
	// Nothing is left to repair.
	c.RunStandalone("repair", "--metadata", dev, "--in-place", "--backup", backup).Assert(t, icmd.Success)

	// The trees of this one must be rebuilt: refused, nothing written.
	img := demoSample(t)
	zeroTopLevel(t, img)
	dev = loopDeviceOf(t, img)
	before = SHA256(t, dev)
	backup = filepath.Join(t.TempDir(), "tree.bak")
	res = c.RunStandalone("repair", "--metadata", dev, "--in-place", "--backup", backup)
	res.Assert(t, icmd.Expected{ExitCode: 8})
	assert.Check(t, is.Contains(res.Stderr(), "rewrites blocks the current metadata uses"))
	assert.Check(t, is.Contains(res.Stderr(), "-o"))
	assert.Check(t, is.Equal(SHA256(t, dev), before))
	_, err = os.Stat(backup)
	assert.Check(t, os.IsNotExist(err), "a backup was taken")
}

// zeroTopLevel zeroes the top-level node of the mapping tree of the
// metadata file img.
func zeroTopLevel(t *testing.T, img string) {
	t.Helper()
	b, err := os.ReadFile(img)
	assert.NilError(t, err)
	root := thintest.Image(b).Superblock().MappingRoot
	clear(thintest.Image(b).Block(root))
	assert.NilError(t, os.WriteFile(img, b, 0o600))
}

// TestCheckBlockDevice: check reads a loop device as it reads the file
// behind it, read-only, and finds the same damage.
func TestCheckBlockDevice(t *testing.T) {
	dev := loopDevice(t)
	c := NewCLI(t, binary)
	res := c.RunStandalone("check", "--metadata", dev)
	res.Assert(t, icmd.Expected{ExitCode: 4, Out: "374: was 1, expected 2"})
	// Held exclusively, as an active pool holds it, the device still opens
	// for reading: check never asks for more.
	fd, err := syscall.Open(dev, syscall.O_RDONLY|syscall.O_EXCL, 0)
	assert.NilError(t, err)
	defer syscall.Close(fd)
	c.RunStandalone("check", "--quiet", "--metadata", dev).Assert(t, icmd.Expected{ExitCode: 4})
}
