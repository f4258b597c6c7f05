package scan

import (
	"cmp"
	"hash/maphash"
	"slices"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// cand is a top-level or details root candidate while pairing.
type cand struct {
	i     int32 // node index
	tree  Tree
	ids   []uint64 // thin ids, in tree order
	hash  uint64
	roots []uint64 // top levels: the device roots it names, sorted
	stale Stale
}

// candidates lists root candidates, pairs them, chooses the roots and
// fills res.
func (s *scanned) candidates(res *Result, limit, devLimit int) {
	var topIdx, detIdx, devIdx []int32
	for _, i := range s.where {
		if i < 0 {
			continue
		}
		nd := &s.nodes[i]
		switch nd.typ {
		case typTop:
			if !nd.ref || s.isLive(nd) {
				topIdx = append(topIdx, i)
			}
		case typDetails:
			if !nd.ref || s.isLive(nd) {
				detIdx = append(detIdx, i)
			}
		case typDevice:
			if !nd.ref || nd.named {
				devIdx = append(devIdx, i)
			}
		}
	}
	// Candidates are ranked on their nodes and only the best become Trees
	// with id lists: a pool full of stale nodes has as many candidates as
	// blocks. The superblock's roots are always kept.
	byRank := func(a, b int32) int { return s.compareNodes(&s.nodes[a], &s.nodes[b]) }
	slices.SortFunc(topIdx, byRank)
	slices.SortFunc(detIdx, byRank)
	slices.SortFunc(devIdx, byRank)
	topIdx = s.keep(res, topIdx, limit)
	detIdx = s.keep(res, detIdx, limit)

	seed := maphash.MakeSeed()
	tops := make([]*cand, len(topIdx))
	for j, i := range topIdx {
		nd := &s.nodes[i]
		c := &cand{i: i, tree: s.tree(nd, TopLevel)}
		c.ids = s.ids(nd, typTop, nil, 0)
		c.hash = maphash.Comparable(seed, idsKey(c.ids))
		c.roots = s.deviceRoots(nd, nil, 0)
		slices.Sort(c.roots)
		tops[j] = c
	}
	dets := make([]*cand, len(detIdx))
	for j, i := range detIdx {
		nd := &s.nodes[i]
		c := &cand{i: i, tree: s.tree(nd, Details)}
		c.ids = s.ids(nd, typDetails, nil, 0)
		c.hash = maphash.Comparable(seed, idsKey(c.ids))
		dets[j] = c
	}
	for _, c := range append(slices.Clip(tops), dets...) {
		c.tree.IDs = make([]thin.DevID, 0, len(c.ids))
		for _, id := range c.ids {
			if id <= thin.MaxDevID {
				c.tree.IDs = append(c.tree.IDs, thin.DevID(id))
			}
		}
	}
	liveTop, liveDet := s.liveRoots()
	for _, c := range tops {
		c.stale = s.staleness(c.tree, devIdx, c.roots)
	}
	for _, c := range dets {
		if s.live != nil && c.tree.Root != s.live.DetailsRoot {
			c.stale |= NotLive
		}
	}

	pairs := pair(tops, dets)
	for i := range pairs {
		p := &pairs[i]
		p.Stale = s.behind(p.top.stale|p.det.stale, p.Age)
		p.Live = p.Mapping.Live && p.Details.Live
	}
	slices.SortFunc(pairs, func(a, b pairing) int { return comparePairs(a.Pair, b.Pair) })
	if len(pairs) > 1 && !pairs[0].Live && tied(pairs[0].Pair, pairs[1].Pair) {
		pairs[0].Stale |= Tied
		pairs[1].Stale |= Tied
	}

	res.Roots = s.choose(tops, dets, pairs, liveTop, liveDet)
	if len(devIdx) > devLimit {
		devIdx, res.Truncated = devIdx[:devLimit], true
	}
	devs := make([]DeviceTree, len(devIdx))
	for j, i := range devIdx {
		devs[j].Tree = s.tree(&s.nodes[i], Device)
	}
	s.names(devs)
	s.reach(res.Roots, tops, dets, devs)

	slices.SortFunc(tops, func(a, b *cand) int { return compareTrees(a.tree, b.tree) })
	slices.SortFunc(dets, func(a, b *cand) int { return compareTrees(a.tree, b.tree) })
	for _, c := range tops {
		res.Mappings = append(res.Mappings, c.tree)
	}
	for _, c := range dets {
		res.Details = append(res.Details, c.tree)
	}
	for _, p := range pairs {
		res.Pairs = append(res.Pairs, p.Pair)
	}
	res.Devices = devs
	if len(res.Pairs) > limit {
		res.Pairs, res.Truncated = slices.Clip(res.Pairs[:limit]), true
	}
}

// keep cuts a ranked list of candidate nodes to limit, keeping the
// superblock's root if it was among them.
func (s *scanned) keep(res *Result, idx []int32, limit int) []int32 {
	if len(idx) <= limit {
		return idx
	}
	res.Truncated = true
	for _, i := range idx[limit:] {
		if s.isLive(&s.nodes[i]) {
			return append(slices.Clip(idx[:limit-1]), i)
		}
	}
	return slices.Clip(idx[:limit])
}

// idsKey makes a comparable key of a list of ids for hashing.
func idsKey(ids []uint64) string {
	b := make([]byte, 0, 8*len(ids))
	for _, id := range ids {
		for k := range 8 {
			b = append(b, byte(id>>(8*k)))
		}
	}
	return string(b)
}

func (s *scanned) isLive(nd *node) bool {
	if s.live == nil {
		return false
	}
	return nd.typ == typTop && nd.nr == s.live.MappingRoot || nd.typ == typDetails && nd.nr == s.live.DetailsRoot
}

// liveRoots gives the nodes the superblock names when they are valid
// roots of the right tree.
func (s *scanned) liveRoots() (top, det *node) {
	if s.live == nil {
		return nil, nil
	}
	if i := s.at(uint64(s.live.MappingRoot)); i >= 0 && s.nodes[i].typ == typTop {
		top = &s.nodes[i]
	}
	if i := s.at(uint64(s.live.DetailsRoot)); i >= 0 && s.nodes[i].typ == typDetails {
		det = &s.nodes[i]
	}
	return top, det
}

func (s *scanned) tree(nd *node, k TreeKind) Tree {
	t := Tree{Root: nd.nr, Kind: k, Height: int(nd.height), First: nd.lo, Last: nd.hi,
		Devices: int(nd.devices), Mappings: nd.mappings, Age: nd.age, Problems: nd.all}
	switch k {
	case Details:
		t.MaxTransaction = nd.maxTid
	default:
		t.NewestMappings = nd.atAge
		t.MaxDataBlock = thin.DataBlock(nd.maxData)
	}
	if s.live != nil {
		t.Live = k == TopLevel && nd.nr == s.live.MappingRoot || k == Details && nd.nr == s.live.DetailsRoot
	}
	return t
}

// ids appends the keys of the leaves of tree typ under nd, in tree order.
// Nodes of other trees, loops and levels past MaxHeight are skipped.
func (s *scanned) ids(nd *node, typ treeType, ids []uint64, depth int) []uint64 {
	if nd.kind != kindInternal {
		return append(ids, s.keys(nd)...)
	}
	if depth >= MaxHeight {
		return ids
	}
	for _, v := range s.vals(nd) {
		if c := s.at(v); c >= 0 && s.nodes[c].typ == typ && s.nodes[c].height < nd.height {
			ids = s.ids(&s.nodes[c], typ, ids, depth+1)
		}
	}
	return ids
}

// deviceRoots appends the device roots the top level under nd names.
func (s *scanned) deviceRoots(nd *node, roots []uint64, depth int) []uint64 {
	if nd.kind != kindInternal {
		return append(roots, s.vals(nd)...)
	}
	if depth >= MaxHeight {
		return roots
	}
	for _, v := range s.vals(nd) {
		if c := s.at(v); c >= 0 && s.nodes[c].typ == typTop && s.nodes[c].height < nd.height {
			roots = s.deviceRoots(&s.nodes[c], roots, depth+1)
		}
	}
	return roots
}

// names fills DeviceTree.Names from every top-level leaf.
func (s *scanned) names(devs []DeviceTree) {
	idx := make(map[block.Nr]int, len(devs))
	for i, d := range devs {
		idx[d.Root] = i
	}
	for _, i := range s.where {
		if i < 0 {
			continue
		}
		nd := &s.nodes[i]
		if nd.typ != typTop || nd.kind != kindMapping {
			continue
		}
		keys, vals := s.keys(nd), s.vals(nd)
		for j, v := range vals {
			k, ok := idx[block.Nr(v)]
			if !ok {
				continue
			}
			d := &devs[k]
			id := thin.DevID(keys[j])
			if p, found := slices.BinarySearch(d.Names, id); !found && len(d.Names) < maxNames {
				d.Names = slices.Insert(d.Names, p, id)
			}
		}
	}
}

// staleness says why a top level may be older than the newest state.
func (s *scanned) staleness(t Tree, devs []int32, roots []uint64) Stale {
	var st Stale
	if s.live != nil && t.Root != s.live.MappingRoot {
		st |= NotLive
	}
	for _, i := range devs { // consistent ones first, newest first
		d := &s.nodes[i]
		if d.all != 0 || d.age <= t.Age {
			break
		}
		if _, ok := slices.BinarySearch(roots, uint64(d.nr)); !ok {
			st |= NewerData
			break
		}
	}
	return st
}

// compareNodes ranks candidate nodes as compareTrees ranks Trees.
func (s *scanned) compareNodes(a, b *node) int {
	return cmp.Or(
		cmpBool(a.all == 0, b.all == 0),
		cmp.Compare(b.age, a.age),
		cmp.Compare(b.atAge, a.atAge),
		cmp.Compare(b.mappings, a.mappings),
		cmp.Compare(b.maxTid, a.maxTid),
		cmpBool(s.isLive(a), s.isLive(b)),
		cmp.Compare(a.nr, b.nr),
	)
}

// behind sets BehindSuperblock in st when age is below the superblock's
// time, and clears it otherwise: only a pair's combined age says it, since
// a top level's own age stays behind after a snapshot without writes.
func (s *scanned) behind(st Stale, age uint32) Stale {
	st &^= BehindSuperblock
	if s.live != nil && age < s.live.Time {
		st |= BehindSuperblock
	}
	return st
}

// tied says two pairs of different thin ids are equally new.
func tied(a, b Pair) bool {
	return a.Mapping.Consistent() == b.Mapping.Consistent() && a.Details.Consistent() == b.Details.Consistent() &&
		a.SameCounts == b.SameCounts && a.Age == b.Age && a.Mapping.Age == b.Mapping.Age &&
		a.Mapping.NewestMappings == b.Mapping.NewestMappings &&
		(a.Mapping.Devices != b.Mapping.Devices || a.Mapping.First != b.Mapping.First || a.Mapping.Last != b.Mapping.Last ||
			a.Details.Root != b.Details.Root)
}

// pairing is a Pair with the candidates it came from.
type pairing struct {
	Pair
	top, det *cand
}

// pair matches each top level with the details trees that list the same
// thin ids. Details trees whose mapped_blocks add up to the mappings found
// are all kept; when none does, only the newest other one is, so the
// number of pairs stays near the number of top levels.
func pair(tops, dets []*cand) []pairing {
	byHash := map[uint64][]*cand{}
	for _, d := range dets {
		byHash[d.hash] = append(byHash[d.hash], d)
	}
	var out []pairing
	for _, t := range tops {
		var best *cand
		exact := false
		for _, d := range byHash[t.hash] {
			if !slices.Equal(t.ids, d.ids) {
				continue
			}
			if d.tree.Mappings == t.tree.Mappings {
				exact = true
				out = append(out, makePair(t, d))
				continue
			}
			if best == nil || compareTrees(d.tree, best.tree) < 0 {
				best = d
			}
		}
		if !exact && best != nil {
			out = append(out, makePair(t, best))
		}
	}
	return out
}

func makePair(t, d *cand) pairing {
	return pairing{Pair: Pair{Mapping: t.tree, Details: d.tree, Age: max(t.tree.Age, d.tree.Age),
		SameCounts: t.tree.Mappings == d.tree.Mappings}, top: t, det: d}
}

// compareTrees orders candidates best first: consistent, newest, most
// mappings at the newest time, most mappings, newest transaction, live,
// then by block for a stable order.
func compareTrees(a, b Tree) int {
	return cmp.Or(
		cmpBool(a.Consistent(), b.Consistent()),
		cmp.Compare(b.Age, a.Age),
		cmp.Compare(b.NewestMappings, a.NewestMappings),
		cmp.Compare(b.Mappings, a.Mappings),
		cmp.Compare(b.MaxTransaction, a.MaxTransaction),
		cmpBool(a.Live, b.Live),
		cmp.Compare(a.Root, b.Root),
	)
}

// comparePairs orders pairs best first: the superblock's, then those
// holding its top level, then its details tree, both consistent, counts agreeing,
// newest (the pair's age, then the mapping tree's own age and how many
// mappings carry it), most mappings, live, then by blocks.
func comparePairs(a, b Pair) int {
	return cmp.Or(
		cmpBool(a.Live, b.Live),
		cmpBool(a.Mapping.Live, b.Mapping.Live),
		cmpBool(a.Details.Live, b.Details.Live),
		cmpBool(a.Mapping.Consistent() && a.Details.Consistent(), b.Mapping.Consistent() && b.Details.Consistent()),
		cmpBool(a.SameCounts, b.SameCounts),
		cmp.Compare(b.Age, a.Age),
		cmp.Compare(b.Mapping.Age, a.Mapping.Age),
		cmp.Compare(b.Mapping.NewestMappings, a.Mapping.NewestMappings),
		cmp.Compare(b.Mapping.Mappings, a.Mapping.Mappings),
		cmp.Compare(b.Details.MaxTransaction, a.Details.MaxTransaction),
		cmp.Compare(a.Mapping.Root, b.Mapping.Root),
		cmp.Compare(a.Details.Root, b.Details.Root),
	)
}

// cmpBool puts true first.
func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return -1
	}
	return 1
}

