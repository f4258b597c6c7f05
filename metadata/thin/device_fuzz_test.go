package thin_test

import (
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// FuzzDetails round-trips any device-details value and any block_time
// through their decoders and encoders.
func FuzzDetails(f *testing.F) {
	img := thintest.Image(thintest.Load(f, "s2-snapshot-tree"))
	details := img.Node(f, img.Superblock().DetailsRoot, thin.DetailsSize)
	for i := range details.NrEntries {
		f.Add(append([]byte(nil), details.Value(i)...), uint64(thin.MakeBlockTime(634, 3)))
	}
	f.Add([]byte{}, ^uint64(0))
	f.Fuzz(func(t *testing.T, raw []byte, v uint64) {
		b := make([]byte, thin.DetailsSize)
		copy(b, raw)
		d := thin.ParseDetails(b)
		again := make([]byte, thin.DetailsSize)
		d.Put(again)
		assert.DeepEqual(t, again, b)

		bt := thin.BlockTime(v)
		assert.Equal(t, thin.MakeBlockTime(bt.Block(), bt.Time()), bt)
		assert.Assert(t, bt.Time() < 1<<24)
	})
}
