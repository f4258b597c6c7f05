package xml_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/xml"
)

// TestReadRoundTrip parses each reference dump and prints it again: the
// result is the 0.9.0 dump, byte for byte, also for 1.1.0 input once its
// defs are expanded.
func TestReadRoundTrip(t *testing.T) {
	cases := []struct{ in, want string }{
		{"s1-one-empty-thin.thin_dump-0.9.0.xml.gz", "s1-one-empty-thin.thin_dump-0.9.0.xml.gz"},
		{"s2-snapshot-tree.thin_dump-0.9.0.xml.gz", "s2-snapshot-tree.thin_dump-0.9.0.xml.gz"},
		{"s2-snapshot-tree.thin_dump-1.1.0.xml.gz", "s2-snapshot-tree.thin_dump-0.9.0.xml.gz"},
		{"s3-bigblock-metasnap.thin_dump-0.9.0.xml.gz", "s3-bigblock-metasnap.thin_dump-0.9.0.xml.gz"},
		{"s3-bigblock-metasnap.metasnap.thin_dump-0.9.0.xml.gz", "s3-bigblock-metasnap.metasnap.thin_dump-0.9.0.xml.gz"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			in := gunzip(t, tc.in)
			for name, r := range map[string]func() *bytes.Reader{"whole": func() *bytes.Reader { return bytes.NewReader(in) }} {
				var out bytes.Buffer
				err := xml.Read(r(), xml.Expand(xml.NewWriter(&out, xml.XML)))
				assert.NilError(t, err, name)
				assert.Equal(t, out.String(), string(gunzip(t, tc.want)))
			}
			// One byte per Read: tags cross every buffer boundary.
			var out bytes.Buffer
			err := xml.Read(iotest.OneByteReader(bytes.NewReader(in)), xml.Expand(xml.NewWriter(&out, xml.XML)))
			assert.NilError(t, err)
			assert.Equal(t, out.String(), string(gunzip(t, tc.want)))
		})
	}
}

// recorder writes every call it gets as one line.
type recorder struct {
	calls []string
	fail  int // fail the call with this number, counting from 1
}

func (r *recorder) add(s string) error {
	r.calls = append(r.calls, s)
	if len(r.calls) == r.fail {
		return errors.New("visitor says no")
	}
	return nil
}

func (r *recorder) Superblock(sb xml.Superblock) error {
	return r.add(fmt.Sprintf("superblock %+v", sb))
}
func (r *recorder) BeginDevice(id thin.DevID, d thin.Details) error {
	return r.add(fmt.Sprintf("device %d %+v", id, d))
}
func (r *recorder) Run(o, d, l uint64, tm uint32) error {
	return r.add(fmt.Sprintf("run %d %d %d %d", o, d, l, tm))
}
func (r *recorder) EndDevice() error        { return r.add("end device") }
func (r *recorder) BeginDef(n string) error { return r.add("def " + n) }
func (r *recorder) EndDef() error           { return r.add("end def") }
func (r *recorder) Ref(n string) error      { return r.add("ref " + n) }
func (r *recorder) End() error              { return r.add("end") }
func (r *recorder) String() string          { return strings.Join(r.calls, "\n") }

func TestReadEvents(t *testing.T) {
	in := `<?xml version="1.0"?>
<!-- a comment
over two lines -->
<superblock uuid="a&amp;b" time="4" transaction="42" version="2" data_block_size="128" nr_data_blocks="65536" metadata_snap="29">
  <def name="26">
    <range_mapping origin_begin="248" data_begin="248" length="126" time="0"/>
  </def>
  <def name='empty'></def>
  <device dev_id="1" mapped_blocks="130" transaction="0"
          creation_time="0" snap_time="4">
    <single_mapping origin_block="0" data_block="637" time="4"/>
    <ref name="26"/>
    <ref name="empty"/>
    <range_mapping origin_begin="374" data_begin="374" length="3" time="0" />
  </device>
  <device dev_id="9" mapped_blocks="0" transaction="7" creation_time="1" snap_time="1"/>
</superblock>
`
	var r recorder
	assert.NilError(t, xml.Read(strings.NewReader(in), &r))
	assert.Equal(t, r.String(), strings.Join([]string{
		"superblock {UUID:a&b Time:4 TransactionID:42 Flags:0 Version:2 DataBlockSize:128 NrDataBlocks:65536 MetadataSnap:29}",
		"def 26",
		"run 248 248 126 0",
		"end def",
		"def empty",
		"end def",
		"device 1 {MappedBlocks:130 TransactionID:0 CreationTime:0 SnapshottedTime:4}",
		"run 0 637 1 4",
		"ref 26",
		"ref empty",
		"run 374 374 3 0",
		"end device",
		"device 9 {MappedBlocks:0 TransactionID:7 CreationTime:1 SnapshottedTime:1}",
		"end device",
		"end",
	}, "\n"))
}

