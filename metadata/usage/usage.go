package usage

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// Device is one thin device and the data it holds.
type Device struct {
	ID        thin.DevID
	Details   thin.Details
	Mapped    uint64 // data blocks the device maps
	Exclusive uint64 // of those, blocks no other device maps
	Shared    uint64 // Mapped - Exclusive
}

// Result is the usage of every device of one superblock.
type Result struct {
	Superblock thin.Superblock
	Devices    []Device // by id
	// InUse is the number of distinct data blocks the devices map; shared
	// blocks count once.
	InUse uint64
}

// Options choose which trees to read.
type Options struct {
	// MetadataSnap reads the held metadata snapshot instead of the live
	// trees.
	MetadataSnap bool
}

// ErrDamaged wraps the damage that stopped a run.
var ErrDamaged = errors.New("the metadata is damaged: run 'docker devmapper check' for details")

// node kinds in the flat per-block array.
const (
	unread uint8 = iota
	leafNode
	internalNode
)

// Run computes the usage of every device. Memory: a few bytes per
// metadata block and four per data block.
func Run(ctx context.Context, r *block.Reader, opts Options) (*Result, error) {
	sb, err := thin.ReadSuperblock(r, 0)
	if err != nil {
		return nil, fmt.Errorf("reading the superblock: %w", err)
	}
	// A snapshot's copy of the superblock has no space-map roots: the
	// data device's size comes from the live one.
	nrData := sb.DataSM.NrBlocks
	if opts.MetadataSnap {
		if sb, err = thin.ReadHeldSnapshot(r); err != nil {
			return nil, err
		}
	}
	devs, err := thin.NewWalker(r, sb).Devices()
	if err != nil {
		return nil, damaged(err)
	}
	nrMeta := min(block.Nr(sb.MetadataSM.NrBlocks), r.Len())
	if opts.MetadataSnap {
		nrMeta = r.Len() // a snapshot's copy has no space-map roots
	}
	u := &run{r: r, kind: make([]uint8, nrMeta), entries: make([]uint16, nrMeta), reach: make([]uint32, nrMeta),
		internals: map[block.Nr][]block.Nr{}, buf: make([]byte, block.Size)}
	res := &Result{Superblock: sb}
	devLeaves := make([][]block.Nr, len(devs))
	for i, d := range devs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if d.HasRoot {
			if devLeaves[i], err = u.leaves(d.Root, 0); err != nil {
				return nil, damaged(fmt.Errorf("device %d: %w", d.ID, err))
			}
			for _, l := range devLeaves[i] {
				u.reach[l]++
			}
		}
	}
	var distinct []block.Nr
	for n, k := range u.kind {
		if k == leafNode {
			distinct = append(distinct, block.Nr(n))
		}
	}
	// How many devices map each data block. A mapping past the end of the
	// data device is damage.
	mapped := make([]uint32, nrData)
	err = r.ReadEach(ctx, distinct, func(_ int, n block.Nr, b []byte) error {
		vals, err := leafValues(b, n)
		if err != nil {
			return err
		}
		u.entries[n] = uint16(len(vals) / 8) // each call has its own n
		k := u.reach[n]
		for off := 0; off < len(vals); off += 8 {
			d := thin.BlockTime(binary.LittleEndian.Uint64(vals[off:])).Block()
			if uint64(d) >= nrData {
				return fmt.Errorf("%w: leaf %d maps data block %d, past the %d the pool has", block.ErrCorrupt, n, d, nrData)
			}
			atomic.AddUint32(&mapped[d], k)
		}
		return nil
	})
	if err != nil {
		return nil, damaged(err)
	}
	// Exclusive blocks can only sit in leaves one device reaches.
	var private []block.Nr
	for _, n := range distinct {
		if u.reach[n] == 1 {
			private = append(private, n)
		}
	}
	excl := make([]uint32, nrMeta)
	err = r.ReadEach(ctx, private, func(_ int, n block.Nr, b []byte) error {
		vals, err := leafValues(b, n)
		if err != nil {
			return err
		}
		var c uint32
		for off := 0; off < len(vals); off += 8 {
			if mapped[thin.BlockTime(binary.LittleEndian.Uint64(vals[off:])).Block()] == 1 {
				c++
			}
		}
		excl[n] = c // each call has its own n
		return nil
	})
	if err != nil {
		return nil, damaged(err)
	}
	for _, m := range mapped {
		if m > 0 {
			res.InUse++
		}
	}
	for i, d := range devs {
		dev := Device{ID: d.ID, Details: d.Details}
		for _, l := range devLeaves[i] {
			dev.Mapped += uint64(u.entries[l])
			dev.Exclusive += uint64(excl[l])
		}
		dev.Shared = dev.Mapped - dev.Exclusive
		res.Devices = append(res.Devices, dev)
	}
	return res, nil
}

