package xml_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/golden"
	"gotest.tools/v3/skip"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/xml"

	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

const kernelDir = "../../testdata/kernel"

var fixtures = []string{"s1-one-empty-thin", "s2-snapshot-tree", "s3-bigblock-metasnap"}

// gunzip returns the contents of a gzipped fixture file.
func gunzip(t testing.TB, name string) []byte {
	t.Helper()
	return thintest.Gunzip(t, filepath.Join(kernelDir, name))
}

// image writes a fixture's metadata into a temporary file and returns its path.
func image(t testing.TB, fixture string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), fixture+".img")
	assert.NilError(t, os.WriteFile(p, gunzip(t, fixture+".img.gz"), 0o600))
	return p
}

func dump(t testing.TB, path string, f xml.Format, o xml.Options) (string, []error, error) {
	t.Helper()
	bf, err := block.Open(path)
	assert.NilError(t, err)
	defer bf.Close()
	var out bytes.Buffer
	var damage []error
	if o.Damaged == nil {
		o.Damaged = func(err error) { damage = append(damage, err) }
	}
	err = xml.Dump(bf.Reader, xml.NewWriter(&out, f), o)
	return out.String(), damage, err
}

func TestDumpKernelFixtures(t *testing.T) {
	cases := []struct {
		fixture, want string
		opts          xml.Options
	}{
		{fixture: "s1-one-empty-thin", want: "s1-one-empty-thin.thin_dump-0.9.0.xml.gz"},
		{fixture: "s2-snapshot-tree", want: "s2-snapshot-tree.thin_dump-0.9.0.xml.gz"},
		{fixture: "s3-bigblock-metasnap", want: "s3-bigblock-metasnap.thin_dump-0.9.0.xml.gz"},
		{fixture: "s3-bigblock-metasnap", want: "s3-bigblock-metasnap.metasnap.thin_dump-0.9.0.xml.gz",
			opts: xml.Options{MetadataSnap: true}},
		{fixture: "s3-bigblock-metasnap", want: "s3-bigblock-metasnap.metasnap.thin_dump-0.9.0.xml.gz",
			opts: xml.Options{MetadataSnap: true, SnapBlock: 29}},
	}
	for _, tc := range cases {
		t.Run(tc.want, func(t *testing.T) {
			got, damage, err := dump(t, image(t, tc.fixture), xml.XML, tc.opts)
			assert.NilError(t, err)
			assert.Check(t, is.Len(damage, 0))
			assert.Equal(t, got, string(gunzip(t, tc.want)))
		})
	}
}

func TestDumpNoSnapshot(t *testing.T) {
	_, _, err := dump(t, image(t, "s2-snapshot-tree"), xml.XML, xml.Options{MetadataSnap: true})
	assert.Check(t, errors.Is(err, thin.ErrNoSnapshot), "%v", err)
}

func onPath(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}

// refDump runs the reference thin_dump with args on path.
func refDump(t *testing.T, path string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command("thin_dump", append(args, path)...)
	cmd.Stdout = &out
	err := cmd.Run()
	return out.String(), err
}

// TestDumpAgainstThinDump compares every format and option with the
// reference tool, when it is installed.
func TestDumpAgainstThinDump(t *testing.T) {
	skip.If(t, !onPath("thin_dump"), "reference thin_dump not installed")
	cases := []struct {
		name string
		args []string
		f    xml.Format
		opts xml.Options
	}{
		{name: "xml"},
		{name: "human_readable", args: []string{"-f", "human_readable"}, f: xml.HumanReadable},
		{name: "skip-mappings", args: []string{"--skip-mappings"}, opts: xml.Options{SkipMappings: true}},
		{name: "dev-ids", args: []string{"--dev-id", "2", "--dev-id", "5", "--dev-id", "7"},
			opts: xml.Options{DevIDs: []thin.DevID{5, 2, 7}}},
	}
	for _, fx := range fixtures {
		img := image(t, fx)
		for _, tc := range cases {
			t.Run(fx+"/"+tc.name, func(t *testing.T) {
				want, err := refDump(t, img, tc.args...)
				assert.NilError(t, err)
				got, damage, err := dump(t, img, tc.f, tc.opts)
				assert.NilError(t, err)
				assert.Check(t, is.Len(damage, 0))
				assert.Equal(t, got, want)
			})
		}
	}
}

// readBlock and writeBlock edit one block of an image file.
func readBlock(t *testing.T, path string, n block.Nr) []byte {
	t.Helper()
	f, err := os.Open(path)
	assert.NilError(t, err)
	defer f.Close()
	b := make([]byte, block.Size)
	_, err = f.ReadAt(b, int64(n)*block.Size)
	assert.NilError(t, err)
	return b
}

func writeBlock(t *testing.T, path string, n block.Nr, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	assert.NilError(t, err)
	defer f.Close()
	_, err = f.WriteAt(b, int64(n)*block.Size)
	assert.NilError(t, err)
}

