package main

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/restore"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

type config struct {
	out           string
	mappings      uint64
	seed          uint64
	dataBlockSize uint
}

type stats struct {
	devices    int
	mapped     uint64 // sum of mapped_blocks
	private    uint64 // entries written into new leaves
	dataBlocks uint64 // nr_data_blocks
	metaBlocks uint64 // nr metadata blocks
	metaUsed   uint64 // nr_allocated of the metadata space map
}

type kind uint8

const (
	base kind = iota
	layer
	initLayer
	container
)

// run is a stretch of mappings: n virtual blocks from v to n data blocks
// from d, written at time t.
type run struct {
	v, d uint64
	n    uint64
	t    uint32
}

// chunk is the content of one bottom leaf of a device: on disk and
// shareable, or private to the device being generated.
type chunk struct {
	leaf   btree.Leaf
	shared bool
	runs   []run
}

func entries(runs []run) (n uint64) {
	for _, r := range runs {
		n += r.n
	}
	return n
}

// device is one planned thin device.
type device struct {
	id           thin.DevID
	kind         kind
	parent       int // index in the plan, -1 for the base
	ctime, stime uint32
	trans        uint64
	weight       float64 // share of the appended blocks
	appends      uint64  // new blocks past its origin's
	overwrites   uint64  // blocks of its origin it rewrites
	pending      int     // snapshots of it not yet generated
	untouched    bool    // a container created but never started
	mapped       uint64  // once generated
	chunks       []chunk // its leaves once generated, while pending > 0
}

// plan lays out the devices: ids in creation order, which is also the
// order snapshots need (an origin before its snapshots).
func plan(cfg config, rng *rand.Rand) []*device {
	devs := []*device{{id: 1, kind: base, parent: -1, weight: 0.3, trans: 1}}
	var now uint32
	trans := uint64(1)
	snap := func(parent int, k kind, w float64) int {
		now++ // the pool time moves on each snapshot
		trans++
		p := devs[parent]
		p.stime = now
		p.pending++
		devs = append(devs, &device{id: thin.DevID(len(devs) + 1), kind: k, parent: parent, ctime: now, stime: now, trans: trans, weight: w})
		return len(devs) - 1
	}
	images := max(2, int(math.Sqrt(float64(cfg.mappings))/200))
	var tops []int
	layers := []int{0}
	for range images {
		// Images share their lower layers now and then.
		parent := 0
		if rng.IntN(2) == 0 {
			parent = layers[rng.IntN(len(layers))]
		}
		for range 3 + rng.IntN(8) {
			parent = snap(parent, layer, math.Exp(rng.NormFloat64()))
			layers = append(layers, parent)
		}
		tops = append(tops, parent)
	}
	for range 3 * images {
		init := snap(tops[rng.IntN(len(tops))], initLayer, 0)
		if rng.IntN(4) == 0 {
			// Created, never started: nothing written, the whole tree
			// still shared with its init layer.
			devs[snap(init, container, 0)].untouched = true
		} else {
			snap(init, container, 0.1*math.Exp(rng.NormFloat64()))
		}
	}
	// Scale the appends so that the mapped blocks of all devices add up to
	// about cfg.mappings: a device maps what its ancestors appended plus
	// its own.
	const initAppends = 4
	sumW, fixed := 0.0, 0.0
	cum := make([]float64, len(devs))
	cumFixed := make([]float64, len(devs))
	for i, d := range devs {
		f := 0.0
		if d.kind == initLayer {
			f = initAppends
		}
		cum[i], cumFixed[i] = d.weight, f
		if d.parent >= 0 {
			cum[i] += cum[d.parent]
			cumFixed[i] += cumFixed[d.parent]
		}
		sumW += cum[i]
		fixed += cumFixed[i]
	}
	scale := max(0, float64(cfg.mappings)-fixed) / sumW
	for _, d := range devs {
		d.appends = uint64(math.Round(d.weight * scale))
		switch d.kind {
		case initLayer:
			d.appends, d.overwrites = initAppends, 3
		case layer:
			d.overwrites = d.appends / 6
		case container:
			d.overwrites = d.appends / 3
			if d.untouched {
				d.appends = 0
			}
		}
	}
	return devs
}

