package repair_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/golden"
	"gotest.tools/v3/skip"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/repair"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
	"github.com/docker-devmapper/docker-devmapper/metadata/xml"
)

// damageCase damages a copy of a kernel fixture and says what repair must
// make of it.
type damageCase struct {
	name    string
	fixture string
	damage  func(t *testing.T, img thintest.Image)
	action  repair.Action
	// lossless: the output's dump equals the fixture's reference dump.
	lossless bool
	// kept is the mappings the output must hold, when not lossless (0:
	// not checked).
	kept uint64
	// oracle compares with thin_repair: only where both can repair.
	oracle bool
	// growth is how many metadata blocks the repair may add.
	growth uint64
	opts   repair.Options
}

func ptr[T any](v T) *T { return &v }

var damageCases = []damageCase{
	{
		name: "clean", fixture: "s2-snapshot-tree", damage: func(*testing.T, thintest.Image) {},
		action: repair.Nothing, lossless: true,
	},
	{
		name: "data-count-too-low", fixture: "s2-snapshot-tree",
		damage: func(t *testing.T, img thintest.Image) { img.SetDataCount(t, 0, 1) }, // devices 1 and 2 map it from two leaves
		action: repair.SpaceMaps, lossless: true, oracle: true,
	},
	{
		name: "data-leak", fixture: "s2-snapshot-tree",
		damage: func(t *testing.T, img thintest.Image) { img.SetDataCount(t, 9000, 1) },
		action: repair.SpaceMaps, lossless: true, oracle: true,
	},
	{
		name: "metadata-count-wrong-and-leak", fixture: "s2-snapshot-tree",
		damage: func(t *testing.T, img thintest.Image) {
			img.SetMetaCount(t, 72, 2)
			img.SetMetaCount(t, uint64(img.FreeMeta(t)), 1)
		},
		action: repair.SpaceMaps, lossless: true, oracle: true,
	},
	{
		name: "data-bitmap-zeroed", fixture: "s2-snapshot-tree",
		damage: func(t *testing.T, img thintest.Image) {
			ie := img.Node(t, img.Superblock().DataSM.BitmapRoot, 16)
			img.Zero(spacemap.ParseIndexEntry(ie.Value(0)).Blocknr)
		},
		action: repair.SpaceMaps, lossless: true, oracle: true,
	},
	{
		name: "metasnap-data-leak", fixture: "s3-bigblock-metasnap",
		damage: func(t *testing.T, img thintest.Image) { img.SetDataCount(t, 4000, 1) },
		action: repair.SpaceMaps, lossless: true, oracle: true,
	},
	{
		name: "mapped-blocks-wrong", fixture: "s2-snapshot-tree",
		damage: func(t *testing.T, img thintest.Image) {
			leaf, i := img.Lookup(t, img.Superblock().DetailsRoot, thin.DetailsSize, 1)
			b := img.Block(leaf)
			off := 32 + 8*int(img.Node(t, leaf, thin.DetailsSize).MaxEntries) + thin.DetailsSize*i
			d := thin.ParseDetails(b[off:])
			d.MappedBlocks = 605
			d.Put(b[off:])
			block.Seal(b, block.Node)
		},
		action: repair.SpaceMaps, lossless: true, oracle: true,
	},
	{
		name: "shared-leaf-damaged", fixture: "s2-snapshot-tree",
		damage: func(t *testing.T, img thintest.Image) {
			leaf, _ := img.Mapping(t, 1, 300) // leaf 26, shared by devices 1 to 4
			img.Flip(leaf, 100, 0)
		},
		action: repair.Rebuild, kept: 2436 - 4*126, oracle: true,
	},
	{
		name: "device-root-unreadable", fixture: "s2-snapshot-tree",
		damage: func(t *testing.T, img thintest.Image) { img.Flip(img.DevRoot(t, 1), 100, 0) },
		// Device 1's range comes back from its older tree: the same
		// number of mappings, its last four writes older. Those are
		// written in leaves of their own: one block more.
		action: repair.Rebuild, kept: 2436, oracle: true, growth: 1,
	},
	{
		name: "mapping-past-end", fixture: "s2-snapshot-tree",
		damage: func(t *testing.T, img thintest.Image) {
			leaf, i := img.Mapping(t, 5, 7)
			img.SetValueU64(t, leaf, i, uint64(thin.MakeBlockTime(70000, 3)))
		},
		action: repair.Rebuild, kept: 2436 - 1, oracle: true,
	},
	{
		name: "details-for-wrong-device", fixture: "s2-snapshot-tree",
		damage: func(t *testing.T, img thintest.Image) {
			leaf, i := img.Lookup(t, img.Superblock().DetailsRoot, thin.DetailsSize, 5)
			img.SetKey(t, leaf, i, 9) // device 5 loses its details, 9 gains some
		},
		action: repair.Rebuild, kept: 2436,
		// Device 9 keeps its details and gets an empty tree: one block.
		growth: 1,
	},
	{
		name: "top-level-zeroed", fixture: "s2-snapshot-tree",
		damage: func(t *testing.T, img thintest.Image) { img.Zero(img.Superblock().MappingRoot) },
		// A scan finds each device's newest tree; device 1's is named by no
		// surviving top-level leaf but only its mapped_blocks fits it.
		// thin_repair rolls back to an older state instead, losing device
		// 1's last writes (FORMAT.md section 10.4).
		action: repair.Rebuild, lossless: true, oracle: true,
	},
	{
		name: "mapping-root-names-a-device-tree", fixture: "s2-snapshot-tree",
		damage: func(t *testing.T, img thintest.Image) {
			root := img.DevRoot(t, 1)
			img.EditSuperblock(t, func(sb *thin.Superblock) { sb.MappingRoot = root })
		},
		// The top level it names shares no device with the details tree:
		// a scan finds the real one.
		action: repair.Rebuild, lossless: true, oracle: true,
	},
	{
		name: "device-root-names-its-first-leaf", fixture: "s2-snapshot-tree",
		damage: func(t *testing.T, img thintest.Image) {
			first, _ := img.Mapping(t, 1, 0)
			leaf, i := img.Lookup(t, img.Superblock().MappingRoot, 8, 1)
			img.SetValueU64(t, leaf, i, uint64(first))
		},
		// The tree looks intact with 248 mappings where the details say
		// 606: the device's real tree, which only its mapped_blocks
		// matches, is found by a scan.
		action: repair.Rebuild, lossless: true, oracle: true,
	},
	{
		name: "device-root-names-the-top-level", fixture: "s2-snapshot-tree",
		damage: func(t *testing.T, img thintest.Image) {
			top := img.Superblock().MappingRoot
			leaf, i := img.Lookup(t, top, 8, 1)
			img.SetValueU64(t, leaf, i, uint64(top))
		},
		// Read as a device tree, the top level maps data block 0 at
		// times later than the pool's: implausible, so the device's own
		// tree, found by a scan, replaces it.
		action: repair.Rebuild, lossless: true, oracle: true,
	},
	{
		name: "details-count-of-an-older-tree", fixture: "s3-bigblock-metasnap",
		damage: func(t *testing.T, img thintest.Image) {
			leaf, i := img.Lookup(t, img.Superblock().DetailsRoot, thin.DetailsSize, 0)
			b := img.Block(leaf)
			off := 32 + 8*int(img.Node(t, leaf, thin.DetailsSize).MaxEntries) + thin.DetailsSize*i
			d := thin.ParseDetails(b[off:])
			d.MappedBlocks = 8 // what the held snapshot's older tree of device 0 holds
			d.Put(b[off:])
			block.Seal(b, block.Node)
		},
		// The live tree is newer than the snapshot's: the details are the
		// damaged part, corrected in place.
		action: repair.SpaceMaps, lossless: true, oracle: true,
	},
	{
		name: "metadata-snapshot-unreadable", fixture: "s3-bigblock-metasnap",
		damage: func(t *testing.T, img thintest.Image) { img.Zero(img.Superblock().MetadataSnap) },
		action: repair.SpaceMaps, lossless: true, oracle: true,
	},
	{
		name: "data-block-size-zero", fixture: "s2-snapshot-tree",
		damage: func(t *testing.T, img thintest.Image) {
			img.EditSuperblock(t, func(sb *thin.Superblock) { sb.DataBlockSize = 0 })
		},
		action: repair.Cannot, // repair does not guess it
	},
	{
		name: "data-block-size-zero-given", fixture: "s2-snapshot-tree",
		damage: func(t *testing.T, img thintest.Image) {
			img.EditSuperblock(t, func(sb *thin.Superblock) { sb.DataBlockSize = 0 })
		},
		opts:   repair.Options{DataBlockSize: ptr(uint32(128))},
		action: repair.SpaceMaps, lossless: true,
	},
	{
		name: "nr-data-blocks-zero", fixture: "s2-snapshot-tree",
		damage: func(t *testing.T, img thintest.Image) {
			img.EditSuperblock(t, func(sb *thin.Superblock) { sb.DataSM.NrBlocks = 0 })
		},
		action: repair.Cannot, // not every mapping dropped as past the end
	},
	{
		name: "nr-data-blocks-zero-given", fixture: "s2-snapshot-tree",
		damage: func(t *testing.T, img thintest.Image) {
			img.EditSuperblock(t, func(sb *thin.Superblock) { sb.DataSM.NrBlocks = 0 })
		},
		opts:   repair.Options{NrDataBlocks: ptr(uint64(65536))},
		action: repair.Rebuild, lossless: true,
	},
	{
		name: "superblock-zeroed", fixture: "s2-snapshot-tree",
		damage: func(t *testing.T, img thintest.Image) { img.Zero(0) },
		action: repair.Cannot, // repair does not guess the pool's values
	},
	{
		name: "superblock-zeroed-values-given", fixture: "s2-snapshot-tree",
		damage: func(t *testing.T, img thintest.Image) { img.Zero(0) },
		opts:   repair.Options{TransactionID: ptr(uint64(42)), DataBlockSize: ptr(uint32(128)), NrDataBlocks: ptr(uint64(65536))},
		// The pool time comes from the newest time in the trees: 4.
		action: repair.Rebuild, lossless: true, oracle: true,
	},
}