const sbLine = `<superblock uuid="" time="1" transaction="8" flags="0" version="2" data_block_size="128" nr_data_blocks="100">`
const devLine = `  <device dev_id="0" mapped_blocks="9" transaction="0" creation_time="0" snap_time="1">`

func TestReadErrors(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want string
		is   error
	}{
		{"empty input", ``, "line 1: malformed XML: input ends inside the document (no <superblock>)", xml.ErrMalformed},
		{"text", "\n\nhello", "line 3: malformed XML: text outside tags", xml.ErrMalformed},
		{"unclosed superblock", sbLine + "\n" + devLine + "\n  </device>\n", "line 4: malformed XML: input ends inside <superblock>", xml.ErrMalformed},
		{"unclosed device", sbLine + "\n" + devLine + "\n", "line 3: malformed XML: input ends inside <device>", xml.ErrMalformed},
		{"unclosed tag", sbLine + "\n" + devLine + "\n    <single_mapping origin_block=\"1\"", "line 3: malformed XML: tag not closed", xml.ErrMalformed},
		{"unclosed comment", "<!-- x", "line 1: malformed XML: comment not closed", xml.ErrMalformed},
		{"doctype", "<!DOCTYPE x>", "line 1: malformed XML: unsupported markup <!", xml.ErrMalformed},
		{"empty tag", "\n<>", "line 2: malformed XML: empty tag <>", xml.ErrMalformed},
		{"wrong close", sbLine + "\n" + devLine + "\n</superblock>", "line 3: malformed XML: </superblock> closes <device>", xml.ErrMalformed},
		{"stray close", "</device>", "line 1: malformed XML: </device> without an open element", xml.ErrMalformed},
		{"unknown element", sbLine + "\n" + devLine + "\n    <mapping origin_block=\"1\"/>", "line 3: unknown element <mapping>", xml.ErrUnknownElement},
		{"unknown attribute", sbLine + "\n" + devLine + "\n    <single_mapping origin_block=\"1\" data_block=\"2\" time=\"0\" colour=\"red\"/>",
			"line 3: unknown attribute colour in <single_mapping>", xml.ErrUnknownAttr},
		{"missing attribute", sbLine + "\n" + devLine + "\n    <single_mapping origin_block=\"1\" time=\"0\"/>",
			"line 3: missing attribute data_block in <single_mapping>", xml.ErrMissingAttr},
		{"missing superblock attribute", `<superblock uuid="" time="1" flags="0" version="2" data_block_size="128" nr_data_blocks="100">`,
			"line 1: missing attribute transaction in <superblock>", xml.ErrMissingAttr},
		{"missing uuid", `<superblock time="1" transaction="1" data_block_size="128" nr_data_blocks="100">`,
			"line 1: missing attribute uuid in <superblock>", xml.ErrMissingAttr},
		{"duplicate attribute", sbLine + "\n" + devLine + "\n    <single_mapping origin_block=\"1\" origin_block=\"1\" data_block=\"2\" time=\"0\"/>",
			"line 3: malformed XML: single_mapping: attribute origin_block given twice", xml.ErrMalformed},
		{"bad number", sbLine + "\n" + devLine + "\n    <single_mapping origin_block=\"x1\" data_block=\"2\" time=\"0\"/>",
			"line 3: bad number: single_mapping origin_block=\"x1\" (want a decimal number up to 18446744073709551615)", xml.ErrBadNumber},
		{"negative number", sbLine + "\n" + devLine + "\n    <single_mapping origin_block=\"-1\" data_block=\"2\" time=\"0\"/>",
			"line 3: bad number: single_mapping origin_block=\"-1\" (want a decimal number up to 18446744073709551615)", xml.ErrBadNumber},
		{"number too big", sbLine + "\n" + devLine + "\n    <single_mapping origin_block=\"18446744073709551616\" data_block=\"2\" time=\"0\"/>",
			"line 3: bad number: single_mapping origin_block=\"18446744073709551616\" (want a decimal number up to 18446744073709551615)", xml.ErrBadNumber},
		{"dev id over 24 bits", sbLine + "\n" + `  <device dev_id="16777216" mapped_blocks="9" transaction="0" creation_time="0" snap_time="1">`,
			"line 2: bad number: device dev_id=\"16777216\" (want a decimal number up to 16777215)", xml.ErrBadNumber},
		{"time over 24 bits", sbLine + "\n" + devLine + "\n    <single_mapping origin_block=\"1\" data_block=\"2\" time=\"16777216\"/>",
			"line 3: bad number: single_mapping time=\"16777216\" (want a decimal number up to 16777215)", xml.ErrBadNumber},
		{"data over 40 bits", sbLine + "\n" + devLine + "\n    <range_mapping origin_begin=\"1\" data_begin=\"1099511627775\" length=\"2\" time=\"0\"/>",
			"line 3: bad number: range_mapping data blocks 1099511627775+2 pass 40 bits", xml.ErrBadNumber},
		{"zero length", sbLine + "\n" + devLine + "\n    <range_mapping origin_begin=\"1\" data_begin=\"1\" length=\"0\" time=\"0\"/>",
			"line 3: bad number: range_mapping length=\"0\"", xml.ErrBadNumber},
		{"unquoted", sbLine + "\n" + devLine + "\n    <single_mapping origin_block=1 data_block=\"2\" time=\"0\"/>",
			"line 3: malformed XML: value of \"origin_block\" not quoted", xml.ErrMalformed},
		{"no space between attributes", sbLine + "\n" + devLine + "\n    <single_mapping origin_block=\"1\"data_block=\"2\" time=\"0\"/>",
			"line 3: malformed XML: attributes must be separated by spaces", xml.ErrMalformed},
		{"mapping not empty", sbLine + "\n" + devLine + "\n    <single_mapping origin_block=\"1\" data_block=\"2\" time=\"0\">",
			"line 3: malformed XML: <single_mapping> must be empty (<single_mapping …/>)", xml.ErrMalformed},
		{"mapping outside device", sbLine + "\n    <single_mapping origin_block=\"1\" data_block=\"2\" time=\"0\"/>",
			"line 2: element out of place: <single_mapping> outside a device or def", xml.ErrMisplaced},
		{"device in device", sbLine + "\n" + devLine + "\n" + devLine, "line 3: element out of place: <device> outside <superblock>", xml.ErrMisplaced},
		{"second superblock", sbLine + "\n</superblock>\n" + sbLine, "line 3: element out of place: a second <superblock>", xml.ErrMisplaced},
		{"out of order", sbLine + "\n" + devLine + "\n    <single_mapping origin_block=\"5\" data_block=\"2\" time=\"0\"/>\n    <single_mapping origin_block=\"4\" data_block=\"3\" time=\"0\"/>",
			"line 4: mappings out of order or overlapping: block 4 after blocks up to 5", xml.ErrOrder},
		{"overlapping", sbLine + "\n" + devLine + "\n    <range_mapping origin_begin=\"5\" data_begin=\"2\" length=\"3\" time=\"0\"/>\n    <single_mapping origin_block=\"7\" data_block=\"3\" time=\"0\"/>",
			"line 4: mappings out of order or overlapping: block 7 after blocks up to 7", xml.ErrOrder},
		{"same block twice", sbLine + "\n" + devLine + "\n    <single_mapping origin_block=\"5\" data_block=\"2\" time=\"0\"/>\n    <single_mapping origin_block=\"5\" data_block=\"3\" time=\"0\"/>",
			"line 4: mappings out of order or overlapping: block 5 after blocks up to 5", xml.ErrOrder},
		{"ref overlapping", sbLine + "\n  <def name=\"a\">\n    <single_mapping origin_block=\"5\" data_block=\"2\" time=\"0\"/>\n  </def>\n" + devLine +
			"\n    <single_mapping origin_block=\"6\" data_block=\"3\" time=\"0\"/>\n    <ref name=\"a\"/>",
			"line 7: mappings out of order or overlapping: block 5 after blocks up to 6", xml.ErrOrder},
		{"device twice", sbLine + "\n" + devLine + "\n  </device>\n" + devLine, "line 4: device listed twice: dev_id 0", xml.ErrDuplicateDevice},
		{"def twice", sbLine + "\n  <def name=\"a\"/>\n  <def name=\"a\"/>", "line 3: def defined twice: \"a\"", xml.ErrDuplicateDef},
		{"undefined ref", sbLine + "\n" + devLine + "\n\n    <ref name=\"7\"/>", "line 4: ref to an undefined def: \"7\"", xml.ErrUndefinedRef},
		{"ref in def", sbLine + "\n  <def name=\"a\">\n    <ref name=\"a\"/>", "line 3: element out of place: <ref> outside a device", xml.ErrMisplaced},
		{"ref without name", sbLine + "\n" + devLine + "\n    <ref/>", "line 3: missing attribute name in <ref>", xml.ErrMissingAttr},
		{"bad entity", `<superblock uuid="&foo;" time="1" transaction="1" data_block_size="128" nr_data_blocks="100">`,
			"line 1: malformed XML: entity &foo;", xml.ErrMalformed},
		{"text after end", sbLine + "\n</superblock>\nx", "line 3: malformed XML: text outside tags", xml.ErrMalformed},
		{"line of a multi-line tag", sbLine + "\n" + devLine + "\n    <single_mapping\n origin_block=\"1\"\n time=\"0\"/>",
			"line 3: missing attribute data_block in <single_mapping>", xml.ErrMissingAttr},
		{"line after a multi-line tag", sbLine + "\n" + devLine + "\n    <single_mapping\n origin_block=\"1\" data_block=\"2\"\n time=\"0\"/>\n<x/>",
			"line 6: unknown element <x>", xml.ErrUnknownElement},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := xml.Read(strings.NewReader(tc.in), &recorder{})
			assert.Check(t, is.Error(err, tc.want))
			assert.Check(t, errors.Is(err, tc.is))
			var le *xml.LineError
			assert.Check(t, errors.As(err, &le))
		})
	}
}

