package block

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
)

const (
	// ExtentBlocks caps one read of ReadEach: 1 MiB.
	ExtentBlocks = 256
	// gapBlocks is how far apart two wanted blocks may lie and still be
	// read together; reading a few unwanted blocks is cheaper than
	// another request.
	gapBlocks = 16
)

// Readers is how many extents ReadEach keeps in flight: more than the
// cores, so that a cold device always has several requests queued; the
// work per block is small enough that the extra goroutines cost nothing
// when the data is cached.
func Readers() int { return max(runtime.GOMAXPROCS(0), 4) }

// ReadEach reads the blocks in sorted (ascending, no duplicates) with
// large reads, grouping nearby blocks into extents of up to 1 MiB, several
// extents at once, and calls fn for each block: worker (0 <= worker <
// Readers()) names the goroutine making the call, so that a caller can
// keep per-goroutine state without locks; b is valid only until fn
// returns. Checksums are not checked: fn knows what kind of block it
// expects. The first error from fn or from reading stops the rest.
func (r *Reader) ReadEach(ctx context.Context, sorted []Nr, fn func(worker int, n Nr, b []byte) error) error {
	type ext struct{ i, j int }
	var exts []ext
	for i := 0; i < len(sorted); {
		j := i + 1
		for j < len(sorted) && sorted[j]-sorted[i] < ExtentBlocks && sorted[j]-sorted[j-1] <= gapBlocks {
			j++
		}
		exts = append(exts, ext{i, j})
		i = j
	}
	nw := min(Readers(), len(exts))
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		errs = make([]error, nw)
		stop atomic.Bool
	)
	for k := range nw {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, ExtentBlocks*Size)
			for !stop.Load() {
				x := int(next.Add(1) - 1)
				if x >= len(exts) {
					return
				}
				if err := ctx.Err(); err != nil {
					errs[k] = err
					stop.Store(true)
					return
				}
				e := exts[x]
				first, last := sorted[e.i], sorted[e.j-1]
				b := buf[:(last-first+1)*Size]
				if err := r.ReadRaw(b, first); err != nil {
					errs[k] = err
					stop.Store(true)
					return
				}
				for _, n := range sorted[e.i:e.j] {
					off := (n - first) * Size
					if err := fn(k, n, b[off:off+Size]); err != nil {
						errs[k] = err
						stop.Store(true)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
