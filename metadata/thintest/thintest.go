package thintest

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// Fixtures names the kernel-written pools in testdata/kernel.
var Fixtures = []string{"s1-one-empty-thin", "s2-snapshot-tree", "s3-bigblock-metasnap"}

// Root is the repository's top directory.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// KernelDir is where the kernel-written fixtures live.
func KernelDir() string { return filepath.Join(Root(), "testdata", "kernel") }

// Gunzip reads a gzipped file whole.
func Gunzip(t testing.TB, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	assert.NilError(t, err)
	defer f.Close()
	z, err := gzip.NewReader(f)
	assert.NilError(t, err)
	b, err := io.ReadAll(z)
	assert.NilError(t, err)
	return b
}

// GunzipFile unpacks the gzipped file src into t.TempDir(), under src's
// name without .gz, and returns the new file's path.
func GunzipFile(t testing.TB, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), strings.TrimSuffix(filepath.Base(src), ".gz"))
	assert.NilError(t, os.WriteFile(dst, Gunzip(t, src), 0o600))
	return dst
}

// BenchPool opens the pool the environment variable env names (make
// bench's generator writes large ones), or else loads fixture s2, and sets
// the benchmark's bytes per operation to its size. The file is closed
// when the benchmark ends.
func BenchPool(b *testing.B, env string) *block.Reader {
	b.Helper()
	if p := os.Getenv(env); p != "" {
		f, err := block.Open(p)
		assert.NilError(b, err)
		b.Cleanup(func() { f.Close() })
		b.SetBytes(f.Size())
		return f.Reader
	}
	img := Image(Load(b, "s2-snapshot-tree"))
	b.SetBytes(int64(len(img)))
	return img.Reader()
}

// Load returns the uncompressed image of fixture name.
func Load(t testing.TB, name string) []byte {
	return Gunzip(t, filepath.Join(KernelDir(), name+".img.gz"))
}

// Dump returns a fixture's reference thin_dump output; suffix is e.g.
// "thin_dump-0.9.0.xml".
func Dump(t testing.TB, name, suffix string) []byte {
	return Gunzip(t, filepath.Join(KernelDir(), name+"."+suffix+".gz"))
}

// WriteTemp writes img into a new file in t.TempDir and returns its path.
func WriteTemp(t testing.TB, img []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "metadata")
	assert.NilError(t, os.WriteFile(p, img, 0o600))
	return p
}

// Image is a metadata image in memory, for damaging.
type Image []byte

// Reader reads the image's blocks.
func (img Image) Reader() *block.Reader {
	return block.NewReader(bytes.NewReader(img), int64(len(img)))
}

// Block is the bytes of block n.
func (img Image) Block(n block.Nr) []byte { return img[int(n)*block.Size : int(n+1)*block.Size] }

// Superblock parses block 0.
func (img Image) Superblock() thin.Superblock { return thin.ParseSuperblock(img.Block(0)) }

// Reseal recomputes the checksum of block n for the kind its salt had.
func (img Image) Reseal(t testing.TB, n block.Nr, k block.Kind) {
	t.Helper()
	block.Seal(img.Block(n), k)
}

// EditSuperblock changes the live superblock and reseals it.
func (img Image) EditSuperblock(t testing.TB, edit func(*thin.Superblock)) {
	sb := img.Superblock()
	edit(&sb)
	sb.Encode(img.Block(0), 0)
}

// Node parses block n as a b-tree node with leaf values of vs bytes.
func (img Image) Node(t testing.TB, n block.Nr, vs int) btree.Node {
	t.Helper()
	nd, err := btree.ParseNode(img.Block(n), n, vs)
	assert.NilError(t, err)
	return nd
}

// SetKey overwrites key i of node n and reseals it.
func (img Image) SetKey(t testing.TB, n block.Nr, i int, k uint64) {
	b := img.Block(n)
	binary.LittleEndian.PutUint64(b[32+8*i:], k)
	block.Seal(b, block.Node)
}

// SetValueU64 overwrites the 8-byte value i of node n and reseals it.
func (img Image) SetValueU64(t testing.TB, n block.Nr, i int, v uint64) {
	b := img.Block(n)
	max := int(binary.LittleEndian.Uint32(b[20:]))
	binary.LittleEndian.PutUint64(b[32+8*max+8*i:], v)
	block.Seal(b, block.Node)
}

