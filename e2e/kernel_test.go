package e2e

import (
	"bytes"
	stdxml "encoding/xml"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/icmd"
	"gotest.tools/v3/skip"

	"github.com/docker-devmapper/docker-devmapper/e2e/kernelvm"
	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// kernelDevices are the thin devices testdata/kernel-write.sh leaves in
// the pool, with their sizes in sectors.
var kernelDevices = []struct {
	id      int
	sectors int
}{{1, 131072}, {2, 131072}, {3, 131072}, {4, 32768}}

const (
	kernelMetaSize = 8 << 20 // bytes
	kernelDataSize = 1 << 30
	// kernelTransaction is the id kernel-write.sh sets last.
	kernelTransaction = "7"
	// kernelAllocs is how many data blocks kernel-verify.sh makes the
	// kernel allocate: 160 for device 9 and 20 for writes to snapshot 3
	// over blocks it shares with device 2.
	kernelAllocs = 160 + 20
)

// TestKernel proves that a real dm-thin kernel target accepts the metadata
// this tool writes, and loses nothing. A first machine makes a pool with
// snapshots and known data; on the host the plugin dumps that metadata,
// restores the dump to new metadata, and repairs a copy whose data
// reference counts were damaged; a second machine activates the pool on the
// restored and on the repaired metadata with the same data, reads every
// device, and makes the kernel allocate and break sharing. Every device
// must read the same in both machines, the pool must come up healthy with
// its transaction id and block counts, the kernel's new data must land
// where no device has any, and what the kernel then commits must check
// clean. The damaged copy, unrepaired, is the control: through it the
// kernel hands out blocks still in use and overwrites a device.
func TestKernel(t *testing.T) {
	skip.If(t, testing.Short(), "the kernel test boots two virtual machines, a minute or more")
	skip.If(t, runtime.GOOS != "linux" || runtime.GOARCH != "amd64", "the kernel test boots an x86-64 Debian kernel; this is %s/%s", runtime.GOOS, runtime.GOARCH)
	skip.If(t, os.Geteuid() != 0, "the kernel test needs root: it fetches the kernel with apt (run it as root, or 'make test')")
	missing := kernelvm.Missing()
	skip.If(t, len(missing) > 0, "the kernel test needs %s: 'make deps' installs them", strings.Join(missing, ", "))

	start := time.Now()
	cache, err := filepath.Abs(filepath.Join("..", ".cache", "kernelvm"))
	assert.NilError(t, err)
	k, err := kernelvm.Prepare(t.Context(), cache, t.Logf)
	assert.NilError(t, err)
	t.Logf("kernel %s (%s)", k.Package, k.Release)

	dir := t.TempDir()
	img := func(name string) string { return filepath.Join(dir, name) }
	c := NewCLI(t, binary)

	// Run 1: the kernel writes a pool.
	sparse(t, img("written.img"), kernelMetaSize)
	sparse(t, img("data.img"), kernelDataSize)
	first := boot(t, k, "kernel-write.sh", "", img("written.img"), img("data.img"))
	written := first.pool(t, "written", "pool")
	assert.Check(t, is.Equal(written.transaction, kernelTransaction))
	for _, d := range kernelDevices {
		assert.Assert(t, first.sums["written "+strconv.Itoa(d.id)] != "", "no sum of device %d from the first machine", d.id)
	}

	// On the host: dump, restore the dump, damage and repair.
	c.RunStandalone("dump", "--metadata", img("written.img"), "-o", img("written.xml")).Assert(t, icmd.Success)
	dump := readFile(t, img("written.xml"))
	if thinDump, err := exec.LookPath("thin_dump"); err == nil {
		// The reference tool reads the kernel's metadata as we do.
		icmd.RunCommand(thinDump, img("written.img")).Assert(t, icmd.Expected{Out: string(dump)})
	}
	// Our checker agrees with the kernel's counts, and the dump holds as
	// many mapped blocks as the pool has in use.
	c.RunStandalone("check", "--metadata", img("written.img")).Assert(t, icmd.Success)
	counts := dataCounts(t, dump)
	assert.Check(t, is.Equal(uint64(len(counts)), written.dataUsed), "blocks mapped in the dump vs in use in the pool")

	c.RunStandalone("restore", "-i", img("written.xml"), "-o", img("restored.img"), "--size", "8MiB").Assert(t, icmd.Success)
	c.RunStandalone("check", "--metadata", img("restored.img")).Assert(t, icmd.Success)
	c.RunStandalone("dump", "--metadata", img("restored.img")).Assert(t, icmd.Expected{Out: string(dump)})

	// Damage two data reference counts, 1 to 0: a block that devices 2
	// and 3 map through a leaf they share (the second machine writes to 3
	// there, which makes the kernel copy that leaf), and the lowest block
	// only one device maps. Check must see it and repair must rebuild the
	// space maps, leaving the mappings as they were.
	damaged := thintest.Image(readFile(t, img("written.img")))
	shared := mappedAt(t, dump, 3, 10)
	assert.Assert(t, is.Equal(mappedAt(t, dump, 2, 10), shared), "devices 2 and 3 should share block 10")
	lone := uint64(1 << 63)
	for b, n := range counts {
		if n == 1 && b < lone {
			lone = b
		}
	}
	for _, b := range []uint64{shared, lone} {
		n := damaged.DataCount(t, b)
		assert.Assert(t, n == 1, "data block %d counts %d", b, n)
		damaged.SetDataCount(t, b, 0)
	}
	// Lower the index entry's hint as well, as losing those counts would
	// have: the kernel looks for free blocks from none_free_before on, so
	// unrepaired, this metadata makes it hand both blocks out again.
	root := damaged.Superblock().DataSM.BitmapRoot
	nd := damaged.Node(t, root, spacemap.IndexEntrySize)
	assert.Assert(t, !nd.Internal && nd.Key(0) == 0 && max(shared, lone) < spacemap.EntriesPerBitmap,
		"the data index should be one leaf, and both blocks in the first bitmap")
	ib := damaged.Block(root)
	at := 32 + 8*nd.MaxEntries // the first bitmap's entry, after the header and the keys
	e := spacemap.ParseIndexEntry(ib[at:])
	e.NrFree += 2
	e.NoneFreeBefore = uint32(min(shared, lone))
	e.Put(ib[at:])
	block.Seal(ib, block.Node)
	assert.NilError(t, os.WriteFile(img("damaged.img"), damaged, 0o644))
	c.RunStandalone("check", "--metadata", img("damaged.img")).Assert(t, icmd.Expected{ExitCode: 4})
	c.RunStandalone("repair", "--metadata", img("damaged.img"), "-o", img("repaired.img")).Assert(t, icmd.Expected{ExitCode: 1})
	c.RunStandalone("check", "--metadata", img("repaired.img")).Assert(t, icmd.Success)
	c.RunStandalone("dump", "--metadata", img("repaired.img")).Assert(t, icmd.Expected{Out: string(dump)})
	for _, name := range []string{"restored.img", "repaired.img"} {
		st, err := os.Stat(img(name))
		assert.NilError(t, err)
		assert.Check(t, is.Equal(st.Size(), int64(kernelMetaSize)), name)
	}

	// Run 2: the kernel reads and writes on each metadata image in turn.
	var devs []string
	for _, d := range kernelDevices {
		devs = append(devs, fmt.Sprintf("%d:%d", d.id, d.sectors))
	}
	// The unrepaired damaged copy goes last, as a control: through it the
	// kernel must lose data (else this test could not see what repair
	// fixes), and what it overwrites is read by nothing after it.
	vars := fmt.Sprintf("DEVS=%q\nIMAGES=%q\n", strings.Join(devs, " "), "restored:vdb repaired:vdc damaged:vdd")
	second := boot(t, k, "kernel-verify.sh", vars, img("data.img"), img("restored.img"), img("repaired.img"), img("damaged.img"))
	for _, name := range []string{"restored", "repaired"} {
		t.Run(name, func(t *testing.T) {
			assert.Check(t, is.Equal(second.results[name], "0"), "the second machine's script failed on the %s metadata", name)
			p := second.pool(t, name, "pool")
			assert.Check(t, is.Equal(p.transaction, kernelTransaction), "transaction id")
			assert.Check(t, is.Equal(p.dataUsed, written.dataUsed), "data blocks in use")
			assert.Check(t, is.Equal(p.dataTotal, written.dataTotal), "data blocks")
			for _, d := range kernelDevices {
				id := strconv.Itoa(d.id)
				assert.Check(t, is.Equal(second.sums[name+" "+id], first.sums["written "+id]), "device %d reads differently", d.id)
				assert.Check(t, is.Equal(second.status[name+" thin"+id], first.status["written thin"+id]), "device %d status", d.id)
				if d.id != 3 {
					assert.Check(t, is.Equal(second.after[name+" "+id], first.sums["written "+id]), "device %d changed when the kernel wrote elsewhere", d.id)
				}
			}
			after := second.pool(t, name, "after")
			assert.Check(t, is.Equal(after.dataUsed, written.dataUsed+kernelAllocs), "data blocks in use after the writes")
			// What the kernel committed on top of ours checks clean too.
			c.RunStandalone("check", "--metadata", img(name+".img")).Assert(t, icmd.Success)
		})
	}
	t.Run("damaged-control", func(t *testing.T) {
		assert.Check(t, is.Equal(second.results["damaged"], "0"), "the second machine's script failed on the damaged metadata")
		lost := 0
		for _, id := range []string{"1", "2"} {
			assert.Check(t, is.Equal(second.sums["damaged "+id], first.sums["written "+id]), "device %s reads differently", id)
			if second.after["damaged "+id] != first.sums["written "+id] {
				lost++
			}
		}
		assert.Check(t, lost > 0, "unrepaired, the damage should have made the kernel overwrite device 1 or 2")
	})
	t.Logf("kernel test took %v (machines %v and %v)", time.Since(start).Round(time.Second),
		first.elapsed.Round(time.Second), second.elapsed.Round(time.Second))
}

// vmRun is what a machine printed: kernel-write.sh's and kernel-verify.sh's
// lines "sum NAME ID MD5", "after NAME ID MD5", "status NAME DEV STATUS" and
// "result NAME CODE", keyed by "NAME ID" or "NAME DEV".
type vmRun struct {
	sums, after, status, results map[string]string
	console                      string
	elapsed                      time.Duration
}

// boot runs testdata/SCRIPT, after the shell assignments vars, in a
// machine with disks; the script must end with status 0.
func boot(t *testing.T, k *kernelvm.Kernel, script, vars string, disks ...string) *vmRun {
	t.Helper()
	work := t.TempDir()
	res, err := k.Boot(t.Context(), kernelvm.Config{
		Script:  vars + string(readFile(t, filepath.Join("testdata", script))),
		Disks:   disks,
		WorkDir: work,
	})
	assert.NilError(t, err)
	r := &vmRun{
		sums: map[string]string{}, after: map[string]string{}, status: map[string]string{}, results: map[string]string{},
		console: res.Console, elapsed: res.Elapsed,
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s: console:\n%s", script, res.Console)
		}
	})
	assert.Assert(t, is.Equal(res.Status, 0), "%s failed", script)
	for _, line := range strings.Split(res.Console, "\n") {
		f := strings.SplitN(strings.TrimRight(line, "\r"), " ", 4)
		switch {
		case len(f) == 4 && f[0] == "sum":
			r.sums[f[1]+" "+f[2]] = f[3]
		case len(f) == 4 && f[0] == "after":
			r.after[f[1]+" "+f[2]] = f[3]
		case len(f) == 4 && f[0] == "status":
			r.status[f[1]+" "+f[2]] = f[3]
		case len(f) == 3 && f[0] == "result":
			r.results[f[1]] = f[2]
		}
	}
	return r
}

