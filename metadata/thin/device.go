package thin

import "encoding/binary"

// DevID is a thin device id (24 bits).
type DevID uint32

// DataBlock is a block number on the data device.
type DataBlock uint64

// VBlock is a virtual block of a thin device.
type VBlock uint64

// DetailsSize is the value size of the device-details tree.
const DetailsSize = 24

// Details is a device's entry in the details tree.
type Details struct {
	MappedBlocks    uint64
	TransactionID   uint64
	CreationTime    uint32
	SnapshottedTime uint32
}

// ParseDetails decodes a 24-byte details value.
func ParseDetails(b []byte) Details {
	le := binary.LittleEndian
	return Details{
		MappedBlocks:    le.Uint64(b[0:]),
		TransactionID:   le.Uint64(b[8:]),
		CreationTime:    le.Uint32(b[16:]),
		SnapshottedTime: le.Uint32(b[20:]),
	}
}

// Put encodes d into the first DetailsSize bytes of b.
func (d Details) Put(b []byte) {
	le := binary.LittleEndian
	le.PutUint64(b[0:], d.MappedBlocks)
	le.PutUint64(b[8:], d.TransactionID)
	le.PutUint32(b[16:], d.CreationTime)
	le.PutUint32(b[20:], d.SnapshottedTime)
}

// BlockTime is a bottom-level mapping value.
type BlockTime uint64

// MakeBlockTime packs a data block and a pool time.
func MakeBlockTime(b DataBlock, time uint32) BlockTime {
	return BlockTime(uint64(b)<<24 | uint64(time&0xFFFFFF))
}

// Block is the data block a mapping points at.
func (bt BlockTime) Block() DataBlock { return DataBlock(bt >> 24) }

// Time is the pool time (24 bits) when the mapping was made.
func (bt BlockTime) Time() uint32 { return uint32(bt & 0xFFFFFF) }

// Mapping is one virtual block of a device and where it lives.
type Mapping struct {
	VBlock VBlock
	Data   DataBlock
	Time   uint32
}