// TestRepair damages copies of the kernel fixtures, repairs them to a new
// file and checks the result: clean, nothing lost that could be kept,
// metadata use not grown.
func TestRepair(t *testing.T) {
	for _, tc := range damageCases {
		t.Run(tc.name, func(t *testing.T) {
			orig := thintest.Image(thintest.Load(t, tc.fixture))
			img := thintest.Image(bytes.Clone(orig))
			tc.damage(t, img)
			out := filepath.Join(t.TempDir(), "out")
			f, err := os.Create(out)
			assert.NilError(t, err)
			defer f.Close()
			assert.NilError(t, f.Truncate(int64(len(img))))

			res, err := repair.Repair(t.Context(), img.Reader(), f, int64(len(img)), tc.opts)
			assert.NilError(t, err)
			assert.Equal(t, res.Action, tc.action, "reason: %s", res.Reason)
			switch tc.action {
			case repair.Nothing, repair.Cannot:
				assert.Check(t, res.After == nil)
				zero := make([]byte, block.Size)
				got := make([]byte, block.Size)
				_, err := f.ReadAt(got, 0)
				assert.NilError(t, err)
				assert.Check(t, bytes.Equal(got, zero), "output written although there was nothing to do")
				return
			}
			assert.Assert(t, res.After != nil)
			assert.Check(t, is.Equal(res.After.Outcome, check.Clean), res.After.Summary)
			r := block.NewReader(f, int64(len(img)))
			rep, err := check.Run(t.Context(), r, check.Options{})
			assert.NilError(t, err)
			assert.Check(t, is.Equal(rep.Outcome(), check.Clean), rep.Summary())
			assert.Check(t, res.MetadataAfter <= orig.Superblock().MetadataSM.NrAllocated+tc.growth,
				"metadata blocks %d after, %d before", res.MetadataAfter, orig.Superblock().MetadataSM.NrAllocated)

			got := dump(t, r)
			if tc.lossless {
				assert.Check(t, !res.Lost())
				assert.Equal(t, got, string(thintest.Dump(t, tc.fixture, "thin_dump-0.9.0.xml")))
			}
			if tc.kept > 0 {
				assert.Check(t, is.Equal(countMappings(got), tc.kept))
			}
			if tc.oracle {
				compareWithReference(t, img, out, got, refArgs(tc.opts)...)
			}
		})
	}
}

