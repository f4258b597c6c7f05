package check

import (
	"fmt"
	"maps"
	"slices"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
)

// checkDevices compares the details tree with the mapping tree once the
// walk is done: the same device ids in both, each device's mapped_blocks
// equal to the mappings its tree really holds, and every tree's leaves at
// one depth.
func (c *checker) checkDevices() {
	t := newTally(c)
	ids := slices.Sorted(maps.Keys(c.details))
	for id := range c.devRoots {
		if _, ok := c.details[id]; !ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	c.rep.Devices = len(ids)
	for _, id := range ids {
		d, hasDetails := c.details[id]
		root, hasRoot := c.devRoots[id]
		switch {
		case !hasRoot:
			c.add(Finding{Severity: Fatal, Area: AreaDevices, Dev: u32(id), Message: "device has details but no mapping tree"})
			continue
		case !hasDetails:
			c.add(Finding{Severity: Fatal, Area: AreaDevices, Dev: u32(id), Block: u64(uint64(root)), Message: "device has a mapping tree but no details"})
		}
		if hasDetails {
			if d.CreationTime > c.trees.Time {
				c.add(Finding{Severity: Warning, Area: AreaDevices, Dev: u32(id), Message: fmt.Sprintf("creation time %d is later than the pool time %d", d.CreationTime, c.trees.Time)})
			}
			if d.SnapshottedTime < d.CreationTime {
				c.add(Finding{Severity: Warning, Area: AreaDevices, Dev: u32(id), Message: fmt.Sprintf("snapshot time %d is earlier than its creation time %d", d.SnapshottedTime, d.CreationTime)})
			}
			if d.TransactionID > c.trees.TransactionID {
				c.add(Finding{Severity: Warning, Area: AreaDevices, Dev: u32(id), Message: fmt.Sprintf("transaction id %d is later than the pool's %d", d.TransactionID, c.trees.TransactionID)})
			}
		}
		if c.opts.SkipMappings {
			continue
		}
		n, ok := t.mappings(root)
		if !ok {
			continue // the walk reported why
		}
		c.rep.Mappings += n
		if hasDetails && n != d.MappedBlocks {
			c.add(Finding{Severity: Fatal, Area: AreaDevices, Dev: u32(id),
				Message: fmt.Sprintf("details say %d mapped blocks, the mapping tree holds %d", d.MappedBlocks, n)})
		}
	}
	t.depths()
}

// tally works out, from what the walk recorded, how many mappings each
// subtree holds and how high it is. Shared subtrees are counted once per
// tree that holds them, and worked out once.
type tally struct {
	c      *checker
	count  map[block.Nr]uint64
	height map[block.Nr]int
	busy   map[block.Nr]bool
	loops  map[block.Nr]bool
}

func newTally(c *checker) *tally {
	return &tally{c: c, count: map[block.Nr]uint64{}, height: map[block.Nr]int{}, busy: map[block.Nr]bool{}, loops: map[block.Nr]bool{}}
}

func (t *tally) children(n block.Nr) []block.Nr {
	v, ok := t.c.internals.Load(n)
	if !ok {
		return nil
	}
	return v.([]block.Nr)
}

// mappings is the number of leaf entries under n; false when part of the
// subtree could not be read.
func (t *tally) mappings(n block.Nr) (uint64, bool) {
	if n >= t.c.nrMeta {
		return 0, false
	}
	switch t.c.nodes[n].state {
	case nodeLeaf:
		return uint64(t.c.nodes[n].entries), true
	case nodeInternal:
	default:
		return 0, false
	}
	if v, ok := t.count[n]; ok {
		return v, true
	}
	if t.busy[n] {
		t.loop(n)
		return 0, false
	}
	t.busy[n] = true
	defer delete(t.busy, n)
	var sum uint64
	for _, k := range t.children(n) {
		v, ok := t.mappings(k)
		if !ok {
			return 0, false
		}
		sum += v
	}
	t.count[n] = sum
	return sum, true
}

func (t *tally) loop(n block.Nr) {
	if !t.loops[n] {
		t.loops[n] = true
		t.c.add(Finding{Severity: Fatal, Area: t.c.roles[n].area(), Block: u64(uint64(n)),
			Message: fmt.Sprintf("%v node is its own descendant (loop)", t.c.roles[n]), Tree: true})
	}
}

// heightOf is 0 for a leaf, 1 + the children's height for an internal
// node, or -1 when unknown.
func (t *tally) heightOf(n block.Nr) int {
	if n >= t.c.nrMeta {
		return -1
	}
	switch t.c.nodes[n].state {
	case nodeLeaf:
		return 0
	case nodeInternal:
	default:
		return -1
	}
	if h, ok := t.height[n]; ok {
		return h
	}
	if t.busy[n] {
		t.loop(n)
		return -1
	}
	t.busy[n] = true
	defer delete(t.busy, n)
	h := -1
	for _, k := range t.children(n) {
		kh := t.heightOf(k)
		if kh < 0 {
			continue
		}
		if h >= 0 && kh+1 != h {
			t.c.add(Finding{Severity: Fatal, Area: t.c.roles[n].area(), Block: u64(uint64(n)),
				Message: fmt.Sprintf("%v node has children of different heights: leaves are not all at one depth", t.c.roles[n]), Tree: true})
			h = max(h, kh+1)
			continue
		}
		h = kh + 1
	}
	t.height[n] = h
	return h
}

// depths checks every internal node the walk recorded, in block order.
func (t *tally) depths() {
	var ns []block.Nr
	t.c.internals.Range(func(k, _ any) bool {
		ns = append(ns, k.(block.Nr))
		return true
	})
	slices.Sort(ns)
	for _, n := range ns {
		t.heightOf(n)
	}
}
