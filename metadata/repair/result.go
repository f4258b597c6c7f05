package repair

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// Action is the way a repair takes, chosen from what the input needs.
type Action uint8

const (
	// Nothing: the input checks clean (warnings aside).
	Nothing Action = iota
	// SpaceMaps: the trees are intact; both space maps are rebuilt and
	// every tree block stays where it is.
	SpaceMaps
	// Rebuild: the trees are rebuilt from every readable mapping.
	Rebuild
	// Cannot: the damage needs what this version cannot do yet (find lost
	// roots by scanning), or a pool value nobody gave.
	Cannot
)

var actionNames = [...]string{"nothing", "space-maps", "rebuild", "cannot-repair"}

func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return "unknown"
}

// MarshalText makes actions read as words in JSON.
func (a Action) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// Value is a pool value and where it came from: "superblock", the
// option that gave it (for example "--transaction-id"), "--values-from"
// and the file's path, or a sentence saying what else it was taken from
// (the trees, for the time; a device's details, for a transaction id the
// values file gave too low).
type Value struct {
	Value  uint64 `json:"value"`
	Source string `json:"source"`
}

// Pool holds the pool-wide values the repaired metadata keeps.
type Pool struct {
	TransactionID Value  `json:"transaction_id"`
	Time          Value  `json:"time"`
	DataBlockSize Value  `json:"data_block_size"`
	NrDataBlocks  Value  `json:"nr_data_blocks"`
	Flags         uint32 `json:"flags"`
}

// Device says what a repair keeps and loses of one thin device.
type Device struct {
	ID   thin.DevID `json:"dev_id"`
	Kept uint64     `json:"mappings_kept"`
	// Lost is how many mappings the old details promised beyond those
	// kept; LostUnknown is set when damage lost some but no readable
	// details say how many.
	Lost        uint64 `json:"mappings_lost"`
	LostUnknown bool   `json:"mappings_lost_unknown,omitempty"`
	// LostRanges lists the virtual blocks left out with damaged nodes.
	LostRanges []string `json:"lost_ranges,omitempty"`
	// Refilled counts mappings of lost ranges taken from an older tree of
	// the device that a scan found (they are in Kept; their data may be
	// older than the lost mappings').
	Refilled uint64 `json:"mappings_refilled,omitempty"`
	// Dropped counts mappings to data blocks past nr_data_blocks.
	Dropped uint64 `json:"mappings_dropped_past_end,omitempty"`
	// RecoveredByScan is set when the device's tree was found by scanning
	// for lost roots rather than through the superblock.
	RecoveredByScan bool `json:"recovered_by_scan"`
	DetailsRebuilt  bool `json:"details_rebuilt,omitempty"`
	// MappedBlocksWas is the old mapped_blocks when it was wrong.
	MappedBlocksWas *uint64 `json:"mapped_blocks_was,omitempty"`
	NoMappingTree   bool    `json:"no_mapping_tree,omitempty"`
	// Candidates lists, for a device left without a tree after lost
	// roots, the roots of unnamed trees no device took that hold as many
	// mappings as its details count (at most MaxCandidates); SameCount
	// the other devices whose details count as many, which makes the
	// match a guess repair does not make.
	Candidates []uint64     `json:"candidate_trees,omitempty"`
	SameCount  []thin.DevID `json:"same_count_devices,omitempty"`
	Details    thin.Details `json:"-"`
	// Rebuilt holds the details repair made up when DetailsRebuilt.
	Rebuilt *RebuiltDetails `json:"rebuilt_details,omitempty"`
}

// RebuiltDetails are a device's details as repair rebuilt them, named as
// thin_dump names them.
type RebuiltDetails struct {
	MappedBlocks  uint64 `json:"mapped_blocks"`
	TransactionID uint64 `json:"transaction"`
	CreationTime  uint32 `json:"creation_time"`
	SnapTime      uint32 `json:"snap_time"`
}

// Conflict is one mapping the input contradicts itself about, and what
// repair did with it.
type Conflict struct {
	Dev     thin.DevID `json:"dev_id"`
	VBlock  uint64     `json:"vblock"`
	Data    uint64     `json:"data_block"`
	Message string     `json:"message"`
}

// MaxConflicts bounds the conflicts a result lists; ConflictsTotal counts
// them all.
const MaxConflicts = 1000

