package repair_test

import (
	"bytes"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/repair"
	"github.com/docker-devmapper/docker-devmapper/metadata/scan"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
	"github.com/docker-devmapper/docker-devmapper/metadata/xml"
)

// devFacts is an xml.Visitor that counts each device's mappings and finds
// its oldest and newest mapping times.
type devFacts struct {
	cur            thin.DevID
	count          map[thin.DevID]uint64
	oldest, newest map[thin.DevID]uint32
}

func newDevFacts() *devFacts {
	return &devFacts{count: map[thin.DevID]uint64{}, oldest: map[thin.DevID]uint32{}, newest: map[thin.DevID]uint32{}}
}

func (f *devFacts) Superblock(xml.Superblock) error { return nil }
func (f *devFacts) BeginDevice(id thin.DevID, _ thin.Details) error {
	f.cur, f.count[id] = id, 0
	return nil
}
func (f *devFacts) EndDevice() error      { return nil }
func (f *devFacts) BeginDef(string) error { return nil }
func (f *devFacts) EndDef() error         { return nil }
func (f *devFacts) Ref(string) error      { return nil }
func (f *devFacts) End() error            { return nil }
func (f *devFacts) Run(_, _, length uint64, time uint32) error {
	if o, ok := f.oldest[f.cur]; !ok || time < o {
		f.oldest[f.cur] = time
	}
	f.newest[f.cur] = max(f.newest[f.cur], time)
	f.count[f.cur] += length
	return nil
}

// zeroAll zeroes every root a scan of img finds among the trees pick
// chooses, and scans again, until none is left: the tree kind is gone,
// stale copies included.
func zeroAll(t *testing.T, img thintest.Image, pick func(*scan.Result) []scan.Tree) {
	t.Helper()
	for range 64 {
		res, err := scan.Run(t.Context(), img.Reader(), scan.Options{})
		assert.NilError(t, err)
		trees := pick(res)
		if len(trees) == 0 {
			return
		}
		for _, tr := range trees {
			img.Zero(tr.Root)
		}
	}
	t.Fatal("trees keep turning up")
}

func topLevels(r *scan.Result) []scan.Tree    { return r.Mappings }
func detailsTrees(r *scan.Result) []scan.Tree { return r.Details }