// TestDumpDamaged damages one node of s2 and checks that the dump leaves
// out exactly that part, reports it, and prints everything else.
func TestDumpDamaged(t *testing.T) {
	full := string(gunzip(t, "s2-snapshot-tree.thin_dump-0.9.0.xml.gz"))
	cases := []struct {
		name    string
		nr      block.Nr
		damage  func(b []byte)
		reports []string
		// lines of the full dump that must be missing
		missing []string
	}{
		{
			name:   "shared leaf checksum",
			nr:     26, // leaf 248..373, shared by devices 1-4
			damage: func(b []byte) { b[100] ^= 0xff },
			reports: []string{
				"device 1, virtual blocks 248..373: btree node 26 (path [73 26]): block 26: corrupt metadata: bad checksum in btree node",
				"device 2, virtual blocks 248..373: btree node 26 (path [",
				"device 3, virtual blocks 248..373: btree node 26 (path [",
				"device 4, virtual blocks 248..373: btree node 26 (path [",
			},
		},
		{
			name: "top-level leaf checksum",
			nr:   72,
			damage: func(b []byte) {
				b[200] ^= 0xff
			},
			reports: []string{"mapping tree top level, devices 0..: btree node 72 (path [72]): block 72: corrupt metadata: bad checksum in btree node"},
		},
		{
			name: "loop",
			nr:   73, // device 1's internal node: point its last child back at itself
			damage: func(b []byte) {
				n, err := btree.ParseNode(b, 73, 8)
				assert.NilError(t, err)
				keys := make([]uint64, n.NrEntries)
				vals := make([]byte, 8*n.NrEntries)
				for i := range keys {
					keys[i] = n.Key(i)
					copy(vals[8*i:], n.Value(i))
				}
				copy(vals[8*(n.NrEntries-1):], []byte{73, 0, 0, 0, 0, 0, 0, 0})
				btree.Encode(b, 73, true, keys, vals, 8)
			},
			reports: []string{"device 1, virtual blocks 374..: btree node 73 (path [73 73]): corrupt metadata: b-tree loops back to a node on its own path"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			img := image(t, "s2-snapshot-tree")
			b := readBlock(t, img, tc.nr)
			tc.damage(b)
			writeBlock(t, img, tc.nr, b)
			got, damage, err := dump(t, img, xml.XML, xml.Options{})
			assert.NilError(t, err)
			assert.Assert(t, is.Len(damage, len(tc.reports)), "%v", damage)
			for i, want := range tc.reports {
				assert.Check(t, strings.HasPrefix(damage[i].Error(), want), "got %q\nwant prefix %q", damage[i], want)
				assert.Check(t, errors.Is(damage[i], block.ErrCorrupt))
			}
			assert.Check(t, got != full)
			golden.Assert(t, got, "dump-s2-"+strings.ReplaceAll(tc.name, " ", "-")+".golden")
			if onPath("thin_dump") {
				// Where the reference still succeeds, it must agree.
				if want, err := refDump(t, img); err == nil {
					assert.Check(t, is.Equal(got, want))
				} else {
					t.Logf("thin_dump fails here: %v", err)
				}
			}
		})
	}
}

// TestDumpJSON: the JSON is valid and holds what the XML holds.
func TestDumpJSON(t *testing.T) {
	type run struct {
		OriginBegin uint64 `json:"origin_begin"`
		DataBegin   uint64 `json:"data_begin"`
		Length      uint64 `json:"length"`
		Time        uint32 `json:"time"`
	}
	var doc struct {
		Superblock struct {
			UUID          *string `json:"uuid"`
			Time          uint32  `json:"time"`
			Transaction   uint64  `json:"transaction"`
			NrDataBlocks  uint64  `json:"nr_data_blocks"`
			DataBlockSize uint32  `json:"data_block_size"`
		} `json:"superblock"`
		Devices []struct {
			DevID        uint32 `json:"dev_id"`
			MappedBlocks uint64 `json:"mapped_blocks"`
			Mappings     []run  `json:"mappings"`
		} `json:"devices"`
	}
	for _, fx := range fixtures {
		t.Run(fx, func(t *testing.T) {
			img := image(t, fx)
			got, _, err := dump(t, img, xml.JSON, xml.Options{})
			assert.NilError(t, err)
			assert.NilError(t, json.Unmarshal([]byte(got), &doc))
			assert.Check(t, doc.Superblock.UUID != nil && *doc.Superblock.UUID == "")
			for _, d := range doc.Devices {
				var n uint64
				for _, r := range d.Mappings {
					n += r.Length
				}
				assert.Check(t, is.Equal(n, d.MappedBlocks), "device %d", d.DevID)
			}
			// The same runs as the XML.
			want, _, err := dump(t, img, xml.XML, xml.Options{})
			assert.NilError(t, err)
			assert.Check(t, is.Equal(strings.Count(got, `"origin_begin"`), strings.Count(want, "_mapping ")))
		})
	}
}