// choose picks the roots: the superblock's where they are valid, then a
// scanned partner with the same thin ids, then the best pair, then the
// best details tree alone. tops and dets are ranked best first.
func (s *scanned) choose(tops, dets []*cand, pairs []pairing, liveTop, liveDet *node) Roots {
	var r Roots
	var top, det *cand
	find := func(cs []*cand, nd *node) *cand {
		for _, c := range cs {
			if nd != nil && c.tree.Root == nd.nr {
				return c
			}
		}
		return nil
	}
	top, det = find(tops, liveTop), find(dets, liveDet)
	switch {
	case top != nil && det != nil:
	case top != nil:
		// Any details tree with the same ids keeps the devices' times and
		// transactions; only its mapped_blocks may be off.
		if det = partner(top, dets, false); det != nil && det.tree.Mappings != top.tree.Mappings {
			r.Stale |= CountsDiffer
		}
	case det != nil:
		// A top level from another transaction would roll devices back:
		// only one whose mappings add up to the details' counts will do.
		top = partner(det, tops, true)
	case len(pairs) > 0:
		top, det = pairs[0].top, pairs[0].det
		r.Stale |= pairs[0].Stale & Tied
	case len(dets) > 0 && dets[0].tree.Consistent():
		// No top level lists the devices of any details tree: keep the
		// best details tree, and the caller attaches orphans to it.
		det = dets[0]
	}
	var age uint32
	if top != nil {
		r.Mapping, r.MappingFrom = top.tree.Root, Scanned
		if top.tree.Live {
			r.MappingFrom = Superblock
		}
		r.Stale |= top.stale
		age = top.tree.Age
	}
	if det != nil {
		r.Details, r.DetailsFrom = det.tree.Root, Scanned
		if det.tree.Live {
			r.DetailsFrom = Superblock
		}
		r.Stale |= det.stale
		age = max(age, det.tree.Age)
	}
	r.Stale = s.behind(r.Stale, age)
	return r
}

