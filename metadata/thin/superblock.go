package thin

import (
	"encoding/binary"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
)

const (
	// Magic is the superblock's magic number.
	Magic = 27022010
	// Version is the metadata version current kernels write.
	Version = 2
	// FlagNeedsCheck is set by the kernel after a metadata error.
	FlagNeedsCheck = 1
	// MetadataBlockSectors is the metadata block size in 512-byte sectors.
	MetadataBlockSectors = block.Size / 512

	// MinDataBlockSize and MaxDataBlockSize bound data_block_size (sectors).
	MinDataBlockSize = 128
	MaxDataBlockSize = 2097152
	// MaxDevID is the largest thin device id (24 bits).
	MaxDevID = 1<<24 - 1
	// MaxDataBlocks is how many data blocks a block_time can address.
	MaxDataBlocks = 1 << 40
)

// Superblock is the decoded superblock.
type Superblock struct {
	Location          block.Nr
	Flags             uint32
	UUID              [16]byte
	Magic             uint64
	Version           uint32
	Time              uint32
	TransactionID     uint64
	MetadataSnap      block.Nr
	DataSM            spacemap.Root
	MetadataSM        spacemap.Root
	MappingRoot       block.Nr
	DetailsRoot       block.Nr
	DataBlockSize     uint32
	MetadataBlockSize uint32
	MetadataNrBlocks  uint64
	CompatFlags       uint32
	CompatROFlags     uint32
	IncompatFlags     uint32
}

// ParseSuperblock decodes a verified superblock. It checks nothing: the
// checker decides which fields matter.
func ParseSuperblock(b []byte) Superblock {
	le := binary.LittleEndian
	var s Superblock
	s.Flags = le.Uint32(b[4:])
	s.Location = block.Nr(le.Uint64(b[8:]))
	copy(s.UUID[:], b[16:32])
	s.Magic = le.Uint64(b[32:])
	s.Version = le.Uint32(b[40:])
	s.Time = le.Uint32(b[44:])
	s.TransactionID = le.Uint64(b[48:])
	s.MetadataSnap = block.Nr(le.Uint64(b[56:]))
	s.DataSM = spacemap.ParseRoot(b[64:])
	s.MetadataSM = spacemap.ParseRoot(b[192:])
	s.MappingRoot = block.Nr(le.Uint64(b[320:]))
	s.DetailsRoot = block.Nr(le.Uint64(b[328:]))
	s.DataBlockSize = le.Uint32(b[336:])
	s.MetadataBlockSize = le.Uint32(b[340:])
	s.MetadataNrBlocks = le.Uint64(b[344:])
	s.CompatFlags = le.Uint32(b[352:])
	s.CompatROFlags = le.Uint32(b[356:])
	s.IncompatFlags = le.Uint32(b[360:])
	return s
}

// Encode writes s into b (block.Size bytes) at location at and seals it.
func (s *Superblock) Encode(b []byte, at block.Nr) {
	le := binary.LittleEndian
	clear(b[:block.Size])
	le.PutUint32(b[4:], s.Flags)
	le.PutUint64(b[8:], uint64(at))
	copy(b[16:32], s.UUID[:])
	le.PutUint64(b[32:], s.Magic)
	le.PutUint32(b[40:], s.Version)
	le.PutUint32(b[44:], s.Time)
	le.PutUint64(b[48:], s.TransactionID)
	le.PutUint64(b[56:], uint64(s.MetadataSnap))
	s.DataSM.Put(b[64:])
	s.MetadataSM.Put(b[192:])
	le.PutUint64(b[320:], uint64(s.MappingRoot))
	le.PutUint64(b[328:], uint64(s.DetailsRoot))
	le.PutUint32(b[336:], s.DataBlockSize)
	le.PutUint32(b[340:], s.MetadataBlockSize)
	le.PutUint64(b[344:], s.MetadataNrBlocks)
	le.PutUint32(b[352:], s.CompatFlags)
	le.PutUint32(b[356:], s.CompatROFlags)
	le.PutUint32(b[360:], s.IncompatFlags)
	block.Seal(b, block.Superblock)
}

// ReadSuperblock reads and verifies the superblock at n (0 for the live
// one, metadata_snap for the held snapshot).
func ReadSuperblock(r *block.Reader, n block.Nr) (Superblock, error) {
	buf := make([]byte, block.Size)
	if err := r.ReadInto(buf, n, block.Superblock); err != nil {
		return Superblock{}, err
	}
	return ParseSuperblock(buf), nil
}
