package check_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/golden"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

func run(t *testing.T, img thintest.Image, opts check.Options) *check.Report {
	t.Helper()
	r, err := check.Run(t.Context(), img.Reader(), opts)
	assert.NilError(t, err)
	return r
}

func text(t *testing.T, r *check.Report) string {
	var b bytes.Buffer
	assert.NilError(t, r.WriteText(&b))
	return b.String()
}

func TestFixturesClean(t *testing.T) {
	for _, name := range thintest.Fixtures {
		t.Run(name, func(t *testing.T) {
			img := thintest.Image(thintest.Load(t, name))
			r := run(t, img, check.Options{})
			assert.Equal(t, r.Outcome(), check.Clean, text(t, r))
			assert.Check(t, is.Len(r.Findings, 0))
			assert.Check(t, r.Data.Checked && r.Metadata.Checked)
			sb := img.Superblock()
			// The recount of allocated blocks equals what the kernel stored.
			assert.Check(t, is.Equal(r.Data.NrAllocated, sb.DataSM.NrAllocated))
			assert.Check(t, is.Equal(r.Metadata.NrAllocated, sb.MetadataSM.NrAllocated))
			golden.Assert(t, text(t, r), name+".clean.golden")
			if pass, ok := referenceCheck(t, img); ok {
				assert.Check(t, pass, "thin_check 1.1.0 rejects %s", name)
			}
		})
	}
}

func TestFixturesQuickAndSnapshot(t *testing.T) {
	img := thintest.Image(thintest.Load(t, "s3-bigblock-metasnap"))
	r := run(t, img, check.Options{MetadataSnap: true})
	assert.Equal(t, r.Outcome(), check.Clean, text(t, r))
	assert.Equal(t, r.TransactionID, uint64(7)) // the snapshot's, not the live 8
	assert.Equal(t, r.Devices, 2)
	assert.Check(t, !r.Data.Checked)

	r = run(t, img, check.Options{SkipMappings: true})
	assert.Equal(t, r.Outcome(), check.Clean)
	assert.Equal(t, r.Mappings, uint64(0))

	s1 := thintest.Image(thintest.Load(t, "s1-one-empty-thin"))
	_, err := check.Run(t.Context(), s1.Reader(), check.Options{MetadataSnap: true})
	assert.ErrorIs(t, err, thin.ErrNoSnapshot)

	// A snapshot that is held but unreadable is damage, not an error.
	bad := thintest.Image(thintest.Load(t, "s3-bigblock-metasnap"))
	bad.Zero(bad.Superblock().MetadataSnap)
	r = run(t, bad, check.Options{MetadataSnap: true})
	assert.Equal(t, r.Outcome(), check.SuperblockDamaged)
}

// firstDataWithCount finds a data block whose bitmap entry is c.
func firstDataWithCount(t *testing.T, img thintest.Image, c uint8) uint64 {
	for d := range img.Superblock().DataSM.NrBlocks {
		if img.DataCount(t, d) == c {
			return d
		}
	}
	t.Fatalf("no data block with count %d", c)
	return 0
}

type damage struct {
	name    string
	fixture string
	apply   func(t *testing.T, img thintest.Image) thintest.Image
	want    check.Outcome
	// stricter: the reference thin_check 1.1.0 passes this image, ours
	// does not; the comment on the case says why we are right.
	stricter bool
}