// generator turns the plan into metadata.
type generator struct {
	rng   *rand.Rand
	r     *restore.Restorer
	data  uint64 // next free data block
	st    stats
	runs  []run
	devs  []*device
	limit uint64 // nr_data_blocks
}

func generate(cfg config) (stats, error) {
	rng := rand.New(rand.NewPCG(cfg.seed, cfg.seed^0x9e3779b97f4a7c15))
	devs := plan(cfg, rng)

	// Size the data device and the metadata for the worst case.
	var dataNeed, private uint64
	for _, d := range devs {
		dataNeed += d.appends + d.overwrites
		// A rewrite copies a whole leaf.
		private += d.appends + min(d.overwrites, 1+d.overwrites/8)*uint64(btree.MaxEntries(8))
	}
	nrData := dataNeed + dataNeed/4 + 1024
	nrMeta := private/100 + uint64(len(devs))*8 + 2*spacemap.BitmapsFor(nrData) + 1024
	nrMeta = min(nrMeta, spacemap.MaxMetadataBlocks)

	f, err := os.OpenFile(cfg.out, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return stats{}, err
	}
	defer f.Close()
	size := int64(nrMeta) * block.Size
	if err := f.Truncate(size); err != nil {
		return stats{}, err
	}
	r, err := restore.New(f, size, restore.Options{
		Time:          devs[len(devs)-1].ctime,
		TransactionID: devs[len(devs)-1].trans + 1,
		DataBlockSize: uint32(cfg.dataBlockSize),
		NrDataBlocks:  nrData,
	})
	if err != nil {
		return stats{}, err
	}
	g := &generator{rng: rng, r: r, devs: devs, limit: nrData}
	for _, d := range devs {
		if err := g.device(d); err != nil {
			return g.st, fmt.Errorf("device %d: %w", d.id, err)
		}
	}
	if err := r.End(); err != nil {
		return g.st, err
	}
	if err := f.Sync(); err != nil {
		return g.st, err
	}
	g.st.devices = len(devs)
	g.st.dataBlocks = nrData
	g.st.metaBlocks = nrMeta
	sb, err := thin.ReadSuperblock(block.NewReader(f, size), 0)
	if err != nil {
		return g.st, err
	}
	g.st.metaUsed = sb.MetadataSM.NrAllocated
	return g.st, f.Close()
}

// alloc takes n consecutive data blocks.
func (g *generator) alloc(n uint64) (uint64, error) {
	if g.data+n > g.limit {
		return 0, errors.New("out of data blocks")
	}
	g.data += n
	return g.data - n, nil
}

