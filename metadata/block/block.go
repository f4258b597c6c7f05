package block

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Size is the size of a metadata block in bytes.
const Size = 4096

// Nr is the number of a metadata block: its byte offset divided by Size.
type Nr uint64

// Kind says which structure a block holds. Each kind has its own checksum salt.
type Kind uint8

const (
	Unknown    Kind = iota // no salt fits
	Superblock             // the superblock, or the metadata snapshot's copy of it
	Node                   // a b-tree node of any tree
	Bitmap                 // a space-map bitmap, data or metadata
	Index                  // the metadata space map's index block
)

var salts = [...]uint32{
	Superblock: 160774,
	Node:       121107,
	Bitmap:     240779,
	Index:      160478,
}

func (k Kind) String() string {
	switch k {
	case Superblock:
		return "superblock"
	case Node:
		return "btree node"
	case Bitmap:
		return "bitmap"
	case Index:
		return "space map index"
	}
	return "unknown"
}

// Salt is the value XORed into the checksum of blocks of kind k.
func (k Kind) Salt() uint32 {
	if int(k) < len(salts) {
		return salts[k]
	}
	return 0
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// raw is the kernel's crc32c over b[4:]: seeded with ~0 and not inverted at
// the end. Go's Checksum inverts, so invert back.
func raw(b []byte) uint32 {
	return crc32.Checksum(b[4:Size], castagnoli) ^ 0xFFFFFFFF
}

// Sum is the checksum a block of kind k with contents b must carry.
func Sum(b []byte, k Kind) uint32 { return raw(b) ^ k.Salt() }

// Stored is the checksum recorded in the first four bytes of b.
func Stored(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }

// Location is the block number recorded at offset 8 of b.
func Location(b []byte) Nr { return Nr(binary.LittleEndian.Uint64(b[8:])) }

// KindOf says which kind's salt makes the stored checksum of b fit, or
// Unknown. It computes one CRC whatever the answer.
func KindOf(b []byte) Kind {
	x := raw(b) ^ Stored(b)
	for k := Superblock; k <= Index; k++ {
		if x == salts[k] {
			return k
		}
	}
	return Unknown
}

// Seal writes the checksum of kind k into the first four bytes of b.
func Seal(b []byte, k Kind) { binary.LittleEndian.PutUint32(b, Sum(b, k)) }

// ErrCorrupt marks every error caused by bad metadata rather than failed I/O.
var ErrCorrupt = errors.New("corrupt metadata")

var (
	// ErrChecksum: the stored checksum does not fit the block's contents.
	ErrChecksum = fmt.Errorf("%w: bad checksum", ErrCorrupt)
	// ErrLocation: the block records another block number than where it lies.
	ErrLocation = fmt.Errorf("%w: block number mismatch", ErrCorrupt)
	// ErrOutOfRange: a pointer names a block past the end of the device.
	ErrOutOfRange = fmt.Errorf("%w: block past the end of the metadata device", ErrCorrupt)
)

// Error places a block-level problem.
type Error struct {
	Nr  Nr
	Err error
}

func (e *Error) Error() string { return fmt.Sprintf("block %d: %v", e.Nr, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// Reader reads verified blocks from an io.ReaderAt. It is safe for
// concurrent use when the underlying ReaderAt is (an *os.File is).
type Reader struct {
	ra  io.ReaderAt
	len Nr
}

// NewReader reads blocks from ra, which holds size bytes. A partial block
// at the end is ignored.
func NewReader(ra io.ReaderAt, size int64) *Reader {
	if size < 0 {
		size = 0
	}
	return &Reader{ra: ra, len: Nr(size / Size)}
}

// Len is the number of whole blocks the device holds.
func (r *Reader) Len() Nr { return r.len }

// ReadRaw fills buf, whose length must be a multiple of Size, with the blocks
// starting at n, without checking anything but the range.
func (r *Reader) ReadRaw(buf []byte, n Nr) error {
	cnt := Nr(len(buf) / Size)
	if n >= r.len || cnt > r.len-n {
		return &Error{Nr: n, Err: ErrOutOfRange}
	}
	if _, err := r.ra.ReadAt(buf, int64(n)*Size); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return &Error{Nr: n, Err: err}
	}
	return nil
}

// ReadInto fills buf with block n and checks that it carries the checksum
// of kind want and its own location.
func (r *Reader) ReadInto(buf []byte, n Nr, want Kind) error {
	if err := r.ReadRaw(buf[:Size], n); err != nil {
		return err
	}
	return Verify(buf, n, want)
}

// Verify checks that b is a block of kind want lying at n.
func Verify(b []byte, n Nr, want Kind) error {
	if Stored(b) != Sum(b, want) {
		if got := KindOf(b); got != Unknown {
			return &Error{Nr: n, Err: fmt.Errorf("%w: expected a %v, found a %v", ErrChecksum, want, got)}
		}
		return &Error{Nr: n, Err: fmt.Errorf("%w in %v", ErrChecksum, want)}
	}
	if loc := Location(b); loc != n {
		return &Error{Nr: n, Err: fmt.Errorf("%w: actually %d, claims %d", ErrLocation, n, loc)}
	}
	return nil
}
