package repair

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// MaxCandidates bounds the candidate trees listed per device, and
// MaxUnclaimed the unclaimed trees a result lists.
const (
	MaxCandidates = 8
	MaxUnclaimed  = 32
)

// UnclaimedTree is a consistent device tree that a scan found and that
// no device took: no surviving top-level leaf names it and no device's
// details count as many mappings.
type UnclaimedTree struct {
	Root     uint64 `json:"root"`
	Mappings uint64 `json:"mappings"`
	// NewestTime is the newest time among its mappings.
	NewestTime uint32 `json:"newest_time"`
}

// claimTrees runs after a scan matched device trees to the devices of the
// details tree because no top level survived (p.devRoots). It says what
// the matching could not settle, and never guesses:
//
//   - A device left without a tree keeps its details with no mappings.
//     When trees that no leaf names and no device took hold exactly as
//     many mappings as its details count, they are listed as its
//     candidates: several devices count as many (a snapshot and its
//     origin, say), so which is whose is unknown.
//   - A tree with mappings that no leaf names, that no device took and
//     whose mappings no device's details count is listed as unclaimed:
//     a stale copy of a device's tree, a deleted device's tree, or a
//     device whose details were lost too. It has no thin id to be given
//     back under.
//
// Trees a leaf names (older copies of a device, or deleted devices) and
// trees a device with a tree also counts as many mappings as (its older
// copies) are left out silently, as before.
func (p *Plan) claimTrees() {
	if p.devRoots == nil || p.sres == nil {
		return
	}
	res := p.res
	taken := map[block.Nr]bool{}
	treeless := map[thin.DevID]int{} // index in res.Devices
	for i, d := range p.devs {
		switch {
		case d.hasRoot:
			taken[d.root] = true
		case d.hasDetails && p.mapped[d.id] > 0:
			treeless[d.id] = i
		}
	}
	var total int
	for _, t := range p.sres.Devices {
		if !t.Consistent() || t.Mappings == 0 || taken[t.Root] || len(t.Names) > 0 {
			continue
		}
		var counters []thin.DevID
		for _, id := range slices.Sorted(maps.Keys(p.mapped)) {
			if p.mapped[id] == t.Mappings {
				counters = append(counters, id)
			}
		}
		for _, id := range counters {
			i, ok := treeless[id]
			if !ok {
				continue
			}
			d := &res.Devices[i]
			if len(d.Candidates) < MaxCandidates {
				d.Candidates = append(d.Candidates, uint64(t.Root))
			}
			d.SameCount = others(counters, id)
		}
		if len(counters) > 0 {
			continue
		}
		total++
		if len(res.Unclaimed) < MaxUnclaimed {
			res.Unclaimed = append(res.Unclaimed, UnclaimedTree{Root: uint64(t.Root), Mappings: t.Mappings, NewestTime: t.Age})
		}
	}
	if total > 0 {
		res.UnclaimedTotal = uint64(total)
		res.note("%d device trees the scan found are left out: no surviving top-level leaf names them and no device's details count as many mappings (stale copies of devices' trees, trees of deleted devices, or devices whose details were lost too); without a thin id they cannot be given back",
			total)
	}
}

// others lists the ids of all but id.
func others(ids []thin.DevID, id thin.DevID) []thin.DevID {
	var o []thin.DevID
	for _, x := range ids {
		if x != id {
			o = append(o, x)
		}
	}
	return o
}

// candidateLine says, for the text report, which trees may be a treeless
// device's.
func candidateLine(d Device) string {
	s := "  unnamed trees at blocks " + list(d.Candidates) + " hold as many mappings as its details count"
	if len(d.Candidates) == 1 {
		s = fmt.Sprintf("  an unnamed tree at block %d holds as many mappings as its details count", d.Candidates[0])
	}
	if len(d.SameCount) > 0 {
		s += ", as do the details of devices " + list(d.SameCount)
	}
	return s + ": repair does not guess which tree is whose"
}

// list prints numbers as "1, 2, 3".
func list[T any](xs []T) string {
	var b strings.Builder
	for i, x := range xs {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprint(&b, x)
	}
	return b.String()
}