// TestRepairSpaceMapsKeepsBlocks: the space-map repair keeps every tree
// block where it was, so snapshots still share subtrees, and keeps the
// superblock's values and the held metadata snapshot.
func TestRepairSpaceMapsKeepsBlocks(t *testing.T) {
	for _, name := range []string{"s2-snapshot-tree", "s3-bigblock-metasnap"} {
		t.Run(name, func(t *testing.T) {
			orig := thintest.Image(thintest.Load(t, name))
			img := thintest.Image(bytes.Clone(orig))
			img.SetMetaCount(t, uint64(img.FreeMeta(t)), 1)
			out := make(thintest.Image, len(img))
			res, err := repair.Repair(t.Context(), img.Reader(), writerAt(out), int64(len(out)), repair.Options{})
			assert.NilError(t, err)
			assert.Equal(t, res.Action, repair.SpaceMaps)
			a, b := orig.Superblock(), out.Superblock()
			assert.Check(t, is.Equal(b.TransactionID, a.TransactionID))
			assert.Check(t, is.Equal(b.Time, a.Time))
			assert.Check(t, is.Equal(b.Flags, a.Flags))
			assert.Check(t, is.Equal(b.DataBlockSize, a.DataBlockSize))
			assert.Check(t, is.Equal(b.MetadataSnap, a.MetadataSnap))
			assert.Check(t, is.Equal(b.MappingRoot, a.MappingRoot))
			assert.Check(t, is.Equal(b.DetailsRoot, a.DetailsRoot))
			assert.Check(t, is.Equal(b.DataSM.NrBlocks, a.DataSM.NrBlocks))
			assert.Check(t, is.Equal(b.MetadataSM.NrBlocks, a.MetadataSM.NrBlocks))
			// Every tree node is byte for byte where it was.
			rep, err := check.Run(t.Context(), orig.Reader(), check.Options{KeepCounts: true})
			assert.NilError(t, err)
			rc := rep.Recount()
			for n, c := range rc.Meta {
				if c > 0 && !rc.SpaceMap[n] && n != 0 {
					assert.Check(t, bytes.Equal(out.Block(block.Nr(n)), orig.Block(block.Nr(n))), "block %d moved or changed", n)
				}
			}
		})
	}
}

