package thintest

import (
	"encoding/binary"
	"testing"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
)

// Clone is a copy of the image that can be damaged on its own.
func (img Image) Clone() Image { return append(Image(nil), img...) }

// NrBlocks is the number of whole blocks in the image.
func (img Image) NrBlocks() block.Nr { return block.Nr(len(img) / block.Size) }

// DataBitmap is the bitmap block that holds data block d's count.
func (img Image) DataBitmap(t testing.TB, d uint64) block.Nr { return img.dataBitmap(t, d) }

// MetaBitmap is the bitmap block that holds metadata block m's count.
func (img Image) MetaBitmap(t testing.TB, m uint64) block.Nr { return img.metaBitmap(t, m) }

// FlipSealed flips one bit of block n and reseals it as kind k, so that
// the damage gets past the checksum to the parsers' rules.
func (img Image) FlipSealed(n block.Nr, byteOff int, bit uint, k block.Kind) {
	img.Flip(n, byteOff, bit)
	block.Seal(img.Block(n), k)
}

// ValueOffset is where value i of node n starts in its block, for a leaf
// whose values are vs bytes (8 for an internal node).
func (img Image) ValueOffset(t testing.TB, n block.Nr, vs, i int) int {
	t.Helper()
	nd := img.Node(t, n, vs)
	return 32 + 8*nd.MaxEntries + nd.ValueSize*i
}

// Swap exchanges the bytes of blocks a and b, checksums and claimed
// locations included.
func (img Image) Swap(a, b block.Nr) {
	tmp := append([]byte(nil), img.Block(a)...)
	copy(img.Block(a), img.Block(b))
	copy(img.Block(b), tmp)
}

// FirstLeaf descends from root through the first child of each internal
// node and returns the leaf it reaches and the internal nodes on the way
// (root first).
func (img Image) FirstLeaf(t testing.TB, root block.Nr, vs int) (leaf block.Nr, internal []block.Nr) {
	t.Helper()
	n := root
	for range 16 {
		nd := img.Node(t, n, vs)
		if !nd.Internal {
			return n, internal
		}
		internal = append(internal, n)
		n = nd.Child(0)
	}
	t.Fatalf("tree at %d deeper than 16 levels", root)
	return 0, nil
}

// StaleLeaf is the newest free metadata block that still holds a valid
// leaf with values of vs bytes and at least `least` entries: a node the
// kernel wrote in an earlier transaction and has since replaced. Blocks
// are taken from the top down because the kernel allocates upwards. It
// returns false when no such block survives.
func (img Image) StaleLeaf(t testing.TB, vs, least int) (block.Nr, bool) {
	t.Helper()
	sb := img.Superblock()
	for m := min(sb.MetadataSM.NrBlocks, uint64(img.NrBlocks())) - 1; m > 0; m-- {
		n := block.Nr(m)
		if img.MetaCount(t, m) != 0 || block.KindOf(img.Block(n)) != block.Node {
			continue
		}
		nd, err := btree.ParseNode(img.Block(n), n, vs)
		if err == nil && !nd.Internal && nd.ValueSize == vs && nd.NrEntries >= least {
			return n, true
		}
	}
	return 0, false
}

// CopyNode overwrites node to with the contents of node from, giving the
// copy to's location and a valid checksum: the stale version of a node
// back where the live one was.
func (img Image) CopyNode(from, to block.Nr) {
	b := img.Block(to)
	copy(b, img.Block(from))
	binary.LittleEndian.PutUint64(b[8:], uint64(to))
	block.Seal(b, block.Node)
}

// SharedNode is a metadata block of the tree rooted at the mapping root
// whose stored count is at least 2, or false if there is none.
func (img Image) SharedNode(t testing.TB) (block.Nr, bool) {
	t.Helper()
	sb := img.Superblock()
	top := img.Node(t, sb.MappingRoot, 8)
	for i := range top.NrEntries {
		stack := []block.Nr{top.Child(i)}
		for len(stack) > 0 {
			n := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if img.MetaCount(t, uint64(n)) >= 2 {
				return n, true
			}
			nd := img.Node(t, n, 8)
			if nd.Internal {
				for j := range nd.NrEntries {
					stack = append(stack, nd.Child(j))
				}
			}
		}
	}
	return 0, false
}

// AllocatedData is the first data block whose stored count is at least
// `least`, or false if there is none.
func (img Image) AllocatedData(t testing.TB, least uint8) (uint64, bool) {
	t.Helper()
	sb := img.Superblock()
	for d := range min(sb.DataSM.NrBlocks, spacemap.EntriesPerBitmap) {
		if img.DataCount(t, d) >= least {
			return d, true
		}
	}
	return 0, false
}
