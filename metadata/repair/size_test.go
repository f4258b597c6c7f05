package repair_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/repair"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
	"github.com/docker-devmapper/docker-devmapper/metadata/xml"
)

// highestData is an xml.Visitor that finds the highest data block a dump
// maps.
type highestData struct {
	hi  uint64
	any bool
}

func (h *highestData) Superblock(xml.Superblock) error            { return nil }
func (h *highestData) BeginDevice(thin.DevID, thin.Details) error { return nil }
func (h *highestData) EndDevice() error                           { return nil }
func (h *highestData) BeginDef(string) error                      { return nil }
func (h *highestData) EndDef() error                              { return nil }
func (h *highestData) Ref(string) error                           { return nil }
func (h *highestData) End() error                                 { return nil }
func (h *highestData) Run(_, data, length uint64, _ uint32) error {
	h.hi, h.any = max(h.hi, data+length-1), true
	return nil
}

var nrDataRE = regexp.MustCompile(`nr_data_blocks="\d+"`)

// TestRepairNrDataBlocksTooSmall: a data device size that does not come
// from the superblock and that the mappings pass is raised to the
// smallest that holds them, loudly; no mapping is dropped. A size that
// holds them stands, and one the metadata cannot count is refused.
func TestRepairNrDataBlocksTooSmall(t *testing.T) {
	const fixture = "s2-snapshot-tree"
	ref := string(thintest.Dump(t, fixture, "thin_dump-0.9.0.xml"))
	var h highestData
	assert.NilError(t, xml.Read(strings.NewReader(ref), &h))
	assert.Assert(t, h.any)
	need := h.hi + 1

	wipe := func(img thintest.Image) { img.Zero(0) }
	values := repair.Options{TransactionID: ptr(uint64(42)), DataBlockSize: ptr(uint32(128))}
	with := func(o repair.Options, nr uint64) repair.Options {
		o.NrDataBlocks = &nr
		return o
	}
	for _, tc := range []struct {
		name   string
		damage func(img thintest.Image)
		opts   func(t *testing.T) repair.Options
		action repair.Action
		nr     uint64 // the size written; 0: need
		source string // part of its source
		note   string // part of a note; "" means none mentions nr_data_blocks
	}{
		{
			name: "superblock-lost-option-too-small", damage: wipe,
			opts:   func(*testing.T) repair.Options { return with(values, 100) },
			action: repair.Rebuild, source: "the highest mapped data block + 1 (--nr-data-blocks gave 100, too few)",
			note: "nr_data_blocks raised from 100 (--nr-data-blocks) to ",
		},
		{
			name: "superblock-lost-option-one-short", damage: wipe,
			opts:   func(*testing.T) repair.Options { return with(values, need-1) },
			action: repair.Rebuild, source: "too few", note: "raised from " + strconv.FormatUint(need-1, 10),
		},
		{
			name: "superblock-lost-option-exact", damage: wipe,
			opts:   func(*testing.T) repair.Options { return with(values, need) },
			action: repair.Rebuild, source: "--nr-data-blocks",
		},
		{
			name: "superblock-lost-option-larger", damage: wipe,
			opts:   func(*testing.T) repair.Options { return with(values, 70000) },
			action: repair.Rebuild, nr: 70000, source: "--nr-data-blocks",
		},
		{
			name: "superblock-lost-dump-too-small", damage: wipe,
			opts: func(t *testing.T) repair.Options {
				doc := nrDataRE.ReplaceAllString(ref, `nr_data_blocks="64"`)
				return repair.Options{ValuesFrom: writeFile(t, "old.xml", []byte(doc))}
			},
			action: repair.Rebuild, source: "(--values-from ", note: "nr_data_blocks raised from 64 (--values-from ",
		},
		{
			name: "superblock-size-zero-option-too-small",
			damage: func(img thintest.Image) {
				img.EditSuperblock(t, func(sb *thin.Superblock) { sb.DataSM.NrBlocks = 0 })
			},
			opts:   func(*testing.T) repair.Options { return repair.Options{NrDataBlocks: ptr(uint64(10))} },
			action: repair.Rebuild, source: "too few", note: "nr_data_blocks raised from 10 (--nr-data-blocks)",
		},
		{
			name: "superblock-lost-option-past-capacity", damage: wipe,
			opts:   func(*testing.T) repair.Options { return with(values, 1<<40) },
			action: repair.Cannot, note: "are more than 2048 metadata blocks can count",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := thintest.Image(thintest.Load(t, fixture))
			tc.damage(img)
			out := make(thintest.Image, len(img))
			res, err := repair.Repair(t.Context(), img.Reader(), writerAt(out), int64(len(out)), tc.opts(t))
			assert.NilError(t, err)
			assert.Assert(t, is.Equal(res.Action, tc.action), res.Reason)
			notes := strings.Join(res.Notes, "\n")
			if tc.action == repair.Cannot {
				assert.Check(t, is.Contains(res.Reason, tc.note))
				return
			}
			nr := tc.nr
			if nr == 0 {
				nr = need
			}
			assert.Check(t, is.Equal(res.Pool.NrDataBlocks.Value, nr))
			assert.Check(t, is.Contains(res.Pool.NrDataBlocks.Source, tc.source))
			if tc.note != "" {
				assert.Check(t, is.Contains(notes, tc.note))
			} else {
				assert.Check(t, !strings.Contains(notes, "nr_data_blocks"), notes)
			}
			assert.Assert(t, res.After != nil)
			assert.Check(t, is.Equal(res.After.Outcome, check.Clean), res.After.Summary)
			assert.Check(t, is.Equal(out.Superblock().DataSM.NrBlocks, nr))
			// Every mapping is kept: the dump is the original's but for
			// the size.
			assert.Check(t, !res.Lost())
			assert.Check(t, is.Equal(res.ConflictsTotal, uint64(0)))
			want := nrDataRE.ReplaceAllString(ref, `nr_data_blocks="`+strconv.FormatUint(nr, 10)+`"`)
			assert.Check(t, is.Equal(dump(t, out.Reader()), want))

			check11 := filepath.Join(tpt11(), "thin_check")
			if _, err := os.Stat(check11); err != nil {
				t.Log("thin_check 1.1.0 not installed: the result is not shown to it")
				return
			}
			msg, err := exec.Command(check11, thintest.WriteTemp(t, bytes.Clone(out))).CombinedOutput()
			assert.Check(t, err == nil, "thin_check 1.1.0 rejects the repaired metadata: %v\n%s", err, msg)
		})
	}
}