// TestRepairDryRun: a dry run reports what it would do, checks the result
// in memory and writes nothing.
func TestRepairDryRun(t *testing.T) {
	img := thintest.Image(thintest.Load(t, "s2-snapshot-tree"))
	img.SetDataCount(t, 0, 1)
	before := bytes.Clone(img)
	res, err := repair.Repair(t.Context(), img.Reader(), nil, int64(len(img)), repair.Options{})
	assert.NilError(t, err)
	assert.Check(t, res.DryRun)
	assert.Check(t, is.Equal(res.Action, repair.SpaceMaps))
	assert.Assert(t, res.After != nil)
	assert.Check(t, is.Equal(res.After.Outcome, check.Clean))
	assert.Check(t, bytes.Equal(img, before))
}

// TestRepairPoolValuesFromOptions: options never override a readable
// superblock; the result says they were ignored and where each value
// came from.
func TestRepairPoolValuesFromOptions(t *testing.T) {
	img := thintest.Image(thintest.Load(t, "s2-snapshot-tree"))
	img.SetDataCount(t, 0, 1)
	tid, dbs, nr := uint64(7), uint32(256), uint64(100)
	res, err := repair.Repair(t.Context(), img.Reader(), nil, int64(len(img)),
		repair.Options{TransactionID: &tid, DataBlockSize: &dbs, NrDataBlocks: &nr})
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(res.Pool.TransactionID, repair.Value{Value: 42, Source: "superblock"}))
	assert.Check(t, is.DeepEqual(res.Pool.DataBlockSize, repair.Value{Value: 128, Source: "superblock"}))
	assert.Check(t, is.Len(res.Notes, 3))

	img.Zero(0)
	res, err = repair.Repair(t.Context(), img.Reader(), nil, int64(len(img)), repair.Options{TransactionID: &tid})
	assert.NilError(t, err)
	assert.Check(t, is.Equal(res.Action, repair.Cannot))
	assert.Check(t, is.DeepEqual(res.Pool.TransactionID, repair.Value{Value: 7, Source: "--transaction-id"}))
	assert.Check(t, is.Contains(res.Pool.DataBlockSize.Source, "give --data-block-size"))
}