// TestRepairOrphanTrees: after lost roots, device trees a scan finds are
// given to devices only where something names them; a top level with no
// details tree gives back every device it names with details rebuilt
// from its tree; what cannot be settled is reported, never guessed.
func TestRepairOrphanTrees(t *testing.T) {
	const fixture = "s2-snapshot-tree"
	ref := string(thintest.Dump(t, fixture, "thin_dump-0.9.0.xml"))
	facts := newDevFacts()
	assert.NilError(t, xml.Read(strings.NewReader(ref), facts))
	orig := thintest.Image(thintest.Load(t, fixture))

	t.Run("no-details-tree", func(t *testing.T) {
		// The superblock and every details tree are gone; the newest top
		// level survives.
		img := thintest.Image(bytes.Clone(orig))
		zeroAll(t, img, detailsTrees)
		img.Zero(0)
		opts := repair.Options{TransactionID: ptr(uint64(42)), DataBlockSize: ptr(uint32(128)), NrDataBlocks: ptr(uint64(65536))}
		out := thintest.WriteTemp(t, make([]byte, len(img)))
		f, err := os.OpenFile(out, os.O_RDWR, 0)
		assert.NilError(t, err)
		defer f.Close()
		res, err := repair.Repair(t.Context(), img.Reader(), f, int64(len(img)), opts)
		assert.NilError(t, err)
		assert.Assert(t, is.Equal(res.Action, repair.Rebuild), res.Reason)
		assert.Assert(t, res.After != nil)
		assert.Check(t, is.Equal(res.After.Outcome, check.Clean), res.After.Summary)
		assert.Check(t, is.Contains(strings.Join(res.Notes, "\n"), "no details tree survives"))
		assert.Check(t, !res.Lost())
		var ids []thin.DevID
		for _, d := range res.Devices {
			ids = append(ids, d.ID)
			assert.Check(t, d.DetailsRebuilt, "device %d", d.ID)
			assert.Check(t, d.RecoveredByScan, "device %d", d.ID)
			assert.Check(t, is.Equal(d.Kept, facts.count[d.ID]), "device %d", d.ID)
			assert.Assert(t, d.Rebuilt != nil)
			assert.Check(t, is.DeepEqual(*d.Rebuilt, repair.RebuiltDetails{
				MappedBlocks: facts.count[d.ID], TransactionID: 42, CreationTime: facts.oldest[d.ID], SnapTime: uint32(res.Pool.Time.Value),
			}), "device %d", d.ID)
		}
		want := slices.Sorted(func(yield func(thin.DevID) bool) {
			for id := range facts.count {
				if !yield(id) {
					return
				}
			}
		})
		assert.Check(t, is.DeepEqual(ids, want))
		assert.Check(t, is.Equal(res.Pool.Time.Value, uint64(4)))
		compareWithReference(t, img, out, dump(t, block.NewReader(f, int64(len(img)))), refArgs(opts)...)
	})

	t.Run("no-top-level-nor-details", func(t *testing.T) {
		img := thintest.Image(bytes.Clone(orig))
		zeroAll(t, img, topLevels)
		zeroAll(t, img, detailsTrees)
		res, err := repair.Repair(t.Context(), img.Reader(), nil, int64(len(img)), repair.Options{})
		assert.NilError(t, err)
		assert.Check(t, is.Equal(res.Action, repair.Cannot))
		assert.Check(t, is.Contains(res.Reason, "no top level or details tree, only "))
		assert.Check(t, is.Contains(res.Reason, "repair does not invent them"))
	})

	t.Run("names-lost-counts-alike", func(t *testing.T) {
		// Every top level is gone, so no leaf names a device tree;
		// devices 2, 3 and 4 all count 609 mappings.
		img := thintest.Image(bytes.Clone(orig))
		zeroAll(t, img, topLevels)
		res, err := repair.Repair(t.Context(), img.Reader(), nil, int64(len(img)), repair.Options{})
		assert.NilError(t, err)
		assert.Assert(t, is.Equal(res.Action, repair.Rebuild), res.Reason)
		assert.Check(t, is.Equal(res.After.Outcome, check.Clean), res.After.Summary)
		alike := []thin.DevID{2, 3, 4}
		for _, d := range res.Devices {
			if !slices.Contains(alike, d.ID) {
				assert.Check(t, is.Len(d.Candidates, 0), "device %d", d.ID)
				assert.Check(t, is.Equal(d.Kept, facts.count[d.ID]), "device %d", d.ID)
				continue
			}
			assert.Check(t, d.NoMappingTree, "device %d", d.ID)
			assert.Check(t, is.Equal(d.Kept, uint64(0)))
			assert.Check(t, is.Equal(d.Lost, facts.count[d.ID]))
			// The device's own tree is among its candidates, and every
			// candidate holds as many mappings.
			assert.Check(t, slices.Contains(d.Candidates, uint64(orig.DevRoot(t, uint64(d.ID)))), "device %d: candidates %v", d.ID, d.Candidates)
			for _, c := range d.Candidates {
				assert.Check(t, is.Equal(countTree(t, img, block.Nr(c)), facts.count[d.ID]))
			}
			var others []thin.DevID
			for _, id := range alike {
				if id != d.ID {
					others = append(others, id)
				}
			}
			assert.Check(t, is.DeepEqual(d.SameCount, others))
		}
		var b bytes.Buffer
		assert.NilError(t, res.WriteText(&b))
		assert.Check(t, is.Contains(b.String(), "as do the details of devices 2, 4: repair does not guess which tree is whose"))
	})

	t.Run("unclaimed-tree", func(t *testing.T) {
		// As above, and device 5's details count one mapping too many,
		// so nothing claims its tree.
		img := thintest.Image(bytes.Clone(orig))
		zeroAll(t, img, topLevels)
		leaf, i := img.Lookup(t, img.Superblock().DetailsRoot, thin.DetailsSize, 5)
		off := img.ValueOffset(t, leaf, thin.DetailsSize, i)
		d := thin.ParseDetails(img.Block(leaf)[off:])
		d.MappedBlocks++
		d.Put(img.Block(leaf)[off:])
		block.Seal(img.Block(leaf), block.Node)

		res, err := repair.Repair(t.Context(), img.Reader(), nil, int64(len(img)), repair.Options{})
		assert.NilError(t, err)
		assert.Assert(t, is.Equal(res.Action, repair.Rebuild), res.Reason)
		root := uint64(orig.DevRoot(t, 5))
		assert.Check(t, slices.Contains(res.Unclaimed, repair.UnclaimedTree{Root: root, Mappings: facts.count[5], NewestTime: facts.newest[5]}), "%+v", res.Unclaimed)
		assert.Check(t, res.UnclaimedTotal >= 1)
		for _, d := range res.Devices {
			if d.ID == 5 {
				assert.Check(t, d.NoMappingTree)
				assert.Check(t, is.Len(d.Candidates, 0))
			}
		}
		for _, u := range res.Unclaimed {
			assert.Check(t, is.Equal(countTree(t, img, block.Nr(u.Root)), u.Mappings))
		}
		assert.Check(t, is.Contains(strings.Join(res.Notes, "\n"), "device trees the scan found are left out"))

		var b bytes.Buffer
		assert.NilError(t, res.WriteJSON(&b))
		var v struct {
			Unclaimed []struct {
				Root uint64 `json:"root"`
			} `json:"unclaimed_trees"`
			Total uint64 `json:"unclaimed_trees_total"`
		}
		assert.NilError(t, json.Unmarshal(b.Bytes(), &v))
		assert.Check(t, is.Equal(v.Total, res.UnclaimedTotal))
		assert.Check(t, is.Len(v.Unclaimed, len(res.Unclaimed)))
	})
}

// countTree counts the mappings of the device tree at root.
func countTree(t *testing.T, img thintest.Image, root block.Nr) uint64 {
	t.Helper()
	nd := img.Node(t, root, 8)
	if !nd.Internal {
		return uint64(nd.NrEntries)
	}
	var n uint64
	for i := range nd.NrEntries {
		n += countTree(t, img, nd.Child(i))
	}
	return n
}
