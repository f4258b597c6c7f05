package e2e

import (
	"bufio"
	"errors"
	"fmt"
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
)

// bigXML writes thin_dump XML of one device with n scattered mappings:
// enough that a restore spends a while writing and syncing.
func bigXML(t *testing.T, n int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "big.xml")
	f, err := os.Create(p)
	assert.NilError(t, err)
	w := bufio.NewWriter(f)
	fmt.Fprintf(w, "<superblock uuid=\"\" time=\"1\" transaction=\"3\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"%d\">\n", 2*n)
	fmt.Fprintf(w, "  <device dev_id=\"1\" mapped_blocks=\"%d\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n", n)
	for i := range n {
		fmt.Fprintf(w, "    <single_mapping origin_block=\"%d\" data_block=\"%d\" time=\"0\"/>\n", 2*i, i)
	}
	fmt.Fprintf(w, "  </device>\n</superblock>\n")
	assert.NilError(t, w.Flush())
	assert.NilError(t, f.Close())
	return p
}

// onlyOutput fails the test if dir holds a visible file other than the
// names given: a killed run may leave its hidden temporary file, never a
// partial file under a name someone uses.
func onlyOutput(t *testing.T, dir string, names ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	assert.NilError(t, err)
	for _, e := range entries {
		n := e.Name()
		assert.Check(t, strings.HasPrefix(n, ".") || is.Contains(names, n)().Success(), "unexpected file %s", n)
	}
}

// TestRestoreKilled kills a restore with SIGKILL at random moments: while
// it parses, writes, syncs and renames. The output name then holds either
// what it held before (nothing, or the old metadata) or the complete
// restore, never part of one.
func TestRestoreKilled(t *testing.T) {
	xml := bigXML(t, 150000)
	old := kernelImage(t, "s2-snapshot-tree")

	// The complete restores, into a new file and over the old metadata
	// (whose size the output keeps).
	want := map[string]string{}
	var took time.Duration
	for _, mode := range []string{"new", "replace"} {
		ref := filepath.Join(t.TempDir(), "ref")
		args := []string{"restore", "--quiet", "-i", xml, "-o", ref}
		if mode == "replace" {
			copyFile(t, old, ref, 0o600)
			args = append(args, "--force")
		}
		start := time.Now()
		icmd.RunCommand(binary, args...).Assert(t, icmd.Success)
		took = max(took, time.Since(start))
		want[mode] = SHA256(t, ref)
	}
	oldSum := SHA256(t, old)

	for _, mode := range []string{"new", "replace"} {
		t.Run(mode, func(t *testing.T) {
			const runs = 12
			seen := map[string]int{}
			for i := range runs {
				dir := t.TempDir()
				out := filepath.Join(dir, "metadata")
				args := []string{"restore", "--quiet", "-i", xml, "-o", out}
				if mode == "replace" {
					copyFile(t, old, out, 0o600)
					args = append(args, "--force")
				}
				cmd := exec.Command(binary, args...)
				assert.NilError(t, cmd.Start())
				delay := time.Duration(rand.Int64N(int64(took) * 5 / 4))
				time.Sleep(delay)
				_ = cmd.Process.Signal(syscall.SIGKILL)
				_ = cmd.Wait()

				_, err := os.Stat(out)
				switch {
				case errors.Is(err, os.ErrNotExist) && mode == "new":
					seen["absent"]++
				case err != nil:
					t.Fatalf("run %d, killed after %v: %v", i, delay, err)
				case SHA256(t, out) == want[mode]:
					seen["restored"]++
				case mode == "replace" && SHA256(t, out) == oldSum:
					seen["old"]++
				default:
					t.Fatalf("run %d, killed after %v: %s holds neither the old nor the whole new metadata", i, delay, out)
				}
				onlyOutput(t, dir, "metadata")
			}
			t.Logf("%d kills over %v: %v", runs, took*5/4, seen)
		})
	}
}

// TestRepairRace starts two repairs of the same input. While one holds
// the input, the other refuses (exit 8) and writes nothing; started at
// the same moment, they either overlap (one refuses) or run one after
// the other (the second finds nothing to repair), and the input ends
// repaired either way.
func TestRepairRace(t *testing.T) {
	damaged := func(t *testing.T) string {
		t.Helper()
		p := filepath.Join(t.TempDir(), "metadata")
		icmd.RunCommand(binary, "restore", "--quiet", "-i", bigXML(t, 100000), "-o", p).Assert(t, icmd.Success)
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		assert.NilError(t, err)
		// Zero the top level of the mapping tree: repair must scan.
		sb := make([]byte, 4096)
		_, err = f.ReadAt(sb, 0)
		assert.NilError(t, err)
		root := int64(sb[320]) | int64(sb[321])<<8 | int64(sb[322])<<16
		_, err = f.WriteAt(make([]byte, 4096), root*4096)
		assert.NilError(t, err)
		assert.NilError(t, f.Close())
		return p
	}

	t.Run("while-held", func(t *testing.T) {
		img := damaged(t)
		first := exec.Command(binary, "repair", "--quiet", "--in-place", "--metadata", img)
		assert.NilError(t, first.Start())
		// Wait until the first repair holds its lock.
		held := false
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && !held; {
			f, err := os.Open(img)
			assert.NilError(t, err)
			held = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil
			f.Close()
			if !held {
				time.Sleep(time.Millisecond)
			}
		}
		if !held {
			_ = first.Wait()
			t.Skip("the first repair ended before it could be caught holding its lock")
		}
		res := icmd.RunCommand(binary, "repair", "--in-place", "--metadata", img, "--backup", img+".second")
		_ = first.Wait()
		res.Assert(t, icmd.Expected{ExitCode: 8, Err: "another repair is running"})
		_, err := os.Stat(img + ".second")
		assert.Check(t, errors.Is(err, os.ErrNotExist), "the refused repair wrote a backup")
		assert.Check(t, is.Equal(first.ProcessState.ExitCode(), 1))
		icmd.RunCommand(binary, "check", "--quiet", "--metadata", img).Assert(t, icmd.Success)
	})

	t.Run("at-once", func(t *testing.T) {
		outcomes := map[string]int{}
		for range 4 {
			img := damaged(t)
			var cmds [2]*exec.Cmd
			for i := range cmds {
				cmds[i] = exec.Command(binary, "repair", "--quiet", "--in-place", "--metadata", img, "--backup", fmt.Sprintf("%s.bak%d", img, i))
			}
			for _, c := range cmds {
				assert.NilError(t, c.Start())
			}
			var codes []int
			for _, c := range cmds {
				_ = c.Wait()
				codes = append(codes, c.ProcessState.ExitCode())
			}
			a, b := min(codes[0], codes[1]), max(codes[0], codes[1])
			switch {
			case a == 1 && b == 8:
				outcomes["one refused"]++
			case a == 0 && b == 1:
				outcomes["one after the other"]++
			default:
				t.Fatalf("two repairs at once exited %v", codes)
			}
			icmd.RunCommand(binary, "check", "--quiet", "--metadata", img).Assert(t, icmd.Success)
		}
		t.Logf("two repairs at once: %v", outcomes)
	})
}