// TestRepairReport: what a person reads, for one case of each action.
func TestRepairReport(t *testing.T) {
	for _, tc := range damageCases {
		switch tc.name {
		case "data-count-too-low", "shared-leaf-damaged", "mapping-past-end", "details-for-wrong-device", "top-level-zeroed", "device-root-unreadable":
		default:
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			img := thintest.Image(thintest.Load(t, tc.fixture))
			tc.damage(t, img)
			res, err := repair.Repair(t.Context(), img.Reader(), nil, int64(len(img)), repair.Options{})
			assert.NilError(t, err)
			var b bytes.Buffer
			assert.NilError(t, res.WriteText(&b))
			golden.Assert(t, b.String(), "report-"+tc.name+".golden")
		})
	}
}

// refArgs gives the reference tools the pool values repair was given.
func refArgs(o repair.Options) []string {
	var a []string
	if o.TransactionID != nil {
		a = append(a, "--transaction-id", strconv.FormatUint(*o.TransactionID, 10))
	}
	if o.DataBlockSize != nil {
		a = append(a, "--data-block-size", strconv.FormatUint(uint64(*o.DataBlockSize), 10))
	}
	if o.NrDataBlocks != nil {
		a = append(a, "--nr-data-blocks", strconv.FormatUint(*o.NrDataBlocks, 10))
	}
	return a
}

// writerAt makes an image an Output.
type writerAt thintest.Image

func (w writerAt) WriteAt(p []byte, off int64) (int, error) { return copy(w[off:], p), nil }
func (w writerAt) ReadAt(p []byte, off int64) (int, error)  { return copy(p, w[off:]), nil }

func dump(t *testing.T, r *block.Reader) string {
	t.Helper()
	var b bytes.Buffer
	xw := xml.NewWriter(&b, xml.XML)
	assert.NilError(t, xml.Dump(r, xw, xml.Options{}))
	assert.NilError(t, xw.Flush())
	return b.String()
}

var (
	singleRE = regexp.MustCompile(`<single_mapping `)
	rangeRE  = regexp.MustCompile(`<range_mapping [^>]*length="(\d+)"`)
)

// countMappings counts the mappings of a thin_dump XML document.
func countMappings(doc string) uint64 {
	var n uint64
	for _, c := range deviceMappings(doc) {
		n += c
	}
	return n
}

var deviceRE = regexp.MustCompile(`<device dev_id="(\d+)"`)

// deviceMappings counts the mappings of each device of a thin_dump XML
// document.
func deviceMappings(doc string) map[string]uint64 {
	out := map[string]uint64{}
	for _, part := range strings.Split(doc, "</device>") {
		m := deviceRE.FindStringSubmatch(part)
		if m == nil {
			continue
		}
		n := uint64(len(singleRE.FindAllStringIndex(part, -1)))
		for _, r := range rangeRE.FindAllStringSubmatch(part, -1) {
			v, _ := strconv.ParseUint(r[1], 10, 64)
			n += v
		}
		out[m[1]] += n
	}
	return out
}

// tpt11 is the directory of the 1.1.0 reference tools.
func tpt11() string {
	if d := os.Getenv("TPT11_BIN"); d != "" {
		return d
	}
	return filepath.Join(thintest.Root(), ".cache", "tpt11", "usr", "sbin")
}

func onPath(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}

// compareWithReference checks our output with thin_check 1.1.0 and our
// mapping count against what thin_repair 0.9.0 and 1.1.0 keep of the same
// damaged input.
//
// Devices the repair does not list are left out of the comparison: both
// tools resurrect devices deleted before the damage from stale top-level
// leaves, which the committed details tree no longer lists.
func compareWithReference(t *testing.T, damaged thintest.Image, ours, ourDump string, args ...string) {
	t.Helper()
	check11 := filepath.Join(tpt11(), "thin_check")
	_, err := os.Stat(check11)
	skip.If(t, err != nil || !onPath("thin_repair") || !onPath("thin_dump"), "reference thin_check 1.1.0 or thin_repair 0.9.0 not installed")
	out, err := exec.Command(check11, ours).CombinedOutput()
	if err != nil {
		t.Errorf("thin_check 1.1.0 rejects the repaired metadata: %v\n%s", err, out)
	}
	in := thintest.WriteTemp(t, damaged)
	for _, tool := range []struct{ repair, dump string }{
		{"thin_repair", "thin_dump"},
		{filepath.Join(tpt11(), "thin_repair"), filepath.Join(tpt11(), "thin_dump")},
	} {
		ref := filepath.Join(t.TempDir(), "ref")
		assert.NilError(t, os.WriteFile(ref, make([]byte, len(damaged)), 0o600))
		if out, err := exec.Command(tool.repair, append([]string{"-i", in, "-o", ref}, args...)...).CombinedOutput(); err != nil {
			t.Logf("%s failed, nothing to compare: %v\n%s", tool.repair, err, out)
			continue
		}
		doc, err := exec.Command(tool.dump, ref).Output()
		assert.NilError(t, err)
		kept := countMappings(ourDump)
		var theirs uint64
		ourDevs := deviceMappings(ourDump)
		for dev, n := range deviceMappings(string(doc)) {
			if _, ok := ourDevs[dev]; ok {
				theirs += n
			} else {
				t.Logf("%s also lists device %s (%d mappings), which the details tree does not", tool.repair, dev, n)
			}
		}
		t.Logf("%s kept %d mappings, repair kept %d", tool.repair, theirs, kept)
		assert.Check(t, kept >= theirs, "%s kept %d mappings, repair only %d", tool.repair, theirs, kept)
	}
}

