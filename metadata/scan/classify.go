package scan

import (
	"encoding/binary"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// nodeKind is what a valid b-tree node holds, judged from its own bytes.
type nodeKind uint8

const (
	kindNone     nodeKind = iota // not a valid node
	kindInternal                 // child pointers; typed later from its children
	kindMapping                  // 8-byte leaf values: block_times, or block numbers for a top-level leaf
	kindDetails                  // 24-byte device details
	kindIndex                    // 16-byte data space-map index entries
	kindOverflow                 // 4-byte reference counts
)

// limits bound what a block_time may hold. Zero fields mean unknown.
type limits struct {
	nrBlocks     uint64 // metadata blocks scanned: child pointers must be below
	nrDataBlocks uint64 // data blocks; 0 = unknown
	time         uint32 // newest pool time a mapping may carry, if hasTime
	hasTime      bool
}

// facts is what the classifier learns from one block on its own.
type facts struct {
	block block.Kind // which salt fits (Unknown if none, or if the location is wrong)
	kind  nodeKind   // for block.Node: what the node holds
	n     int        // nr_entries
	lo    uint64     // first key, if n > 0
	hi    uint64     // last key, if n > 0

	// Mapping leaves read as block_times, and details leaves.
	maxData   uint64 // mapping leaves: highest data block
	maxTid    uint64 // details leaves: highest transaction id
	age       uint32 // newest time: block_time times, or creation/snapshot times
	atAge     uint32 // mapping leaves: entries whose time is age
	mapped    uint64 // details leaves: sum of mapped_blocks
	plausible bool   // mapping leaves: every block_time fits the limits
	maybeTop  bool   // mapping leaves: could be a top-level leaf (ids as keys, block numbers as values)
	badIDs    bool   // details leaves: a key exceeds 24 bits
}

// classify judges block b, read from location at, on its own bytes. It
// computes one checksum and reads no more than the block. It never panics,
// whatever b holds; a b shorter than block.Size is not a structure. For a
// valid node it also returns the parsed node, which refers to b.
func classify(b []byte, at block.Nr, lim *limits) (facts, btree.Node) {
	var f facts
	if len(b) < block.Size {
		return f, btree.Node{}
	}
	k := block.KindOf(b)
	if k == block.Unknown || block.Location(b) != at {
		return f, btree.Node{}
	}
	f.block = k
	if k != block.Node {
		return f, btree.Node{}
	}
	vs := int(le32(b[24:]))
	switch vs {
	case 8, thin.DetailsSize, spacemap.IndexEntrySize, 4:
	default:
		f.block = block.Unknown
		return f, btree.Node{}
	}
	if le32(b[4:]) == 1 { // internal: ParseNode wants the value size 8
		vs = 8
	}
	n, err := btree.ParseNode(b, at, vs)
	if err != nil {
		f.block = block.Unknown
		return f, btree.Node{}
	}
	f.n = n.NrEntries
	if f.n > 0 {
		f.lo, f.hi = n.Key(0), n.Key(f.n-1)
	}
	switch {
	case n.Internal:
		f.kind = kindInternal
	case vs == 8:
		f.kind = kindMapping
		mappingLeaf(&f, n, lim)
	case vs == thin.DetailsSize:
		f.kind = kindDetails
		f.badIDs = f.n > 0 && f.hi > thin.MaxDevID
		for i := range f.n {
			d := thin.ParseDetails(n.Value(i))
			f.mapped += d.MappedBlocks
			f.maxTid = max(f.maxTid, d.TransactionID)
			f.age = max(f.age, d.CreationTime, d.SnapshottedTime)
		}
	case vs == spacemap.IndexEntrySize:
		f.kind = kindIndex
	default:
		f.kind = kindOverflow
	}
	return f, n
}

// mappingLeaf reads the values of an 8-byte leaf both ways: as block_times
// of a device's tree, and as the block numbers of a top-level leaf.
func mappingLeaf(f *facts, n btree.Node, lim *limits) {
	// The loop runs for every entry of every leaf on the device: keep it
	// to plain loads and compares.
	maxData, maxTime := uint64(1<<40), uint32(0xFFFFFF)
	if lim.nrDataBlocks != 0 {
		maxData = min(maxData, lim.nrDataBlocks)
	}
	if lim.hasTime {
		maxTime = lim.time
	}
	top := f.n > 0 && f.hi <= thin.MaxDevID
	var hiData, hiTime uint64
	vals := n.Values()
	for b := vals; len(b) >= 8; b = b[8:] {
		v := binary.LittleEndian.Uint64(b)
		top = top && v < lim.nrBlocks
		hiData = max(hiData, v>>24)
		hiTime = max(hiTime, v&0xFFFFFF)
	}
	var at uint32
	for b := vals; len(b) >= 8; b = b[8:] {
		if binary.LittleEndian.Uint64(b)&0xFFFFFF == hiTime {
			at++
		}
	}
	f.maxData, f.age, f.atAge = hiData, uint32(hiTime), at
	f.plausible = f.n == 0 || hiData < maxData && uint32(hiTime) <= maxTime
	f.maybeTop = top
}

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}
