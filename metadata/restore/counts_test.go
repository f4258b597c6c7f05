package restore

import (
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
)

func TestCounts(t *testing.T) {
	c := newCounts(2*spacemap.EntriesPerBitmap + 10)
	// Up past the byte's range and back down.
	const b = spacemap.EntriesPerBitmap + 5
	for i := range 300 {
		assert.Equal(t, c.get(b), uint32(i))
		c.inc(b)
	}
	for i := 300; i > 0; i-- {
		assert.Equal(t, c.get(b), uint32(i))
		c.dec(b)
	}
	assert.Equal(t, c.get(b), uint32(0))
	c.dec(b)
	assert.Equal(t, c.get(b), uint32(0))
	assert.Equal(t, len(c.big), 0)

	for i, v := range []uint32{0, 1, 2, 3, 254, 255, 256, 70000, 1} {
		c.set(uint64(i), v)
		assert.Equal(t, c.get(uint64(i)), v)
	}
	c.set(5, 2) // 255 -> 2 leaves the map
	assert.Equal(t, len(c.big), 2)
	c.setOne(2*spacemap.EntriesPerBitmap + 9)

	var got []uint64
	assert.NilError(t, c.overflow(func(b uint64, v uint32) error {
		got = append(got, b, uint64(v))
		return nil
	}))
	assert.DeepEqual(t, got, []uint64{3, 3, 4, 254, 6, 256, 7, 70000})
	assert.Equal(t, c.overflowLen(), uint64(4))
	assert.Equal(t, c.allocated(), uint64(9))

	// The bitmap payload holds min(count, 3) in the on-disk bit order.
	buf := make([]byte, block.Size)
	for k := range uint64(3) {
		c.piece(k, buf[16:])
		free, first := c.summary(k)
		zeros, firstZero := uint32(0), uint32(spacemap.EntriesPerBitmap)
		for j := range spacemap.EntriesPerBitmap {
			want := min(c.getOr0(k*spacemap.EntriesPerBitmap+uint64(j)), 3)
			assert.Equal(t, uint32(spacemap.Get(buf, j)), want, "bitmap %d entry %d", k, j)
			if want == 0 {
				if zeros == 0 {
					firstZero = uint32(j)
				}
				zeros++
			}
		}
		assert.Equal(t, free, zeros)
		assert.Equal(t, first, firstZero)
	}
}

// getOr0 is get that also answers for entries past n.
func (c *counts) getOr0(i uint64) uint32 {
	if i >= c.n {
		return 0
	}
	return c.get(i)
}