// TestRepairRandomDamage damages random blocks of the fixtures, some by
// zeroing, some with garbage under a valid checksum (which only the
// structure checks catch), and asks every repair for a result that checks
// clean, or an honest refusal; never an error or a panic.
func TestRepairRandomDamage(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, name := range thintest.Fixtures {
		orig := thintest.Image(thintest.Load(t, name))
		used := usedBlocks(t, orig)
		for i := range 40 {
			img := thintest.Image(bytes.Clone(orig))
			n := used[rng.IntN(len(used))]
			what := "zeroed"
			switch i % 3 {
			case 0:
				img.Zero(n)
			default:
				what = "garbled"
				b := img.Block(n)
				for range 1 + rng.IntN(8) {
					b[8+rng.IntN(block.Size-8)] = byte(rng.Uint32())
				}
				block.Seal(b, block.KindOf(orig.Block(n)))
			}
			t.Run(fmt.Sprintf("%s/%s-%d", name, what, n), func(t *testing.T) {
				res, err := repair.Repair(t.Context(), img.Reader(), nil, int64(len(img)), repair.Options{})
				assert.NilError(t, err)
				t.Logf("%v: %s", res.Action, res.Reason)
				switch res.Action {
				case repair.SpaceMaps, repair.Rebuild:
					assert.Assert(t, res.After != nil)
					assert.Check(t, is.Equal(res.After.Outcome, check.Clean), "%s: %s", res.Reason, res.After.Summary)
				case repair.Cannot:
					assert.Check(t, res.Reason != "")
				}
			})
		}
	}
}

// usedBlocks lists the blocks a fixture's space map says are in use.
func usedBlocks(t *testing.T, img thintest.Image) []block.Nr {
	var used []block.Nr
	for m := range img.Superblock().MetadataSM.NrBlocks {
		if img.MetaCount(t, m) != 0 {
			used = append(used, block.Nr(m))
		}
	}
	return used
}

// TestRepairJSONRebuiltDetails: scripts see the details repair made up,
// named as thin_dump names them.
func TestRepairJSONRebuiltDetails(t *testing.T) {
	img := thintest.Image(thintest.Load(t, "s2-snapshot-tree"))
	leaf, i := img.Lookup(t, img.Superblock().DetailsRoot, thin.DetailsSize, 5)
	img.SetKey(t, leaf, i, 9)
	res, err := repair.Repair(t.Context(), img.Reader(), nil, int64(len(img)), repair.Options{})
	assert.NilError(t, err)
	var b bytes.Buffer
	assert.NilError(t, res.WriteJSON(&b))
	var v struct {
		Action  string `json:"action"`
		Devices []struct {
			ID      uint32          `json:"dev_id"`
			Rebuilt json.RawMessage `json:"rebuilt_details"`
		} `json:"devices"`
	}
	assert.NilError(t, json.Unmarshal(b.Bytes(), &v))
	assert.Check(t, is.Equal(v.Action, "rebuild"))
	got := map[uint32]string{}
	for _, d := range v.Devices {
		var c bytes.Buffer
		if len(d.Rebuilt) > 0 {
			assert.NilError(t, json.Compact(&c, d.Rebuilt))
		}
		got[d.ID] = c.String()
	}
	assert.Check(t, is.Equal(got[5], `{"mapped_blocks":3,"transaction":42,"creation_time":3,"snap_time":4}`))
	assert.Check(t, is.Equal(got[1], ""))
}