func damaged(err error) error {
	if errors.Is(err, block.ErrCorrupt) {
		return fmt.Errorf("%w (%v)", ErrDamaged, err)
	}
	return err
}

// leafValues checks a bottom leaf read in bulk and returns its values.
func leafValues(b []byte, n block.Nr) ([]byte, error) {
	if err := block.Verify(b, n, block.Node); err != nil {
		return nil, err
	}
	nd, err := btree.ParseNode(b, n, 8)
	if err != nil {
		return nil, fmt.Errorf("block %d: %w", n, err)
	}
	if nd.Internal {
		return nil, fmt.Errorf("%w: block %d changed from leaf to internal", block.ErrCorrupt, n)
	}
	return nd.Values(), nil
}

// run holds what one Run learns about the nodes.
type run struct {
	r         *block.Reader
	kind      []uint8
	entries   []uint16
	reach     []uint32 // devices whose tree holds the leaf
	internals map[block.Nr][]block.Nr
	buf       []byte
}

// leaves lists the bottom leaves under n, reading each node only the first
// time any device reaches it.
func (u *run) leaves(n block.Nr, depth int) ([]block.Nr, error) {
	if depth >= thin.MaxDepth {
		return nil, fmt.Errorf("%w: tree deeper than %d levels at block %d", block.ErrCorrupt, thin.MaxDepth, n)
	}
	if n >= block.Nr(len(u.kind)) {
		return nil, fmt.Errorf("%w: block %d past the end of the metadata", block.ErrCorrupt, n)
	}
	switch u.kind[n] {
	case leafNode:
		return []block.Nr{n}, nil
	case internalNode:
		return u.under(u.internals[n], depth)
	}
	internal, err := u.read(n)
	if err != nil {
		return nil, err
	}
	if !internal {
		return []block.Nr{n}, nil
	}
	kids := u.internals[n]
	// Every leaf of a b-tree is at the same depth, so when the first
	// child is a leaf they all are: the leaves are read later, in bulk and
	// in block order, not here one by one. (Should one be internal after
	// all, the bulk pass says the metadata is damaged.)
	if first := kids[0]; first < block.Nr(len(u.kind)) && u.kind[first] == unread {
		firstInternal, err := u.read(first)
		if err != nil {
			return nil, err
		}
		if !firstInternal {
			for _, k := range kids {
				if k >= block.Nr(len(u.kind)) {
					return nil, fmt.Errorf("%w: block %d past the end of the metadata", block.ErrCorrupt, k)
				}
				if u.kind[k] == unread {
					u.kind[k] = leafNode
				}
			}
		}
	}
	return u.under(kids, depth)
}

// read reads node n, records what it is, and says whether it is internal.
func (u *run) read(n block.Nr) (bool, error) {
	if err := u.r.ReadInto(u.buf, n, block.Node); err != nil {
		return false, err
	}
	nd, err := btree.ParseNode(u.buf, n, 8)
	if err != nil {
		return false, fmt.Errorf("block %d: %w", n, err)
	}
	if !nd.Internal {
		u.kind[n] = leafNode
		return false, nil
	}
	kids := make([]block.Nr, nd.NrEntries)
	for i := range kids {
		kids[i] = nd.Child(i)
	}
	u.kind[n] = internalNode
	u.internals[n] = kids
	return true, nil
}

func (u *run) under(kids []block.Nr, depth int) ([]block.Nr, error) {
	var out []block.Nr
	for _, k := range kids {
		ls, err := u.leaves(k, depth+1)
		if err != nil {
			return nil, err
		}
		out = append(out, ls...)
	}
	return out, nil
}
