package check

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Severity ranks a finding.
type Severity uint8

const (
	// Warning: worth knowing, harmless to the kernel; check stays clean.
	Warning Severity = iota
	// Leak: space is held that nothing uses. Repair loses nothing.
	Leak
	// Fatal: the metadata is wrong in a way the kernel may trip over.
	Fatal
)

func (s Severity) String() string {
	switch s {
	case Warning:
		return "warning"
	case Leak:
		return "leak"
	}
	return "error"
}

// MarshalText makes severities read as words in JSON.
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Area says which part of the metadata a finding is about.
type Area uint8

const (
	AreaSuperblock Area = iota
	AreaDevices         // the device-details tree
	AreaMappings        // the two-level mapping tree
	AreaDataSM          // the data space map
	AreaMetadataSM      // the metadata space map
	// AreaDockerRecords: docker's records of its thin devices disagree with
	// the pool. The checker never finds these itself; a caller that reads
	// docker's records adds them (Report.Add).
	AreaDockerRecords
)

var areaNames = [...]string{"superblock", "device details", "mapping tree", "data space map", "metadata space map", "docker records"}

func (a Area) String() string {
	if int(a) < len(areaNames) {
		return areaNames[a]
	}
	return "unknown"
}

// MarshalText makes areas read as words in JSON.
func (a Area) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// Finding is one problem, placed as precisely as the checker could.
type Finding struct {
	Severity Severity `json:"severity"`
	Area     Area     `json:"area"`
	Block    *uint64  `json:"block,omitempty"`  // metadata block
	Dev      *uint32  `json:"dev_id,omitempty"` // thin device id
	VBlock   *uint64  `json:"vblock,omitempty"` // virtual block of that device
	Message  string   `json:"message"`
	// Tree is set when a b-tree node is unreadable or breaks the tree's
	// rules: what lies below it may be lost.
	Tree bool `json:"tree_damage,omitempty"`
}

func (f Finding) String() string {
	var loc []string
	if f.Dev != nil {
		loc = append(loc, fmt.Sprintf("device %d", *f.Dev))
	}
	if f.VBlock != nil {
		loc = append(loc, fmt.Sprintf("virtual block %d", *f.VBlock))
	}
	if f.Block != nil {
		loc = append(loc, fmt.Sprintf("block %d", *f.Block))
	}
	s := f.Area.String()
	if len(loc) > 0 {
		s += " (" + strings.Join(loc, ", ") + ")"
	}
	return fmt.Sprintf("%s: %s: %s", f.Severity, s, f.Message)
}

// Mismatch is a block whose stored reference count differs from the count
// the trees imply.
type Mismatch struct {
	Block    uint64 `json:"block"`
	Was      uint32 `json:"was"`      // stored in the space map
	Expected uint32 `json:"expected"` // recomputed from the trees
}

// String reads like the line people search for: "10122: was 1, expected 2".
func (m Mismatch) String() string {
	return fmt.Sprintf("%d: was %d, expected %d", m.Block, m.Was, m.Expected)
}

// Leaked reports whether the block is held by nothing.
func (m Mismatch) Leaked() bool { return m.Expected == 0 }

// MaxListed bounds the mismatches a report keeps per space map; the
// totals count them all.
const MaxListed = 10000

// TextListed bounds the mismatches WriteText prints per space map.
const TextListed = 50

// Counts holds the reference-count verdict of one space map.
type Counts struct {
	NrBlocks    uint64     `json:"nr_blocks"`
	NrAllocated uint64     `json:"nr_allocated"` // recomputed
	Leaked      uint64     `json:"leaked"`       // stored > 0, expected 0
	Wrong       uint64     `json:"wrong"`        // any other difference
	Mismatches  []Mismatch `json:"mismatches"`   // the first MaxListed, by block
	Checked     bool       `json:"checked"`
}

func (c *Counts) add(m Mismatch) {
	if m.Leaked() && m.Was > 0 {
		c.Leaked++
	} else {
		c.Wrong++
	}
	if len(c.Mismatches) < MaxListed {
		c.Mismatches = append(c.Mismatches, m)
	}
}

// Outcome classifies a whole report, worst first.
type Outcome uint8

const (
	Clean Outcome = iota
	LeaksOnly
	RecordsDisagree // the metadata is sound; docker's records are not
	CountsWrong
	DetailsWrong
	TreesDamaged
	SuperblockDamaged
)

var outcomeNames = [...]string{"clean", "leaks", "records", "counts", "details", "trees", "superblock"}

func (o Outcome) String() string { return outcomeNames[o] }

// MarshalText makes outcomes read as words in JSON.
func (o Outcome) MarshalText() ([]byte, error) { return []byte(o.String()), nil }

// Report is the result of a check. Its contents never depend on
// scheduling: findings and mismatches are sorted.
type Report struct {
	Input         string    `json:"input,omitempty"`
	MetadataSnap  bool      `json:"metadata_snap"`
	SkipMappings  bool      `json:"skip_mappings"`
	TransactionID uint64    `json:"transaction_id"`
	Time          uint32    `json:"time"`
	Flags         uint32    `json:"flags"`
	DataBlockSize uint32    `json:"data_block_size"`
	Devices       int       `json:"devices"`
	Mappings      uint64    `json:"mappings"`
	MetadataFree  uint64    `json:"metadata_free_blocks"`
	Findings      []Finding `json:"findings"`
	Data          Counts    `json:"data_space_map"`
	Metadata      Counts    `json:"metadata_space_map"`

	recount *Recount
}

