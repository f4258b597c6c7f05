package restore_test

import (
	"bytes"
	"encoding/binary"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	"gotest.tools/v3/skip"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/restore"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"

	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

const kernelDir = "../../testdata/kernel"

func gunzip(t *testing.T, path string) []byte {
	t.Helper()
	return thintest.Gunzip(t, path)
}

// restoreXML drives a Restorer with a thin_dump XML document (0.9.0, or
// 1.1.0 with def and ref) and writes the metadata to a new file of size
// bytes.
func restoreXML(t *testing.T, doc []byte, size int64) (string, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "meta")
	f, err := os.Create(path)
	assert.NilError(t, err)
	defer f.Close()
	assert.NilError(t, f.Truncate(size))
	return path, feedXML(doc, f, size)
}

func attrs(se xml.StartElement) map[string]uint64 {
	m := map[string]uint64{}
	for _, a := range se.Attr {
		if v, err := strconv.ParseUint(a.Value, 10, 64); err == nil {
			m[a.Name.Local] = v
		}
	}
	return m
}

func attr(se xml.StartElement, name string) string {
	for _, a := range se.Attr {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

func feedXML(doc []byte, w io.WriterAt, size int64) error {
	d := xml.NewDecoder(bytes.NewReader(doc))
	var r *restore.Restorer
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		switch e := tok.(type) {
		case xml.StartElement:
			a := attrs(e)
			switch e.Name.Local {
			case "superblock":
				r, err = restore.New(w, size, restore.Options{
					Time: uint32(a["time"]), TransactionID: a["transaction"], Flags: uint32(a["flags"]),
					Version: uint32(a["version"]), DataBlockSize: uint32(a["data_block_size"]),
					NrDataBlocks: a["nr_data_blocks"],
				})
			case "device":
				err = r.BeginDevice(thin.DevID(a["dev_id"]), thin.Details{
					MappedBlocks: a["mapped_blocks"], TransactionID: a["transaction"],
					CreationTime: uint32(a["creation_time"]), SnapshottedTime: uint32(a["snap_time"]),
				})
			case "def":
				err = r.BeginDef(attr(e, "name"))
			case "ref":
				err = r.Ref(attr(e, "name"))
			case "range_mapping":
				err = r.Run(a["origin_begin"], a["data_begin"], a["length"], uint32(a["time"]))
			case "single_mapping":
				err = r.Mapping(thin.Mapping{VBlock: thin.VBlock(a["origin_block"]), Data: thin.DataBlock(a["data_block"]), Time: uint32(a["time"])})
			default:
				err = fmt.Errorf("unknown element %q", e.Name.Local)
			}
		case xml.EndElement:
			switch e.Name.Local {
			case "device":
				err = r.EndDevice()
			case "def":
				err = r.EndDef()
			case "superblock":
				err = r.End()
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// tool finds a reference tool: 0.9.0 on PATH, 1.1.0 under TPT11_BIN or the
// repository's .cache/tpt11/usr/sbin.
func tool(name string, v11 bool) string {
	if !v11 {
		p, err := exec.LookPath(name)
		if err != nil {
			return ""
		}
		return p
	}
	dir := os.Getenv("TPT11_BIN")
	if dir == "" {
		dir = "../../.cache/tpt11/usr/sbin"
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

func run(t *testing.T, bin string, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %v: %w\n%s%s", bin, args, err, out.String(), errb.String())
	}
	return out.String(), err
}

// oracle runs both thin_check versions on path and, if want is not nil,
// checks that thin_dump 0.9.0 prints want.
func oracle(t *testing.T, path string, want []byte) {
	t.Helper()
	ran := false
	for _, v11 := range []bool{false, true} {
		if c := tool("thin_check", v11); c != "" {
			_, err := run(t, c, path)
			assert.NilError(t, err)
			ran = true
		}
	}
	if d := tool("thin_dump", false); d != "" && want != nil {
		got, err := run(t, d, path)
		assert.NilError(t, err)
		assert.Equal(t, got, string(want))
		ran = true
	}
	skip.If(t, !ran, "reference thin_check/thin_dump not installed")
}

func TestRestoreKernelDumps(t *testing.T) {
	for _, tc := range []struct {
		name    string
		xml     string // input
		want    string // what thin_dump 0.9.0 must print
		img     string // the kernel image, for its size and its data counts
		sameDSM bool   // data counts must equal the kernel's
	}{
		{name: "s1", xml: "s1-one-empty-thin.thin_dump-0.9.0.xml.gz", img: "s1-one-empty-thin.img.gz", sameDSM: true},
		{name: "s2", xml: "s2-snapshot-tree.thin_dump-0.9.0.xml.gz", img: "s2-snapshot-tree.img.gz"},
		{name: "s2 from 1.1.0 def/ref", xml: "s2-snapshot-tree.thin_dump-1.1.0.xml.gz",
			want: "s2-snapshot-tree.thin_dump-0.9.0.xml.gz", img: "s2-snapshot-tree.img.gz", sameDSM: true},
		{name: "s3", xml: "s3-bigblock-metasnap.thin_dump-0.9.0.xml.gz", img: "s3-bigblock-metasnap.img.gz"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := gunzip(t, filepath.Join(kernelDir, tc.xml))
			want := doc
			if tc.want != "" {
				want = gunzip(t, filepath.Join(kernelDir, tc.want))
			}
			img := gunzip(t, filepath.Join(kernelDir, tc.img))
			path, err := restoreXML(t, doc, int64(len(img)))
			assert.NilError(t, err)
			out, err := os.ReadFile(path)
			assert.NilError(t, err)
			checkSpaceMaps(t, out)
			if tc.sameDSM {
				assert.DeepEqual(t, dataCounts(t, out), dataCounts(t, img))
			}
			oracle(t, path, want)
		})
	}
}

// A dump of a metadata snapshot shows nr_data_blocks 0: its mappings
// cannot be restored as they are.
func TestRestoreMetasnapDumpRefused(t *testing.T) {
	doc := gunzip(t, filepath.Join(kernelDir, "s3-bigblock-metasnap.metasnap.thin_dump-0.9.0.xml.gz"))
	_, err := restoreXML(t, doc, 1<<22)
	assert.ErrorIs(t, err, restore.ErrDataBlock)
}

// readTree walks a b-tree of verified nodes and calls leaf for each entry.
func readTree(t *testing.T, img []byte, root block.Nr, vs int, leaf func(k uint64, v []byte)) {
	t.Helper()
	b := img[int(root)*block.Size:][:block.Size]
	assert.NilError(t, block.Verify(b, root, block.Node))
	n, err := btree.ParseNode(b, root, vs)
	assert.NilError(t, err)
	for i := 0; i < n.NrEntries; i++ {
		if n.Internal {
			readTree(t, img, n.Child(i), vs, leaf)
		} else {
			leaf(n.Key(i), n.Value(i))
		}
	}
}

// smCounts decodes a space map from its index entries and overflow tree.
func smCounts(t *testing.T, img []byte, root spacemap.Root, entries []spacemap.IndexEntry) []uint32 {
	t.Helper()
	c := make([]uint32, root.NrBlocks)
	u := make([]uint8, spacemap.EntriesPerBitmap)
	for k, e := range entries {
		b := img[int(e.Blocknr)*block.Size:][:block.Size]
		assert.NilError(t, block.Verify(b, e.Blocknr, block.Bitmap))
		spacemap.Decode(b, u, spacemap.EntriesPerBitmap)
		free, first := uint32(0), uint32(spacemap.EntriesPerBitmap)
		for j, v := range u {
			if v == 0 {
				free++
				if first == spacemap.EntriesPerBitmap {
					first = uint32(j)
				}
			}
			if i := uint64(k)*spacemap.EntriesPerBitmap + uint64(j); i < root.NrBlocks {
				c[i] = uint32(v)
			} else {
				assert.Equal(t, v, uint8(0), "entry past nr_blocks")
			}
		}
		assert.Equal(t, e.NrFree, free, "bitmap %d nr_free", k)
		assert.Equal(t, e.NoneFreeBefore, first, "bitmap %d none_free_before", k)
	}
	readTree(t, img, root.RefCountRoot, 4, func(k uint64, v []byte) {
		assert.Equal(t, c[k], uint32(3), "overflow entry %d", k)
		c[k] = binary.LittleEndian.Uint32(v)
		assert.Assert(t, c[k] >= 3)
	})
	alloc := uint64(0)
	for _, v := range c {
		if v != 0 {
			alloc++
		}
	}
	assert.Equal(t, root.NrAllocated, alloc, "nr_allocated")
	return c
}

func superblock(t *testing.T, img []byte) thin.Superblock {
	t.Helper()
	assert.NilError(t, block.Verify(img[:block.Size], 0, block.Superblock))
	return thin.ParseSuperblock(img)
}

func dataCounts(t *testing.T, img []byte) []uint32 {
	t.Helper()
	sb := superblock(t, img)
	var es []spacemap.IndexEntry
	readTree(t, img, sb.DataSM.BitmapRoot, spacemap.IndexEntrySize, func(k uint64, v []byte) {
		assert.Equal(t, k, uint64(len(es)))
		es = append(es, spacemap.ParseIndexEntry(v))
	})
	assert.Equal(t, uint64(len(es)), sb.DataSM.NrBitmaps())
	return smCounts(t, img, sb.DataSM, es)
}

// checkSpaceMaps checks what the reference checkers do not: nr_allocated,
// nr_free and none_free_before exact in both space maps, and the header
// fields of the superblock.
func checkSpaceMaps(t *testing.T, img []byte) {
	t.Helper()
	sb := superblock(t, img)
	assert.Equal(t, sb.Magic, uint64(thin.Magic))
	assert.Equal(t, sb.MetadataBlockSize, uint32(8))
	assert.Equal(t, sb.MetadataNrBlocks, uint64(len(img)/block.Size))
	assert.Equal(t, sb.MetadataSM.NrBlocks, uint64(len(img)/block.Size))
	dataCounts(t, img)
	ib := img[int(sb.MetadataSM.BitmapRoot)*block.Size:][:block.Size]
	assert.NilError(t, block.Verify(ib, sb.MetadataSM.BitmapRoot, block.Index))
	es, err := spacemap.ParseIndexBlock(ib, sb.MetadataSM.NrBitmaps())
	assert.NilError(t, err)
	mc := smCounts(t, img, sb.MetadataSM, es)
	assert.Equal(t, mc[0], uint32(1))
}

// pool is a little generated pool for the table tests.
type pool struct {
	opts restore.Options
	size int64
}

func newFile(t testing.TB, size int64) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "meta"))
	assert.NilError(t, err)
	t.Cleanup(func() { f.Close() })
	assert.NilError(t, f.Truncate(size))
	return f
}

var defaultOpts = restore.Options{Time: 3, TransactionID: 9, DataBlockSize: 128, NrDataBlocks: 1 << 20}

// TestRestoreShared builds devices that share leaves with RefLeaves, the
// way a generated pool does, and checks the result with the oracles.
func TestRestoreShared(t *testing.T) {
	for _, tc := range []struct {
		name   string
		origin int   // mappings of device 1
		snaps  int   // snapshots of device 1, each sharing its leaves
		writes []int // per snapshot: virtual blocks it rewrites
		tail   int   // per snapshot: new mappings after the origin's
	}{
		{name: "untouched snapshots", origin: 5000, snaps: 3},
		{name: "written snapshots", origin: 20000, snaps: 4, writes: []int{0, 1, 300, 7000, 19999}, tail: 1000},
		{name: "short tails", origin: 1000, snaps: 2, tail: 3},
		{name: "single leaf origin", origin: 100, snaps: 5, writes: []int{50}},
		{name: "empty origin", origin: 0, snaps: 2, tail: 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFile(t, 8<<20)
			r, err := restore.New(f, 8<<20, defaultOpts)
			assert.NilError(t, err)
			var doc strings.Builder
			fmt.Fprintf(&doc, "<superblock uuid=\"\" time=\"3\" transaction=\"9\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"%d\">\n", 1<<20)
			assert.NilError(t, r.BeginDevice(1, thin.Details{MappedBlocks: uint64(tc.origin), SnapshottedTime: 1}))
			for i := 0; i < tc.origin; i++ {
				ok(t, r.Mapping(thin.Mapping{VBlock: thin.VBlock(2 * i), Data: thin.DataBlock(i)}))
			}
			assert.NilError(t, r.EndDevice())
			fmt.Fprintf(&doc, "  <device dev_id=\"1\" mapped_blocks=\"%d\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">\n", tc.origin)
			for i := 0; i < tc.origin; i++ {
				fmt.Fprintf(&doc, "    <single_mapping origin_block=\"%d\" data_block=\"%d\" time=\"0\"/>\n", 2*i, i)
			}
			doc.WriteString("  </device>\n")
			leaves := r.Leaves()
			next := uint64(tc.origin)
			for s := 0; s < tc.snaps; s++ {
				dev := thin.DevID(2 + s)
				assert.NilError(t, r.BeginDevice(dev, thin.Details{MappedBlocks: uint64(tc.origin + tc.tail), CreationTime: 1, SnapshottedTime: 1}))
				fmt.Fprintf(&doc, "  <device dev_id=\"%d\" mapped_blocks=\"%d\" transaction=\"0\" creation_time=\"1\" snap_time=\"1\">\n", dev, tc.origin+tc.tail)
				// Rewritten blocks get new data blocks at time 2; the
				// leaves holding them become private.
				rewritten := map[uint64]uint64{}
				for _, w := range tc.writes {
					if w < tc.origin {
						rewritten[uint64(2*w)] = next
						next++
					}
				}
				for _, lf := range leaves {
					touched := false
					for v := range rewritten {
						if v >= lf.First && v <= lf.Last {
							touched = true
						}
					}
					if !touched {
						ok(t, r.RefLeaves(lf))
					}
					for v := lf.First; v <= lf.Last; v += 2 {
						if d, found := rewritten[v]; found {
							fmt.Fprintf(&doc, "    <single_mapping origin_block=\"%d\" data_block=\"%d\" time=\"2\"/>\n", v, d)
							ok(t, r.Mapping(thin.Mapping{VBlock: thin.VBlock(v), Data: thin.DataBlock(d), Time: 2}))
						} else {
							fmt.Fprintf(&doc, "    <single_mapping origin_block=\"%d\" data_block=\"%d\" time=\"0\"/>\n", v, v/2)
							if touched {
								ok(t, r.Mapping(thin.Mapping{VBlock: thin.VBlock(v), Data: thin.DataBlock(v / 2)}))
							}
						}
					}
				}
				for i := 0; i < tc.tail; i++ {
					v := uint64(2*tc.origin + i)
					ok(t, r.Mapping(thin.Mapping{VBlock: thin.VBlock(v), Data: thin.DataBlock(next), Time: 2}))
					fmt.Fprintf(&doc, "    <single_mapping origin_block=\"%d\" data_block=\"%d\" time=\"2\"/>\n", v, next)
					next++
				}
				assert.NilError(t, r.EndDevice())
				doc.WriteString("  </device>\n")
			}
			assert.NilError(t, r.End())
			doc.WriteString("</superblock>\n")
			out, err := os.ReadFile(f.Name())
			assert.NilError(t, err)
			checkSpaceMaps(t, out)
			oracle(t, f.Name(), nil)
			// thin_dump merges runs; compare mappings line by line after
			// expanding its output instead.
			if d := tool("thin_dump", false); d != "" {
				got, err := run(t, d, f.Name())
				assert.NilError(t, err)
				assert.Equal(t, expand(t, got), doc.String())
			}
		})
	}
}

// expand rewrites range_mapping lines as single_mapping lines.
func expand(t *testing.T, dump string) string {
	t.Helper()
	var b strings.Builder
	for _, line := range strings.SplitAfter(dump, "\n") {
		if !strings.Contains(line, "<range_mapping") {
			b.WriteString(line)
			continue
		}
		var ob, db, n, tm uint64
		_, err := fmt.Sscanf(strings.TrimSpace(line), "<range_mapping origin_begin=\"%d\" data_begin=\"%d\" length=\"%d\" time=\"%d\"/>", &ob, &db, &n, &tm)
		assert.NilError(t, err)
		for i := uint64(0); i < n; i++ {
			fmt.Fprintf(&b, "    <single_mapping origin_block=\"%d\" data_block=\"%d\" time=\"%d\"/>\n", ob+i, db+i, tm)
		}
	}
	return b.String()
}

func TestRestoreErrors(t *testing.T) {
	one := thin.Details{MappedBlocks: 1}
	for _, tc := range []struct {
		name string
		size int64
		opts restore.Options
		do   func(r *restore.Restorer) error
		want error
	}{
		{name: "mappings out of order", do: func(r *restore.Restorer) error {
			must(r.BeginDevice(1, thin.Details{MappedBlocks: 2}))
			must(r.Run(10, 0, 1, 0))
			return r.Run(5, 1, 1, 0)
		}, want: restore.ErrOrder},
		{name: "overlapping runs", do: func(r *restore.Restorer) error {
			must(r.BeginDevice(1, thin.Details{MappedBlocks: 20}))
			must(r.Run(10, 0, 10, 0))
			return r.Run(19, 100, 10, 0)
		}, want: restore.ErrOrder},
		{name: "zero-length run", do: func(r *restore.Restorer) error {
			must(r.BeginDevice(1, one))
			return r.Run(1, 1, 0, 0)
		}, want: restore.ErrOrder},
		{name: "data block past nr_data_blocks", do: func(r *restore.Restorer) error {
			must(r.BeginDevice(1, one))
			return r.Run(0, 1<<20-1, 2, 0)
		}, want: restore.ErrDataBlock},
		{name: "time beyond 24 bits", do: func(r *restore.Restorer) error {
			must(r.BeginDevice(1, one))
			return r.Run(0, 0, 1, 1<<24)
		}, want: restore.ErrTime},
		{name: "device listed twice", do: func(r *restore.Restorer) error {
			must(r.BeginDevice(1, thin.Details{}))
			must(r.EndDevice())
			return r.BeginDevice(1, thin.Details{})
		}, want: restore.ErrDuplicateDevice},
		{name: "devices out of order", do: func(r *restore.Restorer) error {
			must(r.BeginDevice(5, thin.Details{}))
			must(r.EndDevice())
			return r.BeginDevice(4, thin.Details{})
		}, want: restore.ErrDeviceOrder},
		{name: "device id beyond 24 bits", do: func(r *restore.Restorer) error {
			return r.BeginDevice(1<<24, thin.Details{})
		}, want: restore.ErrDeviceID},
		{name: "mapped_blocks too high", do: func(r *restore.Restorer) error {
			must(r.BeginDevice(1, thin.Details{MappedBlocks: 3}))
			must(r.Run(0, 0, 2, 0))
			return r.EndDevice()
		}, want: restore.ErrMappedBlocks},
		{name: "mapping outside a device", do: func(r *restore.Restorer) error {
			return r.Run(0, 0, 1, 0)
		}, want: restore.ErrState},
		{name: "device inside a device", do: func(r *restore.Restorer) error {
			must(r.BeginDevice(1, thin.Details{}))
			return r.BeginDevice(2, thin.Details{})
		}, want: restore.ErrState},
		{name: "end inside a device", do: func(r *restore.Restorer) error {
			must(r.BeginDevice(1, thin.Details{}))
			return r.End()
		}, want: restore.ErrState},
		{name: "ref to an undefined def", do: func(r *restore.Restorer) error {
			must(r.BeginDevice(1, thin.Details{}))
			return r.Ref("7")
		}, want: restore.ErrUndefinedRef},
		{name: "def twice", do: func(r *restore.Restorer) error {
			must(r.BeginDef("a"))
			must(r.EndDef())
			return r.BeginDef("a")
		}, want: restore.ErrDuplicateDef},
		{name: "unknown leaf", do: func(r *restore.Restorer) error {
			must(r.BeginDevice(1, thin.Details{}))
			return r.RefLeaves(btree.Leaf{Block: 0, First: 0, Last: 100, Entries: 100})
		}, want: restore.ErrUnknownLeaf},
		{name: "out of metadata space", size: 64 * block.Size, opts: restore.Options{DataBlockSize: 128, NrDataBlocks: 1000}, do: func(r *restore.Restorer) error {
			must(r.BeginDevice(1, thin.Details{MappedBlocks: 100000}))
			for v := uint64(0); v < 100000; v++ {
				if err := r.Run(v, v%1000, 1, 0); err != nil {
					return err
				}
			}
			return r.EndDevice()
		}, want: restore.ErrNoSpace},
		{name: "out of metadata space at the end", size: 16 * block.Size, opts: restore.Options{DataBlockSize: 128, NrDataBlocks: 1000}, do: func(r *restore.Restorer) error {
			for i := thin.DevID(0); i < 20; i++ {
				must(r.BeginDevice(i, thin.Details{}))
				must(r.EndDevice())
			}
			return r.End()
		}, want: restore.ErrNoSpace},
		{name: "absurd nr_data_blocks", opts: restore.Options{DataBlockSize: 128, NrDataBlocks: 1 << 39}, want: restore.ErrTooManyDataBlocks},
		{name: "bad data block size", opts: restore.Options{DataBlockSize: 100, NrDataBlocks: 10}, want: restore.ErrOptions},
		{name: "too small", size: 2 * block.Size, opts: restore.Options{DataBlockSize: 128, NrDataBlocks: 1000}, want: restore.ErrNoSpace},
	} {
		t.Run(tc.name, func(t *testing.T) {
			size := tc.size
			if size == 0 {
				size = 4 << 20
			}
			opts := tc.opts
			if opts.DataBlockSize == 0 {
				opts = defaultOpts
			}
			r, err := restore.New(newFile(t, size), size, opts)
			if err == nil {
				err = catch(func() error { return tc.do(r) })
			}
			assert.ErrorIs(t, err, tc.want)
			// The first error sticks.
			if r != nil {
				assert.ErrorIs(t, r.End(), tc.want)
			}
		})
	}
}

type setupError struct{ err error }

func must(err error) {
	if err != nil {
		panic(setupError{err})
	}
}

// catch turns a failed setup step into a test error.
func catch(f func() error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			se, ok := v.(setupError)
			if !ok {
				panic(v)
			}
			err = fmt.Errorf("setup: %w", se.err)
		}
	}()
	return f()
}

