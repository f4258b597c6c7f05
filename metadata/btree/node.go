package btree

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
)

const (
	flagInternal = 1
	flagLeaf     = 2

	headerSize = 32
)

var (
	ErrFlags      = fmt.Errorf("%w: node is neither internal nor leaf", block.ErrCorrupt)
	ErrValueSize  = fmt.Errorf("%w: value size mismatch", block.ErrCorrupt)
	ErrMaxEntries = fmt.Errorf("%w: max_entries does not fit the block", block.ErrCorrupt)
	ErrNrEntries  = fmt.Errorf("%w: nr_entries exceeds max_entries", block.ErrCorrupt)
	ErrKeysOrder  = fmt.Errorf("%w: keys out of order", block.ErrCorrupt)
	ErrKeyRange   = fmt.Errorf("%w: key outside the range its parent gives", block.ErrCorrupt)
	ErrEmpty      = fmt.Errorf("%w: internal node without entries", block.ErrCorrupt)
	ErrUnderfull  = errors.New("too few entries in node") // non-fatal: the kernel tolerates it
)

// MaxEntries is the number of entries the kernel puts in a node whose
// values are valueSize bytes: the largest multiple of 3 that fits.
func MaxEntries(valueSize int) int {
	n := (block.Size - headerSize) / (8 + valueSize)
	return n / 3 * 3
}

// Node is a parsed view of one node's bytes. It holds on to the buffer it
// was parsed from: the caller must not reuse that buffer while using Node.
type Node struct {
	b          []byte
	Loc        block.Nr
	Internal   bool
	NrEntries  int
	MaxEntries int
	ValueSize  int
}

// ParseNode checks the header and keys of the node in b, a verified block
// read from location at. Leaves must hold values of leafValueSize bytes;
// internal nodes always hold 8-byte child pointers. Keys must be strictly
// ascending. The checks run in the order the reference checker uses.
func ParseNode(b []byte, at block.Nr, leafValueSize int) (Node, error) {
	if len(b) < block.Size {
		return Node{}, fmt.Errorf("%w: short node", block.ErrCorrupt)
	}
	n := Node{b: b[:block.Size], Loc: at}
	flags := binary.LittleEndian.Uint32(b[4:])
	switch flags {
	case flagInternal:
		n.Internal = true
	case flagLeaf:
	default:
		return Node{}, fmt.Errorf("%w (flags %d)", ErrFlags, flags)
	}
	nr := binary.LittleEndian.Uint32(b[16:])
	max := binary.LittleEndian.Uint32(b[20:])
	vs := binary.LittleEndian.Uint32(b[24:])
	want := uint32(leafValueSize)
	if n.Internal {
		want = 8
	}
	if vs != want {
		return Node{}, fmt.Errorf("%w: expected %d, but got %d", ErrValueSize, want, vs)
	}
	if max == 0 || max%3 != 0 || uint64(max)*uint64(8+vs) > block.Size-headerSize {
		return Node{}, fmt.Errorf("%w: max_entries %d, value size %d", ErrMaxEntries, max, vs)
	}
	if nr > max {
		return Node{}, fmt.Errorf("%w: %d > %d", ErrNrEntries, nr, max)
	}
	if loc := block.Location(b); loc != at {
		return Node{}, fmt.Errorf("%w: actually %d, claims %d", block.ErrLocation, at, loc)
	}
	n.NrEntries, n.MaxEntries, n.ValueSize = int(nr), int(max), int(vs)
	if n.Internal && n.NrEntries == 0 {
		return Node{}, ErrEmpty
	}
	keys := b[headerSize : headerSize+8*n.NrEntries]
	for i := 8; i < len(keys); i += 8 {
		if binary.LittleEndian.Uint64(keys[i:]) <= binary.LittleEndian.Uint64(keys[i-8:]) {
			j := i / 8
			return Node{}, fmt.Errorf("%w: key %d (%d) <= key %d (%d)", ErrKeysOrder, j, n.Key(j), j-1, n.Key(j-1))
		}
	}
	return n, nil
}

// Values is the packed values of the first NrEntries entries.
func (n Node) Values() []byte {
	off := headerSize + 8*n.MaxEntries
	return n.b[off : off+n.ValueSize*n.NrEntries]
}

// Keys is the packed little-endian keys of the first NrEntries entries.
func (n Node) Keys() []byte { return n.b[headerSize : headerSize+8*n.NrEntries] }

// Key is the i-th key, i < NrEntries.
func (n Node) Key(i int) uint64 { return binary.LittleEndian.Uint64(n.b[headerSize+8*i:]) }

// Value is the i-th value's bytes, i < NrEntries.
func (n Node) Value(i int) []byte {
	off := headerSize + 8*n.MaxEntries + n.ValueSize*i
	return n.b[off : off+n.ValueSize]
}

// U64 is the i-th value read as a little-endian uint64: a child pointer in
// an internal node, a block_time or block number in a mapping leaf.
func (n Node) U64(i int) uint64 {
	return binary.LittleEndian.Uint64(n.b[headerSize+8*n.MaxEntries+8*i:])
}

// Child is the i-th child of an internal node.
func (n Node) Child(i int) block.Nr { return block.Nr(n.U64(i)) }

// MinEntries is the fill the kernel keeps in every node but the root.
func (n Node) MinEntries() int { return n.MaxEntries / 3 }

// Encode writes a node at location at into b (block.Size bytes): a leaf
// whose values, valueSize bytes each, are packed in vals, or an internal
// node when internal is set (valueSize 8, vals the child pointers). It seals
// the checksum. len(keys) must not exceed MaxEntries(valueSize).
func Encode(b []byte, at block.Nr, internal bool, keys []uint64, vals []byte, valueSize int) {
	clear(b[:block.Size])
	max := MaxEntries(valueSize)
	flags := uint32(flagLeaf)
	if internal {
		flags = flagInternal
	}
	binary.LittleEndian.PutUint32(b[4:], flags)
	binary.LittleEndian.PutUint64(b[8:], uint64(at))
	binary.LittleEndian.PutUint32(b[16:], uint32(len(keys)))
	binary.LittleEndian.PutUint32(b[20:], uint32(max))
	binary.LittleEndian.PutUint32(b[24:], uint32(valueSize))
	for i, k := range keys {
		binary.LittleEndian.PutUint64(b[headerSize+8*i:], k)
	}
	copy(b[headerSize+8*max:], vals[:len(keys)*valueSize])
	block.Seal(b, block.Node)
}