func TestReadVisitorError(t *testing.T) {
	in := sbLine + "\n" + devLine + "\n    <single_mapping origin_block=\"1\" data_block=\"2\" time=\"0\"/>\n  </device>\n</superblock>\n"
	for _, tc := range []struct {
		name string
		fail int
		want string
	}{
		{"superblock", 1, "line 1: visitor says no"},
		{"device", 2, "line 2: visitor says no"},
		{"run", 3, "line 3: visitor says no"},
		{"end device", 4, "line 4: visitor says no"},
		{"end", 5, "line 6: visitor says no"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{fail: tc.fail}
			err := xml.Read(strings.NewReader(in), r)
			assert.Check(t, is.Error(err, tc.want))
		})
	}
}

func TestReadReadError(t *testing.T) {
	boom := errors.New("disk on fire")
	err := xml.Read(iotest.ErrReader(boom), &recorder{})
	assert.Check(t, errors.Is(err, boom))
	// Broken off inside a tag: the read error, not "tag not closed".
	in := io.MultiReader(strings.NewReader(sbLine+"\n"+devLine+"\n    <single_mapping origin_"), iotest.ErrReader(boom))
	err = xml.Read(in, &recorder{})
	assert.Check(t, errors.Is(err, boom), "%v", err)
}

func TestWriterRejectsDefs(t *testing.T) {
	in := string(gunzip(t, "s2-snapshot-tree.thin_dump-1.1.0.xml.gz"))
	err := xml.Read(strings.NewReader(in), xml.NewWriter(&bytes.Buffer{}, xml.XML))
	assert.Check(t, errors.Is(err, xml.ErrDefRef))
	assert.Check(t, is.ErrorContains(err, "line 2: "))
}