// The output need not be readable unless a leaf must be unshared.
func TestRestoreWriteOnly(t *testing.T) {
	var w writeOnly
	w.b = make([]byte, 4<<20)
	r, err := restore.New(&w, 4<<20, defaultOpts)
	assert.NilError(t, err)
	assert.NilError(t, r.BeginDevice(0, thin.Details{MappedBlocks: 1000}))
	ok(t, r.Run(0, 0, 1000, 0))
	assert.NilError(t, r.EndDevice())
	assert.NilError(t, r.End())
	checkSpaceMaps(t, w.b)
	var nr *restore.DeviceError
	assert.Assert(t, !errors.As(err, &nr))
}

type writeOnly struct{ b []byte }

func (w *writeOnly) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > int64(len(w.b)) {
		return 0, io.ErrShortWrite
	}
	return copy(w.b[off:], p), nil
}

// TestRestoreBigCounts fills both overflow trees past one leaf and gives
// the data space map an index tree of more than one level.
func TestRestoreBigCounts(t *testing.T) {
	const size = 16 << 20
	opts := restore.Options{Time: 1, TransactionID: 2, DataBlockSize: 128, NrDataBlocks: 200 * spacemap.EntriesPerBitmap}
	f := newFile(t, size)
	r, err := restore.New(f, size, opts)
	assert.NilError(t, err)
	const n = 120_000
	details := thin.Details{MappedBlocks: n}
	assert.NilError(t, r.BeginDevice(0, details))
	// Spread the data blocks over every bitmap.
	stride := opts.NrDataBlocks / n
	for i := uint64(0); i < n; i++ {
		ok(t, r.Run(i, i*stride, 1, 0))
	}
	assert.NilError(t, r.EndDevice())
	leaves := r.Leaves()
	assert.Assert(t, len(leaves) > 400)
	// Three untouched snapshots: every leaf of device 0 gets count 4.
	for dev := thin.DevID(1); dev <= 3; dev++ {
		assert.NilError(t, r.BeginDevice(dev, details))
		assert.NilError(t, r.RefLeaves(leaves...))
		assert.NilError(t, r.EndDevice())
	}
	// Two copies: the first 2000 data blocks get count 3.
	for dev := thin.DevID(4); dev <= 5; dev++ {
		assert.NilError(t, r.BeginDevice(dev, thin.Details{MappedBlocks: 2000}))
		for i := uint64(0); i < 2000; i++ {
			ok(t, r.Run(i, i*stride, 1, 0))
		}
		assert.NilError(t, r.EndDevice())
	}
	assert.NilError(t, r.End())
	out, err := os.ReadFile(f.Name())
	assert.NilError(t, err)
	checkSpaceMaps(t, out)
	dc := dataCounts(t, out)
	assert.Equal(t, dc[0], uint32(3))
	assert.Equal(t, dc[2000*stride], uint32(1))
	oracle(t, f.Name(), nil)
}

