package scan_test

import (
	"bufio"
	"encoding/binary"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/scan"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// BenchmarkRun scans the pool named by SCAN_BENCH_FILE (cmd/mkpool makes
// large ones), or the s2 fixture.
func BenchmarkRun(b *testing.B) {
	r := thintest.BenchPool(b, "SCAN_BENCH_FILE")
	cpu := cpuTime(b)
	for b.Loop() {
		res, err := scan.Run(b.Context(), r, scan.Options{})
		assert.NilError(b, err)
		assert.Equal(b, res.Roots.MappingFrom, scan.Superblock)
	}
	cpu.report(b)
}

// cpuClock reports the processor time (user and system, all threads) per
// operation beside the wall time, which on a shared machine says more.
type cpuClock time.Duration

func cpuTime(b *testing.B) cpuClock {
	b.Helper()
	return cpuClock(rusage(b))
}

func (c cpuClock) report(b *testing.B) {
	b.ReportMetric(float64(rusage(b)-time.Duration(c))/float64(b.N), "cpu-ns/op")
}

func rusage(b *testing.B) time.Duration {
	var ru syscall.Rusage
	assert.NilError(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRunDense scans a file in which every block but the superblock
// is a full leaf of block_times: the most work per block the scan can
// meet. SCAN_BENCH_DENSE_MIB sets its size (default 64).
func BenchmarkRunDense(b *testing.B) {
	mib := 64
	if s := os.Getenv("SCAN_BENCH_DENSE_MIB"); s != "" {
		n, err := strconv.Atoi(s)
		assert.NilError(b, err)
		mib = n
	}
	nblocks := block.Nr(mib) * (1 << 20) / block.Size
	path := filepath.Join(b.TempDir(), "dense")
	out, err := os.Create(path)
	assert.NilError(b, err)
	w := bufio.NewWriterSize(out, 1<<20)
	buf := make([]byte, block.Size)
	var sb thin.Superblock
	sb.Magic, sb.Version, sb.Time = thin.Magic, thin.Version, 1
	sb.DataSM.NrBlocks = 1 << 32
	sb.Encode(buf, 0)
	_, err = w.Write(buf)
	assert.NilError(b, err)
	max := btree.MaxEntries(8)
	keys := make([]uint64, max)
	vals := make([]byte, 8*max)
	for n := block.Nr(1); n < nblocks; n++ {
		for i := range keys {
			keys[i] = uint64(i)
			binary.LittleEndian.PutUint64(vals[8*i:], uint64(thin.MakeBlockTime(thin.DataBlock(uint64(n)*uint64(max)+uint64(i)), 1)))
		}
		btree.Encode(buf, n, false, keys, vals, 8)
		_, err = w.Write(buf)
		assert.NilError(b, err)
	}
	assert.NilError(b, w.Flush())
	assert.NilError(b, out.Close())
	f, err := block.Open(path)
	assert.NilError(b, err)
	defer f.Close()
	b.SetBytes(f.Size())
	b.ResetTimer()
	cpu := cpuTime(b)
	for b.Loop() {
		res, err := scan.Run(b.Context(), f.Reader, scan.Options{})
		assert.NilError(b, err)
		assert.Equal(b, res.Nodes, int(nblocks-1))
	}
	cpu.report(b)
}