var damages = []damage{
	{name: "data-refcount-low", want: check.CountsWrong, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		img.SetDataCount(t, firstDataWithCount(t, img, 2), 1) // the classic "was 1, expected 2"
		return img
	}},
	{name: "data-refcount-high", want: check.CountsWrong, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		img.SetDataCount(t, firstDataWithCount(t, img, 1), 2)
		return img
	}},
	{name: "metadata-refcount-high", want: check.CountsWrong, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		img.SetMetaCount(t, uint64(img.Superblock().MappingRoot), 2)
		return img
	}},
	{name: "metadata-refcount-low", want: check.CountsWrong, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		img.SetMetaCount(t, uint64(img.Superblock().DetailsRoot), 0)
		return img
	}},
	{name: "data-leak", want: check.LeaksOnly, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		img.SetDataCount(t, 1000, 1)
		return img
	}},
	{name: "metadata-leak", want: check.LeaksOnly, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		img.SetMetaCount(t, uint64(img.FreeMeta(t)), 1)
		return img
	}},
	{name: "data-mapped-twice", want: check.CountsWrong, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		// device 5 maps 7->634, 8->635, 12->636; point 12 at 634 too.
		leaf, i := img.Mapping(t, 5, 12)
		img.SetValueU64(t, leaf, i, uint64(thin.MakeBlockTime(634, 3)))
		return img
	}},
	{name: "leaf-flipped-byte", want: check.TreesDamaged, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		leaf, _ := img.Mapping(t, 5, 12)
		img.Flip(leaf, 1000, 3)
		return img
	}},
	{name: "keys-out-of-order", want: check.TreesDamaged, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		leaf, i := img.Mapping(t, 5, 7)
		img.SetKey(t, leaf, i, 9)
		return img
	}},
	{name: "zeroed-node", want: check.TreesDamaged, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		leaf, _ := img.Mapping(t, 1, 0)
		img.Zero(leaf)
		return img
	}},
	{name: "lost-mapping-root", want: check.TreesDamaged, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		free := img.FreeMeta(t)
		img.EditSuperblock(t, func(s *thin.Superblock) { s.MappingRoot = free })
		return img
	}},
	{name: "lost-details-root", want: check.TreesDamaged, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		free := img.FreeMeta(t)
		img.EditSuperblock(t, func(s *thin.Superblock) { s.DetailsRoot = free })
		return img
	}},
	{name: "mapped-blocks-wrong", want: check.DetailsWrong, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		leaf, i := img.Lookup(t, img.Superblock().DetailsRoot, thin.DetailsSize, 1)
		v := img.Node(t, leaf, thin.DetailsSize).Value(i)
		binary.LittleEndian.PutUint64(v, 605)
		img.Reseal(t, leaf, block.Node)
		return img
	}},
	{name: "loop", want: check.TreesDamaged, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		root := img.DevRoot(t, 1) // internal: three leaves
		img.SetValueU64(t, root, 2, uint64(root))
		return img
	}},
	{name: "wiped-superblock", want: check.SuperblockDamaged, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		img.Zero(0)
		return img
	}},
	{name: "truncated", want: check.TreesDamaged, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		return img[:60*block.Size]
	}},
	// Warnings only: the kernel never trusts these hints, and 0.9.0's own
	// thin_restore writes nr_allocated one too high.
	{name: "nr-allocated-off", want: check.Clean, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		img.EditSuperblock(t, func(s *thin.Superblock) { s.DataSM.NrAllocated++ })
		return img
	}},
	{name: "needs-check-flag", want: check.Clean, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		img.EditSuperblock(t, func(s *thin.Superblock) { s.Flags |= thin.FlagNeedsCheck })
		return img
	}},
	// Stricter than the reference: both thin_check versions pass these.
	// The kernel refuses a pool with a bad magic (dm-thin-metadata.c
	// __check_incompat_features and superblock validation).
	{name: "bad-magic", want: check.SuperblockDamaged, stricter: true, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		img.EditSuperblock(t, func(s *thin.Superblock) { s.Magic = 12345 })
		return img
	}},
	{name: "incompat-flags", want: check.SuperblockDamaged, stricter: true, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		img.EditSuperblock(t, func(s *thin.Superblock) { s.IncompatFlags = 1 })
		return img
	}},
	// A mapping past the end of the data device passes both checkers and
	// then makes both repairs fail.
	{name: "mapping-past-data-end", want: check.TreesDamaged, stricter: true, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		leaf, i := img.Mapping(t, 5, 12)
		img.SetValueU64(t, leaf, i, uint64(thin.MakeBlockTime(70000, 3)))
		img.SetDataCount(t, 636, 0) // no leak to hide behind
		return img
	}},
	{name: "stale-overflow-entry", want: check.CountsWrong, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		// The data ref-count tree's last entry moves to block 640, whose
		// bitmap count is 1:
		// the kernel never reads such an entry; thin_check 1.1.0 rejects it.
		root := img.Superblock().DataSM.RefCountRoot
		nd := img.Node(t, root, 4)
		assert.Assert(t, !nd.Internal && nd.NrEntries > 0 && nd.Key(nd.NrEntries-1) < 640)
		assert.Equal(t, img.DataCount(t, 640), uint8(1))
		img.SetKey(t, root, nd.NrEntries-1, 640)
		return img
	}},
	{name: "s3-snapshot-only-block-leaked", fixture: "s3-bigblock-metasnap", want: check.CountsWrong, apply: func(t *testing.T, img thintest.Image) thintest.Image {
		// data block 0 is held only by the metadata snapshot's trees
		img.SetDataCount(t, 0, 0)
		return img
	}},
}

