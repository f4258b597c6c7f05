package restore_test

import (
	"testing"

	"github.com/docker-devmapper/docker-devmapper/metadata/restore"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// BenchmarkRestore writes 4M private mappings in 16 devices, as a restore
// from flat (0.9.0) XML does; it reports the cost per mapping.
func BenchmarkRestore(b *testing.B) {
	const devs, perDev = 16, 1 << 18
	const size = 128 << 20
	f := newFile(b, size)
	opts := restore.Options{DataBlockSize: 128, NrDataBlocks: 1 << 22}
	for b.Loop() {
		r, err := restore.New(f, size, opts)
		if err != nil {
			b.Fatal(err)
		}
		for d := range devs {
			if err := r.BeginDevice(thin.DevID(d), thin.Details{MappedBlocks: perDev}); err != nil {
				b.Fatal(err)
			}
			// Runs of 8, as file extents give.
			for v := uint64(0); v < perDev; v += 8 {
				if err := r.Run(v, (uint64(d)*perDev+v)%opts.NrDataBlocks, 8, 1); err != nil {
					b.Fatal(err)
				}
			}
			if err := r.EndDevice(); err != nil {
				b.Fatal(err)
			}
		}
		if err := r.End(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*devs*perDev), "ns/mapping")
}