func TestWriteSpaceMaps(t *testing.T) {
	const nrMeta, nrData = 40000, 3 * spacemap.EntriesPerBitmap
	meta, data := restore.NewCounts(nrMeta), restore.NewCounts(nrData)
	for b := uint64(0); b < 700; b++ {
		meta.Set(b, uint32(b%5))
	}
	meta.Set(800, 300)
	meta.Set(801, 1<<20)
	for b := uint64(0); b < nrData; b += 7 {
		data.Set(b, uint32(b%6))
	}
	start := block.Nr(1000)
	need := restore.SpaceMapBlocks(meta, data)
	w := &writeOnly{b: make([]byte, nrMeta*block.Size)}
	metaRoot, dataRoot, err := restore.WriteSpaceMaps(w, meta, data, start)
	assert.NilError(t, err)
	for b := uint64(start); b < uint64(start)+need; b++ {
		assert.Equal(t, meta.Get(b), uint32(1))
	}

	var es []spacemap.IndexEntry
	readTree(t, w.b, dataRoot.BitmapRoot, spacemap.IndexEntrySize, func(k uint64, v []byte) {
		es = append(es, spacemap.ParseIndexEntry(v))
	})
	dc := smCounts(t, w.b, dataRoot, es)
	for b := uint64(0); b < nrData; b++ {
		assert.Equal(t, dc[b], data.Get(b), "data block %d", b)
	}
	ib := w.b[int(metaRoot.BitmapRoot)*block.Size:][:block.Size]
	assert.NilError(t, block.Verify(ib, metaRoot.BitmapRoot, block.Index))
	mes, err := spacemap.ParseIndexBlock(ib, metaRoot.NrBitmaps())
	assert.NilError(t, err)
	mc := smCounts(t, w.b, metaRoot, mes)
	for b := uint64(0); b < nrMeta; b++ {
		assert.Equal(t, mc[b], meta.Get(b), "metadata block %d", b)
	}

	// The range must be free.
	_, _, err = restore.WriteSpaceMaps(w, meta, data, 600)
	assert.ErrorContains(t, err, "in use")
}

