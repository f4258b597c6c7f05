package check

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// ErrNotMetadata: the input holds nothing that looks like dm-thin metadata.
var ErrNotMetadata = errors.New("not dm-thin pool metadata")

// Run checks the metadata r reads. It never writes. The report holds every
// problem found; the error says only that the check could not be done:
// I/O failure, input that is not thin metadata (errors.Is ErrNotMetadata),
// or a cancelled context.
//
// Run reads with as many goroutines as GOMAXPROCS and keeps memory in flat
// arrays: 8 bytes per metadata block and 4 per data block.
func Run(ctx context.Context, r *block.Reader, opts Options) (*Report, error) {
	c := &checker{r: r, opts: opts, rep: &Report{MetadataSnap: opts.MetadataSnap, SkipMappings: opts.SkipMappings}}
	if err := c.run(ctx); err != nil {
		return nil, err
	}
	c.rep.sort()
	return c.rep, nil
}

type checker struct {
	r    *block.Reader
	opts Options
	rep  *Report
	mu   sync.Mutex // guards rep.Findings while workers run

	sb     thin.Superblock  // the live superblock
	trees  thin.Superblock  // whose trees are walked: sb, or the held snapshot
	snap   *thin.Superblock // the held snapshot, if readable
	nrMeta block.Nr         // metadata blocks that may be referenced
	nrData uint64           // data blocks that may be mapped (0: unknown)

	// Flat per-metadata-block state, indexed by block.Nr.
	metaCounts []uint32 // references found so far
	roles      []role   // what first referred to the block
	nodes      []nodeInfo

	dataCounts []uint32 // per data block: distinct bottom leaves mapping it

	internals sync.Map // block.Nr -> []block.Nr, children of internal nodes

	// Gathered during the walk.
	devRoots     map[uint32]block.Nr // top-level leaf entries
	details      map[uint32]thin.Details
	dataIndex    map[uint64]indexRef // data space-map index b-tree leaves
	metaIndex    []spacemap.IndexEntry
	dataOverflow []leafRef
	metaOverflow []leafRef
	treeBroken   map[block.Nr]bool // nodes that could not be read or parsed

	read  atomic.Uint64 // blocks read, for progress
	phase atomic.Pointer[phase]

	// dataIndexBroken: part of the data space map's index is unreadable,
	// so the stored data counts cannot all be found.
	dataIndexBroken atomic.Bool
}

type leafRef struct {
	first uint64
	nr    block.Nr
}

// nodeInfo records what the walk learnt of a b-tree node.
type nodeInfo struct {
	entries uint16 // nr_entries of a leaf
	state   uint8  // nodeUnread, nodeLeaf, nodeInternal, nodeBad
}

const (
	nodeUnread = iota
	nodeLeaf
	nodeInternal
	nodeBad
)

func (c *checker) run(ctx context.Context) error {
	if c.r.Len() == 0 {
		return fmt.Errorf("%w: smaller than one 4 KiB block; is this the metadata file or device?", ErrNotMetadata)
	}
	stop := c.progress()
	defer stop()
	ok, err := c.checkSuperblock()
	if err != nil || !ok {
		return err
	}
	c.metaCounts = make([]uint32, c.nrMeta)
	c.roles = make([]role, c.nrMeta)
	c.nodes = make([]nodeInfo, c.nrMeta)
	if c.nrData > 0 && !c.opts.SkipMappings && !c.opts.MetadataSnap {
		c.dataCounts = make([]uint32, c.nrData)
	}
	c.devRoots = map[uint32]block.Nr{}
	c.details = map[uint32]thin.Details{}
	c.dataIndex = map[uint64]indexRef{}
	c.treeBroken = map[block.Nr]bool{}

	full := !c.opts.SkipMappings && !c.opts.MetadataSnap
	w := &walker{c: c}
	c.metaCounts[0], c.roles[0] = 1, roleSuper
	if n := c.sb.MetadataSnap; n != 0 && n < c.nrMeta {
		c.metaCounts[n], c.roles[n] = 1, roleSuper
	}
	var level []item
	if c.opts.MetadataSnap {
		level = w.treeRoots(c.trees, c.sb.MetadataSnap, false)
	} else {
		level = w.treeRoots(c.sb, 0, false)
	}
	if full {
		sm, err := w.spaceMapRoots()
		if err != nil {
			return err
		}
		level = append(level, sm...)
	}
	c.gather(w)
	c.enter("reading the trees", &c.read, c.sb.MetadataSM.NrAllocated)
	if err := c.walk(ctx, level); err != nil {
		return err
	}
	c.checkDevices()
	if !full {
		return nil
	}
	// The held snapshot's trees hold references too: walk what they do
	// not share with the live trees, to count it.
	if c.snap != nil {
		level = w.treeRoots(*c.snap, c.sb.MetadataSnap, true)
		c.gather(w)
		if err := c.walk(ctx, level); err != nil {
			return err
		}
	}
	if err := c.checkSpaceMaps(ctx); err != nil {
		return err
	}
	if c.opts.KeepCounts {
		rc := &Recount{Meta: c.metaCounts, Data: c.dataCounts, SpaceMap: make([]bool, len(c.roles))}
		for n, r := range c.roles {
			rc.SpaceMap[n] = r >= roleDataIndex && r <= roleMetaIndex
		}
		c.rep.recount = rc
	}
	return nil
}

// treeRoots counts the pointers superblock s (at block at) holds to its
// two trees and returns those not yet reached.
func (w *walker) treeRoots(s thin.Superblock, at block.Nr, second bool) []item {
	from := item{nr: at, role: roleSuper}
	var out []item
	for _, r := range []struct {
		nr   block.Nr
		role role
	}{{s.MappingRoot, roleTop}, {s.DetailsRoot, roleDetails}} {
		it := item{nr: r.nr, role: r.role, root: true, second: second, hi: math.MaxUint64}
		if w.ref(r.nr, r.role, from) {
			out = append(out, it)
		}
	}
	return out
}

// phase is a stage of the check, for progress reports.
type phase struct {
	name  string
	done  *atomic.Uint64
	total uint64
}

func (c *checker) enter(name string, done *atomic.Uint64, total uint64) {
	c.phase.Store(&phase{name, done, total})
}

// progress reports the number of blocks read every 100ms from one
// goroutine, until the returned func is called.
func (c *checker) progress() func() {
	p := c.opts.Progress
	if p == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				ph := c.phase.Load()
				if ph == nil {
					continue
				}
				p(ph.name, ph.done.Load(), ph.total)
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

func (c *checker) add(f Finding) {
	c.mu.Lock()
	c.rep.Findings = append(c.rep.Findings, f)
	c.mu.Unlock()
}

func (c *checker) fatal(a Area, format string, args ...any) Finding {
	f := Finding{Severity: Fatal, Area: a, Message: fmt.Sprintf(format, args...)}
	c.add(f)
	return f
}

func (c *checker) warn(a Area, format string, args ...any) {
	c.add(Finding{Severity: Warning, Area: a, Message: fmt.Sprintf(format, args...)})
}

func u64(v uint64) *uint64 { return &v }
func u32(v uint32) *uint32 { return &v }

// looksLikeXML spots a dump given where binary metadata belongs.
func looksLikeXML(b []byte) bool {
	t := bytes.TrimLeft(b, " \t\r\n")
	return bytes.HasPrefix(t, []byte("<?xml")) || bytes.HasPrefix(t, []byte("<superblock"))
}
