package repair

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/xml"
)

// fileValues are the pool values a dump or a metadata backup holds: what
// Options.ValuesFrom gives where the superblock is lost.
type fileValues struct {
	path string
	kind string // what the file is, for the report
	// The values; nrData is 0 when the file gives none (a dump of a held
	// metadata snapshot prints nr_data_blocks 0).
	transactionID uint64
	dataBlockSize uint32
	nrData        uint64
	time          uint32
}

// source is how a Value taken from the file names its origin.
func (f *fileValues) source() string { return "--values-from " + f.path }

// errStopAtSuperblock ends reading a dump once its superblock is read.
var errStopAtSuperblock = errors.New("superblock read")

// readValuesFile reads the pool values of the file at path: a dump
// (thin_dump XML of 0.9.0 or 1.x, or this tool's dump in any of its
// formats) or metadata whose superblock is readable (a backup, or a
// copy made before the damage). Only the superblock is read: a dump's
// first element, a backup's block 0.
func readValuesFile(path string) (*fileValues, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--values-from: %w", err)
	}
	defer f.Close()
	head := make([]byte, block.Size)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("--values-from %s: %w", path, err)
	}
	head = head[:n]
	fv := &fileValues{path: path}
	if n == block.Size && block.KindOf(head) == block.Superblock {
		sb := thin.ParseSuperblock(head)
		if sb.Location != 0 || sb.Magic != thin.Magic {
			return nil, fmt.Errorf("--values-from %s: block 0 is a superblock copy of block %d with magic %d, not a pool's superblock; give a dump or a copy of the whole metadata device", path, sb.Location, sb.Magic)
		}
		fv.kind = "metadata whose superblock is readable"
		fv.transactionID, fv.dataBlockSize, fv.nrData, fv.time = sb.TransactionID, sb.DataBlockSize, sb.DataSM.NrBlocks, sb.Time
		return fv, nil
	}
	text := bytes.TrimLeft(bytes.TrimPrefix(head, []byte("\xef\xbb\xbf")), " \t\r\n")
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("--values-from %s: %w", path, err)
	}
	var sb xml.Superblock
	switch {
	case bytes.HasPrefix(text, []byte("<")):
		fv.kind = "an XML dump"
		sb, err = xmlSuperblock(f)
	case bytes.HasPrefix(text, []byte("{")):
		fv.kind = "a JSON dump"
		sb, err = jsonSuperblock(f)
	case bytes.HasPrefix(text, []byte("begin superblock:")):
		fv.kind = "a human_readable dump"
		sb, err = textSuperblock(f)
	default:
		return nil, fmt.Errorf("--values-from %s: neither a dump (thin_dump XML, or 'docker devmapper dump' output) nor metadata with a readable superblock; give a dump made before the damage, or a backup of the metadata device", path)
	}
	if err != nil {
		return nil, fmt.Errorf("--values-from %s: %s with no readable superblock element: %w", path, fv.kind, err)
	}
	fv.transactionID, fv.dataBlockSize, fv.nrData, fv.time = sb.TransactionID, sb.DataBlockSize, sb.NrDataBlocks, sb.Time
	return fv, nil
}

// superblockOnly is an xml.Visitor that keeps the superblock and stops.
type superblockOnly struct {
	sb   xml.Superblock
	seen bool
}

func (v *superblockOnly) Superblock(sb xml.Superblock) error {
	v.sb, v.seen = sb, true
	return errStopAtSuperblock
}
func (*superblockOnly) BeginDevice(thin.DevID, thin.Details) error { return errStopAtSuperblock }
func (*superblockOnly) Run(uint64, uint64, uint64, uint32) error   { return errStopAtSuperblock }
func (*superblockOnly) EndDevice() error                           { return errStopAtSuperblock }
func (*superblockOnly) BeginDef(string) error                      { return errStopAtSuperblock }
func (*superblockOnly) EndDef() error                              { return errStopAtSuperblock }
func (*superblockOnly) Ref(string) error                           { return errStopAtSuperblock }
func (*superblockOnly) End() error                                 { return errStopAtSuperblock }

// xmlSuperblock reads the superblock element that opens an XML dump.
func xmlSuperblock(r io.Reader) (xml.Superblock, error) {
	var v superblockOnly
	err := xml.Read(r, &v)
	switch {
	case v.seen:
		return v.sb, nil
	case err == nil || errors.Is(err, errStopAtSuperblock):
		return v.sb, errors.New("the document has no superblock element")
	}
	return v.sb, err
}

// jsonSuperblock reads the "superblock" object that opens a JSON dump.
func jsonSuperblock(r io.Reader) (xml.Superblock, error) {
	var sb xml.Superblock
	dec := json.NewDecoder(r)
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return sb, errors.New("the document is no JSON object")
	}
	if t, err := dec.Token(); err != nil || t != "superblock" {
		return sb, errors.New(`the object does not open with "superblock"`)
	}
	var v struct {
		Time          *uint32 `json:"time"`
		Transaction   *uint64 `json:"transaction"`
		DataBlockSize *uint32 `json:"data_block_size"`
		NrDataBlocks  *uint64 `json:"nr_data_blocks"`
	}
	if err := dec.Decode(&v); err != nil {
		return sb, err
	}
	if v.Time == nil || v.Transaction == nil || v.DataBlockSize == nil || v.NrDataBlocks == nil {
		return sb, errors.New("the superblock lacks time, transaction, data_block_size or nr_data_blocks")
	}
	sb.Time, sb.TransactionID, sb.DataBlockSize, sb.NrDataBlocks = *v.Time, *v.Transaction, *v.DataBlockSize, *v.NrDataBlocks
	return sb, nil
}

// textSuperblock reads the first line of a human_readable dump:
//
//	begin superblock: "UUID", TIME, TRANSACTION, FLAGS, VERSION, DATA_BLOCK_SIZE, NR_DATA_BLOCKS
func textSuperblock(r io.Reader) (xml.Superblock, error) {
	var sb xml.Superblock
	line, err := bufio.NewReader(io.LimitReader(r, 1<<16)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return sb, err
	}
	line = strings.TrimSpace(line)
	// The uuid is quoted and may hold anything but a quote; the numbers
	// follow its closing quote.
	_, rest, ok := strings.Cut(line, `"`)
	if ok {
		_, rest, ok = strings.Cut(rest, `"`)
	}
	fields := strings.Split(strings.TrimPrefix(rest, ","), ",")
	if !ok || len(fields) != 6 {
		return sb, fmt.Errorf("the first line %q is not a superblock line", truncateLine(line))
	}
	var nums [6]uint64
	for i, f := range fields {
		v, err := strconv.ParseUint(strings.TrimSpace(f), 10, 64)
		if err != nil {
			return sb, fmt.Errorf("the first line %q has a bad number %q", truncateLine(line), strings.TrimSpace(f))
		}
		nums[i] = v
	}
	if nums[0] > 0xFFFFFF || nums[4] > 0xFFFFFFFF {
		return sb, fmt.Errorf("the first line %q has a time or data block size out of range", truncateLine(line))
	}
	sb.Time, sb.TransactionID, sb.DataBlockSize, sb.NrDataBlocks = uint32(nums[0]), nums[1], uint32(nums[4]), nums[5]
	return sb, nil
}

func truncateLine(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