// Leaves of defs that no device ends up pointing at (never referenced, or
// copied into a device's own leaf) must not keep references to their data.
func TestRestoreUnusedDefs(t *testing.T) {
	var doc strings.Builder
	doc.WriteString(`<superblock uuid="" time="1" transaction="1" version="2" data_block_size="128" nr_data_blocks="1000">` + "\n")
	doc.WriteString(`<def name="unused"><range_mapping origin_begin="0" data_begin="0" length="100" time="0"/></def>` + "\n")
	doc.WriteString(`<def name="copied"><range_mapping origin_begin="10" data_begin="100" length="200" time="0"/></def>` + "\n")
	doc.WriteString(`<device dev_id="1" mapped_blocks="203" transaction="0" creation_time="0" snap_time="0">` + "\n")
	doc.WriteString(`<range_mapping origin_begin="0" data_begin="300" length="3" time="1"/><ref name="copied"/>` + "\n")
	doc.WriteString("</device></superblock>\n")
	path, err := restoreXML(t, []byte(doc.String()), 1<<20)
	assert.NilError(t, err)
	out, err := os.ReadFile(path)
	assert.NilError(t, err)
	checkSpaceMaps(t, out)
	dc := dataCounts(t, out)
	for b := 0; b < 303; b++ {
		want := uint32(1)
		if b < 100 {
			want = 0
		}
		assert.Equal(t, dc[b], want, "data block %d", b)
	}
	oracle(t, path, nil)
}

