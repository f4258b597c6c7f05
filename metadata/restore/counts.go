package restore

import "github.com/docker-devmapper/docker-devmapper/metadata/spacemap"

// bitmapBytes is the payload of one bitmap block: 16320 two-bit counts.
const bitmapBytes = spacemap.EntriesPerBitmap / 4

// saturated marks a count kept in counts.big.
const saturated = 255

// counts keeps one reference count per block: a byte each, in pieces of
// one bitmap's worth of blocks allocated when first touched (so a large
// device with few blocks in use costs little), and counts of 255 or more
// in a map. A byte rather than the on-disk two bits because restores of
// flat XML give most shared data blocks counts of 3 and more, and a map
// increment per mapping would dominate the run time.
type counts struct {
	n      uint64
	pieces [][]uint8 // EntriesPerBitmap counts each, nil while all zero
	big    map[uint64]uint32
}

func newCounts(n uint64) *counts {
	return &counts{n: n, pieces: make([][]uint8, spacemap.BitmapsFor(n)), big: map[uint64]uint32{}}
}

// at returns the byte of block i < n, allocating its piece.
func (c *counts) at(i uint64) *uint8 {
	k := i / spacemap.EntriesPerBitmap
	p := c.pieces[k]
	if p == nil {
		p = make([]uint8, spacemap.EntriesPerBitmap)
		c.pieces[k] = p
	}
	return &p[i%spacemap.EntriesPerBitmap]
}

// get is the count of block i < n.
func (c *counts) get(i uint64) uint32 {
	p := c.pieces[i/spacemap.EntriesPerBitmap]
	if p == nil {
		return 0
	}
	v := p[i%spacemap.EntriesPerBitmap]
	if v == saturated {
		return c.big[i]
	}
	return uint32(v)
}

// inc adds one to the count of block i < n.
func (c *counts) inc(i uint64) {
	b := c.at(i)
	switch *b {
	case saturated:
		c.big[i]++
	case saturated - 1:
		*b = saturated
		c.big[i] = saturated
	default:
		*b++
	}
}

// dec takes one from the count of block i < n; a count of 0 stays 0.
func (c *counts) dec(i uint64) {
	b := c.at(i)
	switch *b {
	case 0:
	case saturated:
		if c.big[i]--; c.big[i] < saturated {
			delete(c.big, i)
			*b = saturated - 1
		}
	default:
		*b--
	}
}

// set makes the count of block i < n exactly v.
func (c *counts) set(i uint64, v uint32) {
	b := c.at(i)
	if v >= saturated {
		*b = saturated
		c.big[i] = v
		return
	}
	delete(c.big, i)
	*b = uint8(v)
}

// setOne makes the count of block i < n exactly 1: for space-map blocks,
// which have one reference each.
func (c *counts) setOne(i uint64) { c.set(i, 1) }

// encode2 is a 2-bit value in bitmap bit order: the high bit sits at the
// lower bit position.
func encode2(v uint8) byte { return v>>1&1 | (v&1)<<1 }

// piece fills dst (bitmapBytes) with the bitmap payload of bitmap k:
// every count as two bits, 3 standing for 3 or more. Entries past n are 0.
func (c *counts) piece(k uint64, dst []byte) {
	p := c.pieces[k]
	if p == nil {
		clear(dst[:bitmapBytes])
		return
	}
	for j := range bitmapBytes {
		q := p[4*j : 4*j+4]
		dst[j] = encode2(min(q[0], 3)) | encode2(min(q[1], 3))<<2 | encode2(min(q[2], 3))<<4 | encode2(min(q[3], 3))<<6
	}
}

// summary describes bitmap k the way its index entry does: free entries
// (those past n count as free, as the kernel counts them) and the first
// free one, EntriesPerBitmap if none.
func (c *counts) summary(k uint64) (free, firstFree uint32) {
	p := c.pieces[k]
	if p == nil {
		return spacemap.EntriesPerBitmap, 0
	}
	firstFree = spacemap.EntriesPerBitmap
	for j, v := range p {
		if v == 0 {
			if free == 0 {
				firstFree = uint32(j)
			}
			free++
		}
	}
	return free, firstFree
}

// allocated is the number of blocks whose count is not 0.
func (c *counts) allocated() uint64 {
	var free uint64
	for k := range c.pieces {
		f, _ := c.summary(uint64(k))
		free += uint64(f)
	}
	// Entries past n are zero and counted free above.
	return uint64(len(c.pieces))*spacemap.EntriesPerBitmap - free
}

// overflowLen is the number of blocks whose count is 3 or more: the
// entries of the overflow tree.
func (c *counts) overflowLen() uint64 {
	var n uint64
	for _, p := range c.pieces {
		for _, v := range p {
			if v >= 3 {
				n++
			}
		}
	}
	return n
}

// overflow calls f for every block whose count is 3 or more, in block
// order, and stops at the first error.
func (c *counts) overflow(f func(b uint64, v uint32) error) error {
	for k, p := range c.pieces {
		for j, v := range p {
			if v < 3 {
				continue
			}
			b := uint64(k)*spacemap.EntriesPerBitmap + uint64(j)
			count := uint32(v)
			if v == saturated {
				count = c.big[b]
			}
			if err := f(b, count); err != nil {
				return err
			}
		}
	}
	return nil
}