// SpaceMapFix summarises what the old space maps got wrong; a repair
// rebuilds them whole, so it fixes all of it.
type SpaceMapFix struct {
	Wrong  uint64   `json:"wrong"`
	Leaked uint64   `json:"leaked"`
	Damage []string `json:"damage,omitempty"` // unreadable or inconsistent space-map blocks
	// Mismatches lists the counts fixed, by block, up to check.MaxListed;
	// Expected is the count the repaired space map holds.
	Mismatches []check.Mismatch `json:"mismatches,omitempty"`
}

// TextListed bounds the fixed counts WriteText prints per space map.
const TextListed = 20

// Verdict is a check's closing word on some metadata.
type Verdict struct {
	Outcome check.Outcome `json:"outcome"`
	Summary string        `json:"summary"`
}

// Result is what a repair found, did and left. Its contents never depend
// on scheduling.
type Result struct {
	Input  string  `json:"input,omitempty"`
	Output string  `json:"output,omitempty"`
	Backup string  `json:"backup,omitempty"`
	DryRun bool    `json:"dry_run"`
	Action Action  `json:"action"`
	Reason string  `json:"reason"`
	Before Verdict `json:"before"`
	Pool   Pool    `json:"pool"`

	Devices        []Device    `json:"devices"`
	DataSM         SpaceMapFix `json:"data_space_map"`
	MetadataSM     SpaceMapFix `json:"metadata_space_map"`
	Conflicts      []Conflict  `json:"conflicts"`
	ConflictsTotal uint64      `json:"conflicts_total"`
	Notes          []string    `json:"notes"`
	// MayBeOlder: the trees came from a scan that could not tell the
	// newest state for sure, so the result may lack the last writes (the
	// notes say why). The summary says so.
	MayBeOlder bool `json:"may_be_older,omitempty"`
	// Unclaimed lists device trees a scan found that no device took and
	// no device's details account for (at most MaxUnclaimed; the total is
	// UnclaimedTotal). See Plan.claimTrees.
	Unclaimed      []UnclaimedTree `json:"unclaimed_trees,omitempty"`
	UnclaimedTotal uint64          `json:"unclaimed_trees_total,omitempty"`

	// MetadataBefore is nr_allocated of the input's metadata space map;
	// MetadataAfter the output's.
	MetadataBefore uint64 `json:"metadata_blocks_before"`
	MetadataAfter  uint64 `json:"metadata_blocks_after,omitempty"`

	// After is the check of the output, when one was written (or, with a
	// dry run, built in memory).
	After *Verdict `json:"after,omitempty"`
}

// Lost says whether any mapping or device detail was lost.
func (r *Result) Lost() bool {
	for _, d := range r.Devices {
		if d.Lost > 0 || d.LostUnknown || d.Dropped > 0 || len(d.LostRanges) > 0 && d.Refilled == 0 {
			return true
		}
	}
	return false
}

func (r *Result) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

func (r *Result) conflict(c Conflict) {
	r.ConflictsTotal++
	if len(r.Conflicts) < MaxConflicts {
		r.Conflicts = append(r.Conflicts, c)
	}
}

// Summary is the closing line for a person.
func (r *Result) Summary() string {
	var s string
	switch r.Action {
	case Nothing:
		return "nothing to repair: " + r.Before.Summary
	case Cannot:
		return "cannot repair yet: " + r.Reason
	case SpaceMaps:
		s = "space maps rebuilt, trees kept in place, nothing lost"
	default:
		s = "trees rebuilt"
		if r.Lost() {
			s += "; some mappings were lost (see above)"
		} else {
			s += ", no mapping lost"
		}
		var refilled uint64
		for _, d := range r.Devices {
			refilled += d.Refilled
		}
		if refilled > 0 {
			s += fmt.Sprintf("; %d mappings taken from older trees (see above)", refilled)
		}
	}
	if r.DryRun {
		s = "would be repaired: " + s
	}
	switch {
	case r.After == nil:
	case r.After.Outcome == check.Clean:
		s += "; the result checks clean"
	default:
		s += "; the result still has damage: " + r.After.Summary
	}
	if r.MayBeOlder {
		s += "; WARNING: the state recovered may be older than the last commit, so the newest writes may be missing (see the notes): check the newest data before relying on it"
	}
	return s
}

