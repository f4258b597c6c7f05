package repair_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/repair"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
	"github.com/docker-devmapper/docker-devmapper/metadata/xml"
)

// snapDump is the thin_dump XML of the held metadata snapshot of r.
func snapDump(t *testing.T, r *block.Reader) string {
	t.Helper()
	var b bytes.Buffer
	xw := xml.NewWriter(&b, xml.XML)
	assert.NilError(t, xml.Dump(r, xw, xml.Options{MetadataSnap: true}))
	assert.NilError(t, xw.Flush())
	return b.String()
}

// snapDeviceRoot is the root of device dev's tree in the held snapshot.
func snapDeviceRoot(t *testing.T, img thintest.Image, dev uint64) block.Nr {
	t.Helper()
	ssb := thin.ParseSuperblock(img.Block(img.Superblock().MetadataSnap))
	leaf, i := img.Lookup(t, ssb.MappingRoot, 8, dev)
	assert.Assert(t, i >= 0, "device %d not in the snapshot's top level", dev)
	return img.Node(t, leaf, 8).Child(i)
}

// TestRepairRebuildKeepsMetadataSnapshot: a rebuild keeps the held
// metadata snapshot when its trees are intact, copied beside the rebuilt
// trees, with every value it held; and drops it, saying why, when they
// are damaged.
func TestRepairRebuildKeepsMetadataSnapshot(t *testing.T) {
	const fixture = "s3-bigblock-metasnap"
	// Device 0 of the live pool maps virtual block 47360, written after
	// the snapshot was taken, from a leaf the snapshot does not share.
	pastEnd := func(t *testing.T, img thintest.Image) {
		leaf, i := img.Mapping(t, 0, 47360)
		img.SetValueU64(t, leaf, i, uint64(thin.MakeBlockTime(70000, 1)))
	}
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, img thintest.Image)
		kept   bool
		note   string
	}{
		{name: "live-mapping-past-end", damage: pastEnd, kept: true, note: "is kept: its trees are intact"},
		{
			name: "snapshot-tree-damaged-too",
			damage: func(t *testing.T, img thintest.Image) {
				pastEnd(t, img)
				img.Flip(snapDeviceRoot(t, img, 0), 100, 0)
			},
			note: "is dropped: its trees are damaged",
		},
		{
			name: "snapshot-maps-past-the-end-too",
			damage: func(t *testing.T, img thintest.Image) {
				pastEnd(t, img)
				root := snapDeviceRoot(t, img, 0)
				img.SetValueU64(t, root, 0, uint64(thin.MakeBlockTime(80000, 0)))
			},
			note: "is dropped: its trees are damaged",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			orig := thintest.Image(thintest.Load(t, fixture))
			img := thintest.Image(bytes.Clone(orig))
			tc.damage(t, img)
			out := make(thintest.Image, len(img))
			res, err := repair.Repair(t.Context(), img.Reader(), writerAt(out), int64(len(out)), repair.Options{})
			assert.NilError(t, err)
			assert.Assert(t, is.Equal(res.Action, repair.Rebuild), res.Reason)
			assert.Assert(t, res.After != nil)
			assert.Check(t, is.Equal(res.After.Outcome, check.Clean), res.After.Summary)
			assert.Check(t, is.Contains(strings.Join(res.Notes, "\n"), tc.note))
			t.Logf("metadata blocks in use: %d before, %d after", res.MetadataBefore, res.MetadataAfter)

			// The live pool lost the one mapping past the end, nothing
			// more.
			live := dump(t, out.Reader())
			want := strings.Replace(string(thintest.Dump(t, fixture, "thin_dump-0.9.0.xml")),
				"    <single_mapping origin_block=\"47360\" data_block=\"9\" time=\"1\"/>\n", "", 1)
			want = strings.Replace(want, `mapped_blocks="9"`, `mapped_blocks="8"`, 1)
			assert.Check(t, is.Equal(live, want))

			sb := out.Superblock()
			if !tc.kept {
				assert.Check(t, is.Equal(sb.MetadataSnap, block.Nr(0)))
			} else {
				assert.Assert(t, sb.MetadataSnap != 0)
				ssb := thin.ParseSuperblock(out.Block(sb.MetadataSnap))
				osb := thin.ParseSuperblock(orig.Block(orig.Superblock().MetadataSnap))
				assert.Check(t, is.Equal(ssb.TransactionID, osb.TransactionID))
				assert.Check(t, is.Equal(ssb.Time, osb.Time))
				assert.Check(t, is.Equal(snapDump(t, out.Reader()), string(thintest.Dump(t, fixture, "metasnap.thin_dump-0.9.0.xml"))))
			}

			dir := tpt11()
			if _, err := os.Stat(filepath.Join(dir, "thin_check")); err != nil {
				t.Log("the 1.1.0 tools are not installed: the result is not shown to them")
				return
			}
			p := thintest.WriteTemp(t, out)
			msg, err := exec.Command(filepath.Join(dir, "thin_check"), p).CombinedOutput()
			assert.Check(t, err == nil, "thin_check 1.1.0 rejects the repaired metadata: %v\n%s", err, msg)
			if tc.kept {
				doc, err := exec.Command(filepath.Join(dir, "thin_dump"), "-m", p).CombinedOutput()
				assert.Check(t, err == nil, "thin_dump 1.1.0 -m: %v\n%s", err, doc)
				assert.Check(t, is.Contains(string(doc), `<device dev_id="1" mapped_blocks="8" transaction="7"`))
			}
		})
	}
}