// dataBitmap finds the bitmap block holding data block d.
func (img Image) dataBitmap(t testing.TB, d uint64) block.Nr {
	t.Helper()
	sb := img.Superblock()
	i := d / spacemap.EntriesPerBitmap
	n := sb.DataSM.BitmapRoot
	for {
		nd := img.Node(t, n, spacemap.IndexEntrySize)
		if !nd.Internal {
			for j := range nd.NrEntries {
				if nd.Key(j) == i {
					return spacemap.ParseIndexEntry(nd.Value(j)).Blocknr
				}
			}
			t.Fatalf("no index entry for bitmap %d", i)
		}
		k := 0
		for k+1 < nd.NrEntries && nd.Key(k+1) <= i {
			k++
		}
		n = nd.Child(k)
	}
}

// metaBitmap finds the bitmap block holding metadata block m.
func (img Image) metaBitmap(t testing.TB, m uint64) block.Nr {
	sb := img.Superblock()
	ix := img.Block(sb.MetadataSM.BitmapRoot)
	return spacemap.ParseIndexEntry(ix[16+spacemap.IndexEntrySize*int(m/spacemap.EntriesPerBitmap):]).Blocknr
}

// DataCount is the 2-bit bitmap entry of data block d.
func (img Image) DataCount(t testing.TB, d uint64) uint8 {
	return spacemap.Get(img.Block(img.dataBitmap(t, d)), int(d%spacemap.EntriesPerBitmap))
}

// SetDataCount writes the 2-bit bitmap entry of data block d (v < 3).
func (img Image) SetDataCount(t testing.TB, d uint64, v uint8) {
	n := img.dataBitmap(t, d)
	spacemap.Set(img.Block(n), int(d%spacemap.EntriesPerBitmap), v)
	block.Seal(img.Block(n), block.Bitmap)
}

// MetaCount is the 2-bit bitmap entry of metadata block m.
func (img Image) MetaCount(t testing.TB, m uint64) uint8 {
	return spacemap.Get(img.Block(img.metaBitmap(t, m)), int(m%spacemap.EntriesPerBitmap))
}

// SetMetaCount writes the 2-bit bitmap entry of metadata block m (v < 3).
func (img Image) SetMetaCount(t testing.TB, m uint64, v uint8) {
	n := img.metaBitmap(t, m)
	spacemap.Set(img.Block(n), int(m%spacemap.EntriesPerBitmap), v)
	block.Seal(img.Block(n), block.Bitmap)
}

// Zero clears block n.
func (img Image) Zero(n block.Nr) { clear(img.Block(n)) }

// Flip flips one bit of block n without resealing it.
func (img Image) Flip(n block.Nr, byteOff int, bit uint) { img.Block(n)[byteOff] ^= 1 << bit }

// Lookup descends the b-tree rooted at root to the leaf that holds key k
// and returns that leaf and the entry's index, or -1 if k is absent.
func (img Image) Lookup(t testing.TB, root block.Nr, vs int, k uint64) (block.Nr, int) {
	t.Helper()
	n := root
	for range 16 {
		nd := img.Node(t, n, vs)
		if !nd.Internal {
			for i := range nd.NrEntries {
				if nd.Key(i) == k {
					return n, i
				}
			}
			return n, -1
		}
		i := 0
		for i+1 < nd.NrEntries && nd.Key(i+1) <= k {
			i++
		}
		n = nd.Child(i)
	}
	t.Fatalf("tree at %d deeper than 16 levels", root)
	return 0, -1
}

// DevRoot is the root of device dev's mapping tree.
func (img Image) DevRoot(t testing.TB, dev uint64) block.Nr {
	t.Helper()
	leaf, i := img.Lookup(t, img.Superblock().MappingRoot, 8, dev)
	assert.Assert(t, i >= 0, "device %d not in the top level", dev)
	return img.Node(t, leaf, 8).Child(i)
}

// Mapping finds the leaf and entry that map vblock of device dev.
func (img Image) Mapping(t testing.TB, dev, vblock uint64) (block.Nr, int) {
	t.Helper()
	leaf, i := img.Lookup(t, img.DevRoot(t, dev), 8, vblock)
	assert.Assert(t, i >= 0, "device %d does not map %d", dev, vblock)
	return leaf, i
}

// FreeMeta is a metadata block whose stored count is 0.
func (img Image) FreeMeta(t testing.TB) block.Nr {
	t.Helper()
	sb := img.Superblock()
	for m := sb.MetadataSM.NrBlocks - 1; m > 0; m-- {
		if img.MetaCount(t, m) == 0 {
			return block.Nr(m)
		}
	}
	t.Fatal("no free metadata block")
	return 0
}
