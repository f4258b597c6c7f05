package repair

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// heldSnapshot is the held metadata snapshot a rebuild keeps: its
// superblock copy and the nodes of its trees in the input, which the
// rebuild copies into free blocks of the output.
type heldSnapshot struct {
	at block.Nr // the superblock copy
	// nodes marks every node of the snapshot's trees, by input block;
	// pointers marks the leaves whose values are block numbers (the top
	// level's). Internal nodes tell themselves.
	nodes, pointers []bool
	count           int
}

// planSnapshot decides, for a rebuild, whether the held metadata
// snapshot is kept. The rebuild writes new trees, but the snapshot's own
// trees can be copied beside them when they are intact: the check of the
// snapshot (check.Options.MetadataSnap) finds nothing wrong with them and
// every mapping lies inside the data device. Otherwise the snapshot is
// dropped, and the result says why.
func (p *Plan) planSnapshot(ctx context.Context) error {
	n := p.sb.MetadataSnap
	if p.res.Action != Rebuild || n == 0 || p.dropSnap {
		return nil
	}
	drop := func(why string) {
		p.res.note("the held metadata snapshot at block %d is dropped: %s (reserve a new one if needed)", n, why)
	}
	rep, err := check.Run(ctx, p.in, check.Options{MetadataSnap: true})
	if err != nil {
		return err
	}
	for _, f := range rep.Findings {
		if f.Severity == check.Fatal && (f.Area == check.AreaMappings || f.Area == check.AreaDevices || f.Block != nil && block.Nr(*f.Block) == n) {
			drop("its trees are damaged: " + f.String())
			return nil
		}
	}
	hs, why := p.collectSnapshot(n)
	if hs == nil {
		drop(why)
		return nil
	}
	p.snap = hs
	p.res.note("the held metadata snapshot at block %d is kept: its trees are intact, and are copied beside the rebuilt ones (%d blocks)", n, hs.count)
	return nil
}

// collectSnapshot lists the nodes of the trees of the snapshot whose
// superblock copy is at n, or says why they cannot be kept.
func (p *Plan) collectSnapshot(n block.Nr) (*heldSnapshot, string) {
	ssb, err := thin.ReadSuperblock(p.in, n)
	if err != nil {
		return nil, fmt.Sprintf("its superblock copy is unreadable (%v)", err)
	}
	hs := &heldSnapshot{at: n, nodes: make([]bool, p.in.Len()), pointers: make([]bool, p.in.Len())}
	w := newWalker(p.in)
	w.nodes = hs.nodes
	var why string
	bad := func(d damage) {
		if why == "" {
			why = fmt.Sprintf("node %d of its trees is damaged (%v)", d.Node, d.Err)
		}
	}
	inside := func(b block.Nr) bool { return b != 0 && b < p.in.Len() }
	if !inside(ssb.DetailsRoot) || !inside(ssb.MappingRoot) {
		return nil, "its superblock copy names roots outside the metadata"
	}
	if err := w.walk(ssb.DetailsRoot, thin.DetailsSize, func(block.Nr, btree.Node) error { return nil }, bad); err != nil {
		return nil, err.Error()
	}
	var roots []block.Nr
	err = w.walk(ssb.MappingRoot, 8, func(at block.Nr, nd btree.Node) error {
		hs.pointers[at] = true
		for i := range nd.NrEntries {
			roots = append(roots, nd.Child(i))
		}
		return nil
	}, bad)
	if err != nil {
		return nil, err.Error()
	}
	walked := map[block.Nr]bool{}
	for _, root := range roots {
		if !inside(root) {
			return nil, fmt.Sprintf("its top level names block %d, outside the metadata", root)
		}
		if walked[root] {
			continue // a device sharing another's whole tree
		}
		walked[root] = true
		err := w.walk(root, 8, func(at block.Nr, nd btree.Node) error {
			for i := range nd.NrEntries {
				if d := thin.BlockTime(nd.U64(i)).Block(); uint64(d) >= p.nrData && why == "" {
					why = fmt.Sprintf("it maps data block %d, past the end of the data device (%d blocks)", d, p.nrData)
				}
			}
			return nil
		}, bad)
		if err != nil {
			return nil, err.Error()
		}
	}
	if why != "" {
		return nil, why
	}
	for _, m := range hs.nodes {
		if m {
			hs.count++
		}
	}
	hs.count++ // the superblock copy
	return hs, ""
}

