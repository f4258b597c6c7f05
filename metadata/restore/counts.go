package restore

import "github.com/docker-devmapper/docker-devmapper/metadata/spacemap"

// bitmapBytes is the payload of one bitmap block: 16320 two-bit counts.
const bitmapBytes = spacemap.EntriesPerBitmap / 4

// counts keeps one reference count per block in the on-disk form: two bits
// per block in the bit order bitmap blocks use, with the real value of every
// count of 3 or more in a map, which becomes the overflow b-tree. Bitmap
// pieces are allocated when first touched, so a large device with few
// blocks in use costs little.
type counts struct {
	n      uint64
	pieces [][]byte // one bitmap payload each, nil while all zero
	over   map[uint64]uint32
}

func newCounts(n uint64) *counts {
	return &counts{n: n, pieces: make([][]byte, spacemap.BitmapsFor(n)), over: map[uint64]uint32{}}
}

// two returns the 2-bit field of block i: its byte and bit shift.
func (c *counts) two(i uint64) (*byte, uint) {
	p := c.pieces[i/spacemap.EntriesPerBitmap]
	if p == nil {
		p = make([]byte, bitmapBytes)
		c.pieces[i/spacemap.EntriesPerBitmap] = p
	}
	j := i % spacemap.EntriesPerBitmap
	return &p[j/4], uint(2 * (j % 4))
}

// The high bit of a value sits at the lower bit position.
func decode2(x byte) uint32 { return uint32(x&1)<<1 | uint32(x>>1)&1 }
func encode2(v uint32) byte { return byte(v>>1)&1 | byte(v&1)<<1 }

// get is the count of block i < n.
func (c *counts) get(i uint64) uint32 {
	p := c.pieces[i/spacemap.EntriesPerBitmap]
	if p == nil {
		return 0
	}
	j := i % spacemap.EntriesPerBitmap
	v := decode2(p[j/4] >> (2 * (j % 4)))
	if v == 3 {
		return c.over[i]
	}
	return v
}

// inc adds one to the count of block i < n.
func (c *counts) inc(i uint64) {
	b, s := c.two(i)
	switch v := decode2(*b >> s); v {
	case 3:
		c.over[i]++
	case 2:
		c.over[i] = 3
		fallthrough
	default:
		*b = *b&^(3<<s) | encode2(v+1)<<s
	}
}

// dec takes one from the count of block i < n, which must be positive.
func (c *counts) dec(i uint64) {
	b, s := c.two(i)
	v := decode2(*b >> s)
	switch {
	case v == 0:
		return
	case v == 3:
		if c.over[i] > 3 {
			c.over[i]--
			return
		}
		delete(c.over, i)
	}
	*b = *b&^(3<<s) | encode2(v-1)<<s
}

// set makes the count of block i < n exactly 1: for space-map blocks,
// which have one reference each.
func (c *counts) setOne(i uint64) {
	b, s := c.two(i)
	if decode2(*b>>s) == 3 {
		delete(c.over, i)
	}
	*b = *b&^(3<<s) | encode2(1)<<s
}

// piece is the payload of bitmap k, all zero if never touched. It must not
// be modified.
func (c *counts) piece(k uint64) []byte {
	if p := c.pieces[k]; p != nil {
		return p
	}
	return zeroPiece[:]
}

var zeroPiece [bitmapBytes]byte

// zeros[x] is how many of the four counts in byte x are 0; firstZero[x]
// is the index of the first, or 4.
var zeros, firstZero = func() (z, f [256]uint8) {
	for x := range 256 {
		f[x] = 4
		for j := 3; j >= 0; j-- {
			if (x>>(2*j))&3 == 0 {
				z[x]++
				f[x] = uint8(j)
			}
		}
	}
	return z, f
}()

// summary describes bitmap k the way its index entry does: free entries
// (those past n count as free, as the kernel counts them) and the first
// free one, EntriesPerBitmap if none. used is the number of non-zero
// counts.
func (c *counts) summary(k uint64) (free, firstFree uint32) {
	p := c.piece(k)
	firstFree = spacemap.EntriesPerBitmap
	for i, x := range p {
		z := zeros[x]
		if z != 0 && firstFree == spacemap.EntriesPerBitmap {
			firstFree = uint32(i*4) + uint32(firstZero[x])
		}
		free += uint32(z)
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