// partner finds the best candidate among cs listing the same thin ids as
// c, preferring one whose counts agree with c's; with exact, only those.
func partner(c *cand, cs []*cand, exact bool) *cand {
	var best *cand
	for _, o := range cs {
		if o.hash != c.hash || !slices.Equal(o.ids, c.ids) || exact && o.tree.Mappings != c.tree.Mappings {
			continue
		}
		if best == nil {
			best = o
			continue
		}
		same, bestSame := o.tree.Mappings == c.tree.Mappings, best.tree.Mappings == c.tree.Mappings
		if r := cmp.Or(cmpBool(same, bestSame), compareTrees(o.tree, best.tree)); r < 0 {
			best = o
		}
	}
	return best
}

// reach marks the device trees the chosen mapping tree leads to, and for
// the others the chosen details' devices that have no root and the same
// mapped_blocks.
func (s *scanned) reach(r Roots, tops, dets []*cand, devs []DeviceTree) {
	var top, det *cand
	for _, c := range tops {
		if r.MappingFrom != None && c.tree.Root == r.Mapping {
			top = c
		}
	}
	for _, c := range dets {
		if r.DetailsFrom != None && c.tree.Root == r.Details {
			det = c
		}
	}
	have := map[uint64]bool{}
	if top != nil {
		for _, id := range top.ids {
			have[id] = true
		}
		for i := range devs {
			_, devs[i].Reachable = slices.BinarySearch(top.roots, uint64(devs[i].Root))
		}
	}
	if det == nil {
		return
	}
	type want struct {
		id     thin.DevID
		mapped uint64
	}
	var lost []want
	s.detailsLeaves(&s.nodes[det.i], 0, func(nd *node) {
		for j, k := range s.keys(nd) {
			if !have[k] && k <= thin.MaxDevID {
				lost = append(lost, want{thin.DevID(k), s.details(nd, j).MappedBlocks})
			}
		}
	})
	for i := range devs {
		if devs[i].Reachable {
			continue
		}
		for _, w := range lost {
			if w.mapped == devs[i].Mappings {
				devs[i].Matches = append(devs[i].Matches, w.id)
			}
		}
	}
}

// detailsLeaves calls leaf for each leaf of the details tree under nd.
func (s *scanned) detailsLeaves(nd *node, depth int, leaf func(*node)) {
	if nd.kind != kindInternal {
		leaf(nd)
		return
	}
	if depth >= MaxHeight {
		return
	}
	for _, v := range s.vals(nd) {
		if c := s.at(v); c >= 0 && s.nodes[c].typ == typDetails && s.nodes[c].height < nd.height {
			s.detailsLeaves(&s.nodes[c], depth+1, leaf)
		}
	}
}