// copySnapshot copies the held metadata snapshot that planSnapshot kept
// into free blocks of out, at the top of the metadata (the space maps go
// low, in the first free range), with every block number inside it moved
// along, and points out's superblock at the copy. It says whether it
// copied; without room it drops the snapshot and says so. The space maps
// are recounted afterwards.
func (p *Plan) copySnapshot(ctx context.Context, out Output, size int64) (bool, error) {
	hs := p.snap
	if hs == nil {
		return false, nil
	}
	r := block.NewReader(out, size)
	rep, err := check.Run(ctx, r, check.Options{KeepCounts: true})
	if err != nil {
		return false, err
	}
	rc := rep.Recount()
	if rc == nil {
		return false, fmt.Errorf("repair: internal error: the rebuilt metadata could not be counted: %s", rep.Summary())
	}
	// Room: the snapshot's blocks, and as many again as the space maps
	// take now, and a few, for the space maps to be written anew in one
	// run below them.
	var free, smBlocks int
	for b := range rc.Meta {
		switch {
		case rc.SpaceMap[b]:
			smBlocks++
		case rc.Meta[b] == 0 && b != 0:
			free++
		}
	}
	if free < hs.count+2*smBlocks+8 {
		p.res.note("the held metadata snapshot at block %d is dropped after all: the rebuilt metadata leaves %d free blocks, too few for its %d (reserve a new one if needed)",
			hs.at, free, hs.count)
		return false, nil
	}
	next := block.Nr(len(rc.Meta))
	alloc := func() block.Nr {
		for next--; rc.Meta[next] != 0 || rc.SpaceMap[next]; next-- {
		}
		return next
	}
	moved := make(map[block.Nr]block.Nr, hs.count)
	for b, m := range hs.nodes {
		if m {
			moved[block.Nr(b)] = alloc()
		}
	}
	at := alloc()

	buf := make([]byte, block.Size)
	le := binary.LittleEndian
	for old, to := range moved {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		if err := p.in.ReadInto(buf, old, block.Node); err != nil {
			return false, err
		}
		internal := le.Uint32(buf[4:])&1 != 0
		if internal || hs.pointers[old] {
			nr, vals := int(le.Uint32(buf[16:])), 32+8*int(le.Uint32(buf[20:]))
			for i := range nr {
				v := block.Nr(le.Uint64(buf[vals+8*i:]))
				dst, ok := moved[v]
				if !ok {
					return false, fmt.Errorf("repair: internal error: snapshot node %d points at block %d, which was not collected", old, v)
				}
				le.PutUint64(buf[vals+8*i:], uint64(dst))
			}
		}
		le.PutUint64(buf[8:], uint64(to))
		block.Seal(buf, block.Node)
		if _, err := out.WriteAt(buf, int64(to)*block.Size); err != nil {
			return false, fmt.Errorf("writing the metadata snapshot: %w", err)
		}
	}
	ssb, err := thin.ReadSuperblock(p.in, hs.at)
	if err != nil {
		return false, err
	}
	ssb.MappingRoot, ssb.DetailsRoot = moved[ssb.MappingRoot], moved[ssb.DetailsRoot]
	ssb.Encode(buf, at)
	if _, err := out.WriteAt(buf, int64(at)*block.Size); err != nil {
		return false, fmt.Errorf("writing the metadata snapshot: %w", err)
	}
	sb, err := thin.ReadSuperblock(r, 0)
	if err != nil {
		return false, err
	}
	sb.MetadataSnap = at
	if err := p.writeSuper(out, sb); err != nil {
		return false, err
	}
	if at != hs.at {
		p.res.note("the held metadata snapshot's superblock copy is now at block %d (it was at %d)", at, hs.at)
	}
	return true, nil
}