// TestDumpOddButReadable: metadata the reference dumps without complaint
// although it is unusual; ours must print the same bytes.
func TestDumpOddButReadable(t *testing.T) {
	cases := []struct {
		name string
		nr   block.Nr
		edit func(b []byte)
		kind block.Kind
		want string // a line the dump must hold
	}{
		{"needs_check flag", 0, func(b []byte) { b[4] = 1 }, block.Superblock, `flags="1" version="2"`},
		{"version 7", 0, func(b []byte) { b[40] = 7 }, block.Superblock, `version="7"`},
		{"uuid set", 0, func(b []byte) { copy(b[16:], "ab<c") }, block.Superblock, `<superblock uuid="" time="4"`},
		// Details of device 1 say 605 mapped blocks; it maps 606.
		{"mapped_blocks wrong", 77, func(b []byte) { b[1040] = 0x5d }, block.Node, `dev_id="1" mapped_blocks="605"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			img := image(t, "s2-snapshot-tree")
			b := readBlock(t, img, tc.nr)
			tc.edit(b)
			block.Seal(b, tc.kind)
			writeBlock(t, img, tc.nr, b)
			got, damage, err := dump(t, img, xml.XML, xml.Options{})
			assert.NilError(t, err)
			assert.Check(t, is.Len(damage, 0))
			assert.Check(t, is.Contains(got, tc.want))
			if !onPath("thin_dump") {
				return
			}
			want, err := refDump(t, img)
			assert.NilError(t, err)
			assert.Check(t, is.Equal(got, want))
		})
	}
}

// genXML writes a pool of four devices with about 140,000 mappings each
// (three-level trees), in a mix of single blocks and runs.
func genXML(seed int64) string {
	r := rand.New(rand.NewSource(seed))
	var b strings.Builder
	b.WriteString(`<superblock uuid="" time="7" transaction="3" flags="0" version="2" data_block_size="256" nr_data_blocks="4000000">` + "\n")
	data := uint64(0)
	for dev := 0; dev < 4; dev++ {
		var body strings.Builder
		v, n := uint64(r.Intn(10)), uint64(0)
		for range 20000 + r.Intn(20000) {
			l := uint64(1)
			if r.Intn(4) == 0 {
				l += uint64(r.Intn(30))
			}
			if l == 1 {
				fmt.Fprintf(&body, "    <single_mapping origin_block=\"%d\" data_block=\"%d\" time=\"%d\"/>\n", v, data, r.Intn(8))
			} else {
				fmt.Fprintf(&body, "    <range_mapping origin_begin=\"%d\" data_begin=\"%d\" length=\"%d\" time=\"%d\"/>\n", v, data, l, r.Intn(8))
			}
			n += l
			v += l + uint64(r.Intn(3)) // sometimes adjacent: runs that thin_dump merges
			data += l + uint64(r.Intn(2))
		}
		fmt.Fprintf(&b, "  <device dev_id=\"%d\" mapped_blocks=\"%d\" transaction=\"%d\" creation_time=\"%d\" snap_time=\"%d\">\n", dev*7, n, dev, dev, dev+1)
		b.WriteString(body.String())
		b.WriteString("  </device>\n")
	}
	b.WriteString("</superblock>\n")
	return b.String()
}

// TestDumpGeneratedPool restores a generated pool with the reference
// thin_restore and compares our dump of it with thin_dump's, and our
// reading of the generated XML with the same bytes.
func TestDumpGeneratedPool(t *testing.T) {
	skip.If(t, !onPath("thin_dump") || !onPath("thin_restore"), "reference thin_dump and thin_restore not installed")
	skip.If(t, testing.Short(), "restores half a million mappings with the reference tools")
	dir := t.TempDir()
	in := filepath.Join(dir, "pool.xml")
	assert.NilError(t, os.WriteFile(in, []byte(genXML(1)), 0o600))
	img := filepath.Join(dir, "pool.img")
	assert.NilError(t, os.WriteFile(img, nil, 0o600))
	assert.NilError(t, os.Truncate(img, 64<<20))
	out, err := exec.Command("thin_restore", "-i", in, "-o", img).CombinedOutput()
	assert.NilError(t, err, string(out))

	want, err := refDump(t, img)
	assert.NilError(t, err)
	got, damage, err := dump(t, img, xml.XML, xml.Options{})
	assert.NilError(t, err)
	assert.Check(t, is.Len(damage, 0))
	assert.Check(t, got == want, "dump differs from thin_dump")

	f, err := os.Open(in)
	assert.NilError(t, err)
	defer f.Close()
	var again bytes.Buffer
	assert.NilError(t, xml.Read(f, xml.NewWriter(&again, xml.XML)))
	assert.Check(t, again.String() == want, "read and rewritten XML differs from thin_dump")

	for _, f := range []xml.Format{xml.HumanReadable} {
		ref, err := refDump(t, img, "-f", f.String())
		assert.NilError(t, err)
		got, _, err := dump(t, img, f, xml.Options{})
		assert.NilError(t, err)
		assert.Check(t, got == ref, "%v differs from thin_dump", f)
	}
}