// WriteText prints the result for a person.
func (r *Result) WriteText(w io.Writer) error {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	if r.DryRun {
		p("dry run: nothing is written")
	}
	p("before: %s", r.Before.Summary)
	if r.Action != Nothing {
		p("pool: transaction id %d (%s), time %d (%s), data block size %d sectors (%s), %d data blocks (%s)",
			r.Pool.TransactionID.Value, r.Pool.TransactionID.Source, r.Pool.Time.Value, r.Pool.Time.Source,
			r.Pool.DataBlockSize.Value, r.Pool.DataBlockSize.Source, r.Pool.NrDataBlocks.Value, r.Pool.NrDataBlocks.Source)
		p("action: %s: %s", r.Action, r.Reason)
	}
	if r.Action == Rebuild {
		p("both space maps are rebuilt from the new trees")
	}
	for _, sm := range []struct {
		name string
		f    SpaceMapFix
	}{{"data", r.DataSM}, {"metadata", r.MetadataSM}} {
		if total := sm.f.Wrong + sm.f.Leaked; total > 0 && r.Action != Nothing {
			p("%s space map: %d wrong reference counts and %d leaked blocks fixed", sm.name, sm.f.Wrong, sm.f.Leaked)
			shown := sm.f.Mismatches[:min(len(sm.f.Mismatches), TextListed)]
			for _, m := range shown {
				p("  %v", m)
			}
			if rest := total - uint64(len(shown)); rest > 0 {
				p("  ... and %d more (--json lists up to %d)", rest, check.MaxListed)
			}
		}
		for _, d := range sm.f.Damage {
			p("%s space map: %s", sm.name, d)
		}
	}
	if r.Action == SpaceMaps || r.Action == Rebuild {
		for _, d := range r.Devices {
			line := fmt.Sprintf("device %d: %d mappings kept", d.ID, d.Kept)
			switch {
			case d.LostUnknown:
				line += ", an unknown number lost"
			case d.Lost > 0:
				line += fmt.Sprintf(", %d lost", d.Lost)
			default:
				line += ", none lost"
			}
			if d.RecoveredByScan {
				line += " (tree found by scan)"
			}
			p("%s", line)
			for _, lr := range d.LostRanges {
				p("  lost %s", lr)
			}
			if d.Dropped > 0 {
				p("  dropped %d mappings to data blocks past nr_data_blocks", d.Dropped)
			}
			if d.MappedBlocksWas != nil {
				p("  mapped_blocks was %d, now %d", *d.MappedBlocksWas, d.Kept)
			}
			if d.DetailsRebuilt {
				p("  details rebuilt from the mappings: transaction id %d (the pool's), creation time %d (oldest mapping), snapshot time %d (the pool time)",
					d.Details.TransactionID, d.Details.CreationTime, d.Details.SnapshottedTime)
			}
			if d.NoMappingTree {
				p("  no mapping tree: details kept, no mappings")
			}
			if len(d.Candidates) > 0 {
				p("%s", candidateLine(d))
			}
		}
	}
	for _, u := range r.Unclaimed[:min(len(r.Unclaimed), TextListed)] {
		p("left out: device tree at block %d, %d mappings, newest time %d: no device claims it", u.Root, u.Mappings, u.NewestTime)
	}
	if rest := r.UnclaimedTotal - uint64(min(len(r.Unclaimed), TextListed)); r.UnclaimedTotal > 0 && rest > 0 {
		p("... and %d more trees left out (--json lists up to %d)", rest, MaxUnclaimed)
	}
	for _, c := range r.Conflicts {
		p("conflict: device %d, virtual block %d -> data block %d: %s", c.Dev, c.VBlock, c.Data, c.Message)
	}
	if rest := r.ConflictsTotal - uint64(len(r.Conflicts)); rest > 0 {
		p("... and %d more conflicts", rest)
	}
	for _, n := range r.Notes {
		p("note: %s", n)
	}
	if r.After != nil {
		p("metadata blocks in use: %d before, %d after", r.MetadataBefore, r.MetadataAfter)
		p("check of the result: %s", r.After.Summary)
	}
	if r.Backup != "" {
		p("backup of the original: %s", r.Backup)
	}
	if r.Output != "" && !r.DryRun && (r.Action == SpaceMaps || r.Action == Rebuild) {
		p("repaired metadata written to %s", r.Output)
	}
	p("%s", r.Summary())
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON prints the result for scripts: one stable JSON object.
func (r *Result) WriteJSON(w io.Writer) error {
	type alias Result
	v := struct {
		*alias
		Summary string `json:"summary"`
	}{(*alias)(r), r.Summary()}
	if v.Devices == nil {
		v.Devices = []Device{}
	}
	if v.Conflicts == nil {
		v.Conflicts = []Conflict{}
	}
	if v.Notes == nil {
		v.Notes = []string{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