// poolStatus is the part of a thin-pool's "dmsetup status" the test reads:
// "0 LEN thin-pool TRANSACTION META_USED/META DATA_USED/DATA HELD MODE
// DISCARD QUEUE NEEDS_CHECK LOW_WATER".
type poolStatus struct {
	transaction         string
	dataUsed, dataTotal uint64
}

// pool reads the pool status line NAME DEV and asserts it is healthy:
// read-write, not failed, no needs_check.
func (r *vmRun) pool(t *testing.T, name, dev string) poolStatus {
	t.Helper()
	line, ok := r.status[name+" "+dev]
	assert.Assert(t, ok, "no pool status %s %s", name, dev)
	f := strings.Fields(line)
	assert.Assert(t, len(f) >= 11 && f[2] == "thin-pool", "pool status %q", line)
	assert.Check(t, is.Equal(f[7], "rw"), "pool mode: %q", line)
	assert.Check(t, is.Equal(f[10], "-"), "needs_check: %q", line)
	used, total, ok := strings.Cut(f[5], "/")
	assert.Assert(t, ok, "data blocks in %q", line)
	p := poolStatus{transaction: f[3]}
	var err error
	p.dataUsed, err = strconv.ParseUint(used, 10, 64)
	assert.NilError(t, err)
	p.dataTotal, err = strconv.ParseUint(total, 10, 64)
	assert.NilError(t, err)
	return p
}

