package xml

import (
	"bufio"
	stdjson "encoding/json"
	"fmt"
	"io"
	"strconv"

	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// Format selects what a Writer prints.
type Format uint8

const (
	// XML is thin_dump 0.9.0's XML, byte for byte.
	XML Format = iota
	// HumanReadable is thin_dump 0.9.0's -f human_readable.
	HumanReadable
	// JSON is this project's rendering of the same content:
	//
	//	{
	//	  "superblock": {"uuid": "", "time": 1, "transaction": 8, "flags": 0, "version": 2, "data_block_size": 8192, "nr_data_blocks": 4096},
	//	  "devices": [
	//	    {"dev_id": 0, "mapped_blocks": 9, "transaction": 0, "creation_time": 0, "snap_time": 1, "mappings": [
	//	      {"origin_begin": 0, "data_begin": 8, "length": 1, "time": 1},
	//	      {"origin_begin": 9472, "data_begin": 1, "length": 1, "time": 0}
	//	    ]},
	//	    {"dev_id": 9, "mapped_blocks": 0, "transaction": 7, "creation_time": 1, "snap_time": 1, "mappings": []}
	//	  ]
	//	}
	//
	// Mappings are maximal runs, as in the XML; the layout (one device
	// header and one run per line) is stable. A dump without mappings
	// (Writer.SkipMappings) has no "mappings" key.
	JSON
)

var formatNames = [...]string{XML: "xml", HumanReadable: "human_readable", JSON: "json"}

func (f Format) String() string {
	if int(f) < len(formatNames) {
		return formatNames[f]
	}
	return "unknown"
}

// ParseFormat maps "xml", "human_readable" or "json" to a Format.
func ParseFormat(s string) (Format, error) {
	for f, n := range formatNames {
		if n == s {
			return Format(f), nil
		}
	}
	return 0, fmt.Errorf("unknown format %q (want xml, human_readable or json)", s)
}

// bufSize is the Writer's buffer: a few big writes instead of one per line.
const bufSize = 1 << 20

// Writer prints a dump in one Format. It implements Visitor for devices
// and runs, merging adjacent runs as thin_dump does; it rejects defs and
// refs with ErrDefRef (wrap it with Expand to print 1.x input). It buffers
// 1 MiB and writes to the underlying writer only when the buffer fills and
// at End. Not safe for concurrent use.
type Writer struct {
	// SkipMappings, set before the first call, makes JSON leave the
	// "mappings" key out of every device, for dumps made without mappings
	// (an empty list would claim the devices map nothing). XML and
	// human_readable look the same either way.
	SkipMappings bool

	bw   *bufio.Writer
	f    Format
	line []byte // scratch for one line, reused

	cur     run
	haveRun bool
	nDev    int // devices begun, for JSON commas
	nRun    int // runs printed in this device, for JSON commas
}

// NewWriter returns a Writer printing f to w.
func NewWriter(w io.Writer, f Format) *Writer {
	return &Writer{bw: bufio.NewWriterSize(w, bufSize), f: f, line: make([]byte, 0, 256)}
}

// Superblock prints the opening of the dump.
func (w *Writer) Superblock(sb Superblock) error {
	b := w.line[:0]
	switch w.f {
	case XML:
		b = append(b, `<superblock uuid="`...)
		b = appendEscaped(b, sb.UUID)
		b = appendAttr(b, `" time="`, uint64(sb.Time))
		b = appendAttr(b, `" transaction="`, sb.TransactionID)
		b = appendAttr(b, `" flags="`, uint64(sb.Flags))
		b = appendAttr(b, `" version="`, uint64(sb.Version))
		b = appendAttr(b, `" data_block_size="`, uint64(sb.DataBlockSize))
		b = appendAttr(b, `" nr_data_blocks="`, sb.NrDataBlocks)
		b = append(b, "\">\n"...)
	case HumanReadable:
		b = append(b, `begin superblock: "`...)
		b = append(b, sb.UUID...)
		b = appendAttr(b, `", `, uint64(sb.Time))
		b = appendAttr(b, `, `, sb.TransactionID)
		b = appendAttr(b, `, `, uint64(sb.Flags))
		b = appendAttr(b, `, `, uint64(sb.Version))
		b = appendAttr(b, `, `, uint64(sb.DataBlockSize))
		b = appendAttr(b, `, `, sb.NrDataBlocks)
		b = append(b, '\n')
	case JSON:
		uuid, err := stdjson.Marshal(sb.UUID)
		if err != nil {
			return err
		}
		b = append(b, "{\n  \"superblock\": {\"uuid\": "...)
		b = append(b, uuid...)
		b = appendAttr(b, `, "time": `, uint64(sb.Time))
		b = appendAttr(b, `, "transaction": `, sb.TransactionID)
		b = appendAttr(b, `, "flags": `, uint64(sb.Flags))
		b = appendAttr(b, `, "version": `, uint64(sb.Version))
		b = appendAttr(b, `, "data_block_size": `, uint64(sb.DataBlockSize))
		b = appendAttr(b, `, "nr_data_blocks": `, sb.NrDataBlocks)
		b = append(b, "},\n  \"devices\": ["...)
	}
	return w.write(b)
}

// BeginDevice prints a device's header.
func (w *Writer) BeginDevice(id thin.DevID, d thin.Details) error {
	b := w.line[:0]
	switch w.f {
	case XML:
		b = appendAttr(b, `  <device dev_id="`, uint64(id))
		b = appendAttr(b, `" mapped_blocks="`, d.MappedBlocks)
		b = appendAttr(b, `" transaction="`, d.TransactionID)
		b = appendAttr(b, `" creation_time="`, uint64(d.CreationTime))
		b = appendAttr(b, `" snap_time="`, uint64(d.SnapshottedTime))
		b = append(b, "\">\n"...)
	case HumanReadable:
		b = appendAttr(b, "device: ", uint64(id))
		b = appendAttr(b, "\nmapped_blocks: ", d.MappedBlocks)
		b = appendAttr(b, "\ntransaction: ", d.TransactionID)
		b = appendAttr(b, "\ncreation time: ", uint64(d.CreationTime))
		b = appendAttr(b, "\nsnap time: ", uint64(d.SnapshottedTime))
		b = append(b, '\n')
	case JSON:
		if w.nDev > 0 {
			b = append(b, ',')
		}
		b = appendAttr(b, "\n    {\"dev_id\": ", uint64(id))
		b = appendAttr(b, `, "mapped_blocks": `, d.MappedBlocks)
		b = appendAttr(b, `, "transaction": `, d.TransactionID)
		b = appendAttr(b, `, "creation_time": `, uint64(d.CreationTime))
		b = appendAttr(b, `, "snap_time": `, uint64(d.SnapshottedTime))
		if !w.SkipMappings {
			b = append(b, `, "mappings": [`...)
		}
	}
	w.nDev++
	w.nRun = 0
	w.haveRun = false
	return w.write(b)
}

// Run adds length blocks from originBegin, mapped to dataBegin onwards at
// time. It prints the run before it when this one does not continue it.
func (w *Writer) Run(originBegin, dataBegin, length uint64, time uint32) error {
	c := &w.cur
	if w.haveRun && originBegin == c.origin+c.length && dataBegin == c.data+c.length && time == c.time {
		c.length += length
		return nil
	}
	if w.haveRun {
		if err := w.flushRun(); err != nil {
			return err
		}
	}
	*c = run{originBegin, dataBegin, length, time}
	w.haveRun = true
	return nil
}

func (w *Writer) flushRun() error {
	c := w.cur
	w.haveRun = false
	b := w.line[:0]
	switch w.f {
	case XML:
		if c.length == 1 {
			b = appendAttr(b, `    <single_mapping origin_block="`, c.origin)
			b = appendAttr(b, `" data_block="`, c.data)
		} else {
			b = appendAttr(b, `    <range_mapping origin_begin="`, c.origin)
			b = appendAttr(b, `" data_begin="`, c.data)
			b = appendAttr(b, `" length="`, c.length)
		}
		b = appendAttr(b, `" time="`, uint64(c.time))
		b = append(b, "\"/>\n"...)
	case HumanReadable:
		if c.length == 1 {
			b = appendAttr(b, "    ", c.origin)
			b = appendAttr(b, " -> ", c.data)
		} else {
			b = appendAttr(b, "    (", c.origin)
			b = appendAttr(b, "..", c.origin+c.length-1)
			b = appendAttr(b, ") -> (", c.data)
			b = appendAttr(b, "..", c.data+c.length-1)
			b = append(b, ')')
		}
		b = appendAttr(b, ", ", uint64(c.time))
		b = append(b, '\n')
	case JSON:
		if w.nRun > 0 {
			b = append(b, ',')
		}
		b = appendAttr(b, "\n      {\"origin_begin\": ", c.origin)
		b = appendAttr(b, `, "data_begin": `, c.data)
		b = appendAttr(b, `, "length": `, c.length)
		b = appendAttr(b, `, "time": `, uint64(c.time))
		b = append(b, '}')
	}
	w.nRun++
	return w.write(b)
}

// EndDevice prints the last run and closes the device.
func (w *Writer) EndDevice() error {
	if w.haveRun {
		if err := w.flushRun(); err != nil {
			return err
		}
	}
	switch w.f {
	case XML:
		return w.write(append(w.line[:0], "  </device>\n"...))
	case HumanReadable:
		return w.write(append(w.line[:0], '\n'))
	case JSON:
		switch {
		case w.SkipMappings:
			return w.write(append(w.line[:0], '}'))
		case w.nRun > 0:
			return w.write(append(w.line[:0], "\n    ]}"...))
		}
		return w.write(append(w.line[:0], "]}"...))
	}
	return nil
}

// BeginDef fails: the formats have no way to share runs.
func (w *Writer) BeginDef(string) error { return ErrDefRef }

// EndDef fails like BeginDef.
func (w *Writer) EndDef() error { return ErrDefRef }

// Ref fails like BeginDef.
func (w *Writer) Ref(string) error { return ErrDefRef }

// End closes the dump and flushes everything buffered.
func (w *Writer) End() error {
	var err error
	switch w.f {
	case XML:
		err = w.write(append(w.line[:0], "</superblock>\n"...))
	case HumanReadable:
		err = w.write(append(w.line[:0], "end superblock\n"...))
	case JSON:
		if w.nDev > 0 {
			err = w.write(append(w.line[:0], "\n  ]\n}\n"...))
		} else {
			err = w.write(append(w.line[:0], "]\n}\n"...))
		}
	}
	if err != nil {
		return err
	}
	return w.bw.Flush()
}

// Flush writes out what is buffered, for callers that stop before End.
func (w *Writer) Flush() error { return w.bw.Flush() }

func (w *Writer) write(b []byte) error {
	w.line = b[:0] // keep the grown buffer
	_, err := w.bw.Write(b)
	return err
}

func appendAttr(b []byte, prefix string, v uint64) []byte {
	b = append(b, prefix...)
	return strconv.AppendUint(b, v, 10)
}

// appendEscaped appends s with the characters XML attributes cannot hold
// literally replaced by entities.
func appendEscaped(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '&':
			b = append(b, "&amp;"...)
		case '<':
			b = append(b, "&lt;"...)
		case '>':
			b = append(b, "&gt;"...)
		case '"':
			b = append(b, "&quot;"...)
		default:
			b = append(b, c)
		}
	}
	return b
}