// device generates one device: its origin's leaves, rewrites that make
// some of them private, new blocks at the end.
func (g *generator) device(d *device) error {
	if d.untouched {
		p := g.devs[d.parent]
		if p.pending--; p.pending == 0 {
			p.chunks = nil
		}
		d.mapped = p.mapped
		g.st.mapped += d.mapped
		details := thin.Details{MappedBlocks: d.mapped, TransactionID: d.trans, CreationTime: d.ctime, SnapshottedTime: d.stime}
		return g.r.Snapshot(d.id, details, p.id)
	}
	var chunks []chunk
	if d.parent >= 0 {
		p := g.devs[d.parent]
		chunks = append(chunks, p.chunks...)
		if p.pending--; p.pending == 0 {
			p.chunks = nil
		}
	}
	now := d.ctime

	// Rewrites: ranges of up to 64 blocks in leaves picked at random.
	for left := d.overwrites; left > 0 && len(chunks) > 0; {
		ci := g.rng.IntN(len(chunks))
		c := &chunks[ci]
		e := entries(c.runs)
		n := min(left, 1+uint64(g.rng.IntN(64)), e)
		at := uint64(g.rng.Int64N(int64(e - n + 1)))
		data, err := g.alloc(n)
		if err != nil {
			return err
		}
		c.runs = rewrite(c.runs, at, n, data, now)
		c.shared = false
		left -= n
	}

	// New blocks: extents of 1..64 blocks with small holes between them,
	// past the last mapped block.
	next := uint64(0)
	if len(chunks) > 0 {
		next = chunks[len(chunks)-1].leaf.Last + 1
	}
	var tail []run
	for left := d.appends; left > 0; {
		n := min(left, 1+uint64(g.rng.IntN(64)))
		data, err := g.alloc(n)
		if err != nil {
			return err
		}
		next += uint64(g.rng.IntN(16))
		tail = append(tail, run{v: next, d: data, n: n, t: now})
		next += n
		left -= n
	}
	if len(tail) > 0 {
		chunks = append(chunks, chunk{runs: tail})
	}

	mapped := uint64(0)
	for _, c := range chunks {
		mapped += entries(c.runs)
	}
	err := g.r.BeginDevice(d.id, thin.Details{MappedBlocks: mapped, TransactionID: d.trans, CreationTime: d.ctime, SnapshottedTime: d.stime})
	if err != nil {
		return err
	}
	for _, c := range chunks {
		if c.shared {
			if err := g.r.RefLeaves(c.leaf); err != nil {
				return err
			}
			continue
		}
		for _, x := range c.runs {
			if err := g.r.Run(x.v, x.d, x.n, x.t); err != nil {
				return err
			}
			g.st.private += x.n
		}
	}
	if err := g.r.EndDevice(); err != nil {
		return err
	}
	g.st.mapped += mapped
	d.mapped = mapped
	if d.pending > 0 {
		if d.chunks, err = split(chunks, g.r.Leaves()); err != nil {
			return err
		}
	}
	return nil
}

// rewrite gives entries at..at+n of runs new data blocks from data on, at
// time t. It returns new runs; the old ones may be shared and are not
// touched.
func rewrite(runs []run, at, n, data uint64, t uint32) []run {
	out := make([]run, 0, len(runs)+2)
	pos := uint64(0)
	for _, x := range runs {
		lo, hi := max(at, pos), min(at+n, pos+x.n) // overlap, in entry positions
		if lo >= hi {
			out = append(out, x)
			pos += x.n
			continue
		}
		if lo > pos {
			out = append(out, run{v: x.v, d: x.d, n: lo - pos, t: x.t})
		}
		out = append(out, run{v: x.v + lo - pos, d: data + lo - at, n: hi - lo, t: t})
		if hi < pos+x.n {
			k := hi - pos
			out = append(out, run{v: x.v + k, d: x.d + k, n: x.n - k, t: x.t})
		}
		pos += x.n
	}
	return out
}

// split cuts a device's content at the leaves the Restorer wrote for it,
// so its snapshots can share them.
func split(chunks []chunk, leaves []btree.Leaf) ([]chunk, error) {
	var all []run
	for _, c := range chunks {
		all = append(all, c.runs...)
	}
	out := make([]chunk, 0, len(leaves))
	for _, lf := range leaves {
		var runs []run
		for need := uint64(lf.Entries); need > 0; {
			if len(all) == 0 {
				return nil, errors.New("the leaves hold more mappings than the device")
			}
			x := all[0]
			if x.n <= need {
				runs = append(runs, x)
				all = all[1:]
				need -= x.n
				continue
			}
			runs = append(runs, run{v: x.v, d: x.d, n: need, t: x.t})
			all[0] = run{v: x.v + need, d: x.d + need, n: x.n - need, t: x.t}
			need = 0
		}
		out = append(out, chunk{leaf: lf, shared: true, runs: runs})
	}
	if len(all) != 0 {
		return nil, errors.New("the leaves hold fewer mappings than the device")
	}
	return out, nil
}