func TestDamage(t *testing.T) {
	for _, tc := range damages {
		t.Run(tc.name, func(t *testing.T) {
			fx := tc.fixture
			if fx == "" {
				fx = "s2-snapshot-tree"
			}
			img := tc.apply(t, thintest.Image(thintest.Load(t, fx)))
			r := run(t, img, check.Options{})
			out := text(t, r)
			assert.Equal(t, r.Outcome(), tc.want, out)
			golden.Assert(t, out, fx+"."+tc.name+".golden")

			var j bytes.Buffer
			assert.NilError(t, r.WriteJSON(&j))
			assert.Check(t, is.Contains(j.String(), `"outcome": "`+tc.want.String()+`"`))

			ref, ok := referenceCheck(t, img)
			if !ok {
				t.Log("reference thin_check 1.1.0 not installed: verdict not compared")
				return
			}
			clean := tc.want == check.Clean
			if tc.stricter {
				assert.Check(t, ref, "the reference now catches %s: drop 'stricter'", tc.name)
				assert.Check(t, !clean)
				return
			}
			assert.Check(t, is.Equal(ref, clean), "thin_check 1.1.0 passes=%v, we say %v", ref, tc.want)
		})
	}
}

// referenceCheck runs thin_check 1.1.0 on img and reports whether it
// passed; ok is false when the tool is not installed.
func referenceCheck(t *testing.T, img thintest.Image) (pass, ok bool) {
	bin := os.Getenv("TPT11_BIN")
	if bin == "" {
		bin = filepath.Join(thintest.Root(), ".cache", "tpt11", "usr", "sbin")
	}
	tool := filepath.Join(bin, "thin_check")
	if _, err := os.Stat(tool); err != nil {
		return false, false
	}
	p := thintest.WriteTemp(t, img)
	err := exec.Command(tool, "-q", p).Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("running %s: %v", tool, err)
	}
	return err == nil, true
}

func TestNotMetadata(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 64*block.Size)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	xml := append([]byte(`<superblock uuid="" time="4" transaction="42">`+"\n"), bytes.Repeat([]byte("  <device/>\n"), 1000)...)
	for _, tc := range []struct {
		name string
		img  []byte
		want string
	}{
		{"empty", nil, "smaller than one 4 KiB block"},
		{"short", make([]byte, 100), "smaller than one 4 KiB block"},
		{"zeros", make([]byte, 1024*block.Size), "no block of the first"},
		{"random", random, "no block of the first"},
		{"xml", xml, "looks like XML"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := check.Run(t.Context(), thintest.Image(tc.img).Reader(), check.Options{})
			assert.Check(t, errors.Is(err, check.ErrNotMetadata))
			assert.ErrorContains(t, err, tc.want)
		})
	}
}

func TestCancelled(t *testing.T) {
	img := thintest.Image(thintest.Load(t, "s2-snapshot-tree"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := check.Run(ctx, img.Reader(), check.Options{})
	assert.Check(t, errors.Is(err, context.Canceled))
}

func TestRecount(t *testing.T) {
	img := thintest.Image(thintest.Load(t, "s2-snapshot-tree"))
	assert.Check(t, run(t, img, check.Options{}).Recount() == nil)
	r := run(t, img, check.Options{KeepCounts: true})
	rc := r.Recount()
	assert.Assert(t, rc != nil)
	sb := img.Superblock()
	assert.Equal(t, len(rc.Meta), int(sb.MetadataSM.NrBlocks))
	assert.Equal(t, len(rc.Data), int(sb.DataSM.NrBlocks))
	assert.Equal(t, rc.Meta[0], uint32(1))
	assert.Check(t, rc.SpaceMap[sb.MetadataSM.BitmapRoot])
	assert.Check(t, rc.SpaceMap[sb.DataSM.RefCountRoot])
	assert.Check(t, !rc.SpaceMap[sb.MappingRoot])
	// The recount is the kernel's: every stored count matches it.
	for d, want := range rc.Data[:700] {
		if want < 3 {
			assert.Equal(t, uint32(img.DataCount(t, uint64(d))), want, "data block %d", d)
		}
	}
	assert.Check(t, run(t, img, check.Options{KeepCounts: true, SkipMappings: true}).Recount() == nil)
}