// Recount is what a full check recomputed from the trees. Meta and Data
// hold, per block, the references the superblock, both trees of the live
// metadata and of the held snapshot, and the space maps' own structures
// make; SpaceMap marks the metadata blocks that only the old space maps
// use, which a rebuild of the space maps frees.
type Recount struct {
	Meta     []uint32
	Data     []uint32
	SpaceMap []bool
}

// Add records a finding from outside the metadata (AreaDockerRecords),
// keeping the findings in their order.
func (r *Report) Add(f Finding) {
	r.Findings = append(r.Findings, f)
	r.sort()
}

// Recount gives the recomputed counts, or nil unless Options.KeepCounts
// was set and the whole metadata (trees and space maps) was checked.
func (r *Report) Recount() *Recount { return r.recount }

// Outcome is the worst kind of damage the report holds.
func (r *Report) Outcome() Outcome {
	o := Clean
	for _, f := range r.Findings {
		var k Outcome
		switch {
		case f.Severity == Warning:
			continue
		case f.Severity == Leak:
			k = LeaksOnly
		case f.Area == AreaDockerRecords:
			k = RecordsDisagree
		case f.Area == AreaSuperblock:
			k = SuperblockDamaged
		case f.Tree || f.Area == AreaMappings:
			k = TreesDamaged
		case f.Area == AreaDevices:
			k = DetailsWrong
		default:
			k = CountsWrong
		}
		o = max(o, k)
	}
	for _, c := range []*Counts{&r.Data, &r.Metadata} {
		if c.Wrong > 0 {
			o = max(o, CountsWrong)
		} else if c.Leaked > 0 {
			o = max(o, LeaksOnly)
		}
	}
	return o
}

// Summary is the closing line: what kind of damage, and what fixes it.
func (r *Report) Summary() string {
	switch r.Outcome() {
	case Clean:
		if w := r.warnings(); w > 0 {
			return fmt.Sprintf("clean (%d warning%s, nothing to repair)", w, plural(w))
		}
		return "clean"
	case LeaksOnly:
		return "leaked blocks only (repair loses nothing): run 'docker devmapper repair'"
	case RecordsDisagree:
		return "the metadata is sound, but docker's records disagree with it: see the docker records lines above, and 'docker devmapper ls' for what owns each device"
	case CountsWrong:
		return "reference counts wrong, trees intact (repair rebuilds the space maps and loses nothing): run 'docker devmapper repair'"
	case DetailsWrong:
		return "device details wrong, trees intact (repair rebuilds the details from the mapping tree): run 'docker devmapper repair'"
	case TreesDamaged:
		return "mapping tree damaged (repair needed, some mappings may be lost): run 'docker devmapper repair'"
	default:
		return "superblock damaged (repair needs the pool's transaction id, data block size and size): run 'docker devmapper repair'"
	}
}

func (r *Report) warnings() int {
	n := 0
	for _, f := range r.Findings {
		if f.Severity == Warning {
			n++
		}
	}
	return n
}

// verb picks the singular or plural ending of a phrase.
func verb(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// sort orders findings by area, block, device and virtual block so that
// output never depends on which goroutine found what first.
func (r *Report) sort() {
	opt := func(p *uint64) uint64 {
		if p == nil {
			return 0
		}
		return *p + 1
	}
	dev := func(p *uint32) uint64 {
		if p == nil {
			return 0
		}
		return uint64(*p) + 1
	}
	slices.SortStableFunc(r.Findings, func(a, b Finding) int {
		return cmp.Or(
			cmp.Compare(a.Area, b.Area),
			cmp.Compare(dev(a.Dev), dev(b.Dev)),
			cmp.Compare(opt(a.VBlock), opt(b.VBlock)),
			cmp.Compare(opt(a.Block), opt(b.Block)),
			strings.Compare(a.Message, b.Message),
		)
	})
	r.Findings = slices.CompactFunc(r.Findings, func(a, b Finding) bool { return a.String() == b.String() })
	for _, c := range []*Counts{&r.Data, &r.Metadata} {
		slices.SortFunc(c.Mismatches, func(a, b Mismatch) int { return cmp.Compare(a.Block, b.Block) })
	}
}

// WriteText prints the report for a person: findings, mismatches grouped
// by space map, then the summary line.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "transaction id %d, time %d, %d devices, %d mappings\n", r.TransactionID, r.Time, r.Devices, r.Mappings)
	for _, f := range r.Findings {
		b.WriteString(f.String())
		b.WriteByte('\n')
	}
	for _, sm := range []struct {
		name string
		c    *Counts
	}{{"data", &r.Data}, {"metadata", &r.Metadata}} {
		c := sm.c
		total := c.Leaked + c.Wrong
		if total == 0 {
			continue
		}
		fmt.Fprintf(&b, "%s space map: %d reference count%s (%d leaked)\n", sm.name, total, verb(int(min(total, 2)), " differs", "s differ"), c.Leaked)
		shown := c.Mismatches[:min(len(c.Mismatches), TextListed)]
		for _, m := range shown {
			b.WriteString("  ")
			b.WriteString(m.String())
			b.WriteByte('\n')
		}
		if rest := total - uint64(len(shown)); rest > 0 {
			fmt.Fprintf(&b, "  ... and %d more (--json lists up to %d)\n", rest, MaxListed)
		}
	}
	b.WriteString(r.Summary())
	b.WriteByte('\n')
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON prints the report for scripts: one stable JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	type alias Report
	v := struct {
		*alias
		Outcome Outcome `json:"outcome"`
		Summary string  `json:"summary"`
	}{(*alias)(r), r.Outcome(), r.Summary()}
	if v.Findings == nil {
		v.Findings = []Finding{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