func sparse(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	assert.NilError(t, err)
	assert.NilError(t, f.Truncate(size))
	assert.NilError(t, f.Close())
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	assert.NilError(t, err)
	return b
}

// eachMapping calls fn for every mapping of a 0.9.0 dump, one virtual
// block at a time.
func eachMapping(t *testing.T, dump []byte, fn func(dev, vblock, data uint64)) {
	t.Helper()
	d := stdxml.NewDecoder(bytes.NewReader(dump))
	var dev uint64
	num := func(se stdxml.StartElement, name string) uint64 {
		for _, a := range se.Attr {
			if a.Name.Local == name {
				n, err := strconv.ParseUint(a.Value, 10, 64)
				assert.NilError(t, err)
				return n
			}
		}
		t.Fatalf("<%s> without %s", se.Name.Local, name)
		return 0
	}
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return
		}
		assert.NilError(t, err)
		se, ok := tok.(stdxml.StartElement)
		if !ok {
			continue
		}
		switch se.Name.Local {
		case "device":
			dev = num(se, "dev_id")
		case "single_mapping":
			fn(dev, num(se, "origin_block"), num(se, "data_block"))
		case "range_mapping":
			o, b, n := num(se, "origin_begin"), num(se, "data_begin"), num(se, "length")
			for i := uint64(0); i < n; i++ {
				fn(dev, o+i, b+i)
			}
		}
	}
}

// dataCounts is, for each mapped data block, how many devices map it:
// what the kernel's data space map counts.
func dataCounts(t *testing.T, dump []byte) map[uint64]int {
	counts := map[uint64]int{}
	eachMapping(t, dump, func(_, _, data uint64) { counts[data]++ })
	return counts
}

// mappedAt is the data block device dev maps at vblock.
func mappedAt(t *testing.T, dump []byte, dev, vblock uint64) uint64 {
	t.Helper()
	found, at := false, uint64(0)
	eachMapping(t, dump, func(d, v, data uint64) {
		if d == dev && v == vblock {
			found, at = true, data
		}
	})
	assert.Assert(t, found, "device %d maps no block %d", dev, vblock)
	return at
}