// ok is assert.NilError for hot loops: it does not capture the caller's
// source unless it fails.
func ok(t testing.TB, err error) {
	if err != nil {
		t.Helper()
		t.Fatal(err)
	}
}

// Untouched snapshots share their origin's whole tree: the root's count
// goes to 4 here, into the metadata overflow tree.
func TestRestoreSnapshot(t *testing.T) {
	const size = 4 << 20
	f := newFile(t, size)
	r, err := restore.New(f, size, defaultOpts)
	assert.NilError(t, err)
	d := thin.Details{MappedBlocks: 3000, SnapshottedTime: 2}
	assert.NilError(t, r.BeginDevice(1, d))
	ok(t, r.Run(0, 0, 3000, 0))
	assert.NilError(t, r.EndDevice())
	assert.NilError(t, r.Snapshot(2, thin.Details{MappedBlocks: 3000, CreationTime: 1, SnapshottedTime: 2}, 1))
	assert.Equal(t, len(r.Leaves()), 0)
	assert.NilError(t, r.Snapshot(3, thin.Details{MappedBlocks: 3000, CreationTime: 2, SnapshottedTime: 2}, 2))
	assert.NilError(t, r.Snapshot(4, thin.Details{MappedBlocks: 3000, CreationTime: 2, SnapshottedTime: 2}, 1))
	assert.NilError(t, r.BeginDevice(5, thin.Details{}))
	assert.NilError(t, r.EndDevice())
	assert.NilError(t, r.End())

	out, err := os.ReadFile(f.Name())
	assert.NilError(t, err)
	checkSpaceMaps(t, out)
	sb := superblock(t, out)
	var roots []uint64
	readTree(t, out, sb.MappingRoot, 8, func(_ uint64, v []byte) {
		roots = append(roots, binary.LittleEndian.Uint64(v))
	})
	assert.Equal(t, len(roots), 5)
	assert.Equal(t, roots[1], roots[0])
	assert.Equal(t, roots[3], roots[0])
	ib := out[int(sb.MetadataSM.BitmapRoot)*block.Size:][:block.Size]
	es, err := spacemap.ParseIndexBlock(ib, sb.MetadataSM.NrBitmaps())
	assert.NilError(t, err)
	mc := smCounts(t, out, sb.MetadataSM, es)
	assert.Equal(t, mc[roots[0]], uint32(4))
	assert.DeepEqual(t, dataCounts(t, out)[:3001], append(slices.Repeat([]uint32{1}, 3000), 0))
	oracle(t, f.Name(), nil)

	for _, tc := range []struct {
		name string
		do   func(r *restore.Restorer) error
		want error
	}{
		{"unknown origin", func(r *restore.Restorer) error { return r.Snapshot(2, thin.Details{}, 7) }, restore.ErrUnknownOrigin},
		{"mapped_blocks differ", func(r *restore.Restorer) error {
			return r.Snapshot(2, thin.Details{MappedBlocks: 11}, 1)
		}, restore.ErrMappedBlocks},
		{"out of order", func(r *restore.Restorer) error { return r.Snapshot(1, thin.Details{MappedBlocks: 10}, 1) }, restore.ErrDuplicateDevice},
		{"inside a device", func(r *restore.Restorer) error {
			must(r.BeginDevice(3, thin.Details{}))
			return r.Snapshot(4, thin.Details{MappedBlocks: 10}, 1)
		}, restore.ErrState},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := restore.New(newFile(t, size), size, defaultOpts)
			assert.NilError(t, err)
			assert.NilError(t, r.BeginDevice(1, thin.Details{MappedBlocks: 10}))
			ok(t, r.Run(0, 0, 10, 0))
			assert.NilError(t, r.EndDevice())
			assert.ErrorIs(t, catch(func() error { return tc.do(r) }), tc.want)
		})
	}
}
