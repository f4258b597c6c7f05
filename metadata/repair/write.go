package repair

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/restore"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// copyRun is how many blocks the space-map repair copies per write.
const copyRun = 256

// Write writes the repaired metadata to out, which must hold size bytes
// (the input's size) and read as zeros where nothing is written: a new or
// truncated file. It writes block 0 first as zeros and the superblock
// last, after a Sync when out has one, so that until it returns no tool
// takes out for a pool. With Nothing to do it writes nothing; with Cannot
// it returns ErrCannotRepair.
func (p *Plan) Write(ctx context.Context, out Output, size int64) error {
	switch p.res.Action {
	case Nothing:
		return nil
	case Cannot:
		return fmt.Errorf("%w: %s", ErrCannotRepair, p.res.Reason)
	}
	if _, err := out.WriteAt(make([]byte, block.Size), 0); err != nil {
		return fmt.Errorf("clearing the output's superblock: %w", err)
	}
	if p.res.Action == SpaceMaps {
		return p.writeSpaceMaps(ctx, out)
	}
	return p.rebuild(ctx, out, size)
}

func syncOut(out Output) error {
	if s, ok := out.(interface{ Sync() error }); ok {
		return s.Sync()
	}
	return nil
}

// writeSpaceMaps copies every block the recount says is used, apart from
// the old space maps, to the same place in out, writes new space maps in
// the first free range that holds them, sparing the old space maps' blocks
// when it can, and then the superblock: the old one with new space-map
// roots. So only blocks the old metadata does not use change, and the
// superblock, unless details are patched or the metadata is too full.
func (p *Plan) writeSpaceMaps(ctx context.Context, out Output) error {
	rc := p.rep.Recount()
	nrMeta := uint64(len(rc.Meta))
	meta := restore.NewCounts(nrMeta)
	for n, v := range rc.Meta {
		if v > 0 && !rc.SpaceMap[n] {
			meta.Set(uint64(n), v)
		}
	}
	if p.dropSnap && uint64(p.sb.MetadataSnap) < nrMeta {
		// Only the superblock pointed at the unreadable copy.
		meta.Set(uint64(p.sb.MetadataSnap), 0)
	}
	if p.dropSnap {
		p.sb.MetadataSnap = 0
	}
	data := restore.NewCounts(p.nrData)
	for d, v := range rc.Data {
		if v > 0 && uint64(d) < p.nrData {
			data.Set(uint64(d), v)
		}
	}

	// Copy the used blocks (block 0 is written last), in runs.
	buf := make([]byte, copyRun*block.Size)
	for n := uint64(1); n < nrMeta; {
		if meta.Get(n) == 0 {
			n++
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		end := n + 1
		for end < nrMeta && end-n < copyRun && meta.Get(end) != 0 {
			end++
		}
		b := buf[:(end-n)*block.Size]
		if err := p.in.ReadRaw(b, block.Nr(n)); err != nil {
			return err
		}
		for i := n; i < end; i++ {
			if ps := p.patches[block.Nr(i)]; ps != nil {
				patchLeaf(b[(i-n)*block.Size:(i-n+1)*block.Size], ps)
			}
		}
		if _, err := out.WriteAt(b, int64(n)*block.Size); err != nil {
			return fmt.Errorf("writing blocks %d..%d: %w", n, end-1, err)
		}
		n = end
	}

	metaRoot, dataRoot, err := writeSpaceMapsFree(out, meta, data, rc.SpaceMap)
	if err != nil {
		return err
	}
	sb := p.sb
	sb.Magic = thin.Magic
	sb.DataBlockSize = uint32(p.res.Pool.DataBlockSize.Value)
	sb.MetadataSM, sb.DataSM = metaRoot, dataRoot
	p.res.MetadataAfter = metaRoot.NrAllocated
	return p.writeSuper(out, sb)
}

func (p *Plan) writeSuper(out Output, sb thin.Superblock) error {
	b := make([]byte, block.Size)
	sb.Encode(b, 0)
	if _, err := out.WriteAt(b, 0); err != nil {
		return fmt.Errorf("writing the superblock: %w", err)
	}
	return syncOut(out)
}

// writeSpaceMapsFree writes both space maps, counting meta and data, into
// the first run of metadata blocks free in meta that holds them, and
// syncs out. It prefers a run that spares the blocks avoid marks (the old
// space maps, which the old superblock still uses until the new one is
// written: sparing them lets a device be repaired in place), and takes
// them only when no other run is long enough.
func writeSpaceMapsFree(out Output, meta, data *restore.Counts, avoid []bool) (metaRoot, dataRoot spacemap.Root, err error) {
	need := restore.SpaceMapBlocks(meta, data)
	start, ok := freeRange(meta, need, avoid)
	if !ok && avoid != nil {
		start, ok = freeRange(meta, need, nil)
	}
	if !ok {
		return metaRoot, dataRoot, fmt.Errorf("%w: no run of %d free metadata blocks for the new space maps", restore.ErrNoSpace, need)
	}
	if metaRoot, dataRoot, err = restore.WriteSpaceMaps(out, meta, data, start); err != nil {
		return metaRoot, dataRoot, err
	}
	return metaRoot, dataRoot, syncOut(out)
}

// freeRange finds the first need blocks in a row, after block 0, whose
// count is 0 and that avoid does not mark.
func freeRange(meta *restore.Counts, need uint64, avoid []bool) (block.Nr, bool) {
	run := uint64(0)
	for n := uint64(1); n < meta.Len(); n++ {
		if meta.Get(n) != 0 || n < uint64(len(avoid)) && avoid[n] {
			run = 0
			continue
		}
		run++
		if run == need {
			return block.Nr(n + 1 - need), true
		}
	}
	return 0, false
}

// rebuild writes new trees through a Restorer: first every bottom leaf
// that several devices reach, as a def, then each device, sharing those
// leaves and copying the rest mapping by mapping.
func (p *Plan) rebuild(ctx context.Context, out Output, size int64) error {
	pool := p.res.Pool
	r, err := restore.New(out, size, restore.Options{
		Time:          uint32(pool.Time.Value),
		TransactionID: pool.TransactionID.Value,
		Flags:         pool.Flags,
		Version:       p.version(),
		DataBlockSize: uint32(pool.DataBlockSize.Value),
		NrDataBlocks:  pool.NrDataBlocks.Value,
	})
	if err != nil {
		return err
	}
	w := newWalker(p.in)
	keep := func(n btree.Node) error {
		for i := range n.NrEntries {
			bt := thin.BlockTime(n.U64(i))
			if uint64(bt.Block()) >= p.nrData {
				continue
			}
			if err := r.Mapping(thin.Mapping{VBlock: thin.VBlock(n.Key(i)), Data: bt.Block(), Time: bt.Time()}); err != nil {
				return err
			}
		}
		return nil
	}

	shared := map[block.Nr][]btree.Leaf{}
	var sharedAt []block.Nr
	for at, devs := range p.leaves {
		if devs > 1 {
			sharedAt = append(sharedAt, block.Nr(at))
		}
	}
	buf := make([]byte, block.Size)
	for _, at := range sharedAt {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := p.in.ReadInto(buf, at, block.Node); err != nil {
			return err
		}
		n, err := btree.ParseNode(buf, at, 8)
		if err != nil {
			return err
		}
		if err := r.BeginDef(strconv.FormatUint(uint64(at), 10)); err != nil {
			return err
		}
		if err := keep(n); err != nil {
			return err
		}
		if err := r.EndDef(); err != nil {
			return err
		}
		shared[at] = r.Leaves()
	}

	for _, d := range p.devs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := r.BeginDevice(d.id, d.details); err != nil {
			return err
		}
		if d.hasRoot {
			var fillErr error
			err := w.walk(d.root, 8, func(at block.Nr, n btree.Node) error {
				if lfs, ok := shared[at]; ok {
					return r.RefLeaves(lfs...)
				}
				return keep(n)
			}, func(dm damage) {
				// The analysis reported the damage; put back what an
				// older tree holds of the range, as it counted.
				ms, _ := p.fill(d.id, d.root, dm.Keys)
				for _, m := range ms {
					if err := r.Mapping(m); err != nil && fillErr == nil {
						fillErr = err
					}
				}
			})
			if err == nil {
				err = fillErr
			}
			if err != nil {
				return err
			}
		}
		if err := r.EndDevice(); err != nil {
			return err
		}
	}
	if err := r.End(); err != nil {
		return err
	}
	if err := syncOut(out); err != nil {
		return err
	}
	sharing, err := p.shareRoots(out, size)
	if err != nil {
		return err
	}
	kept, err := p.copySnapshot(ctx, out, size)
	if err != nil {
		return err
	}
	if !sharing && !kept {
		return nil
	}
	return recountOutput(ctx, out, size)
}

// recountOutput rebuilds the space maps of out in place, as a space-map
// repair does, after the rebuild changed what its trees reach.
func recountOutput(ctx context.Context, out Output, size int64) error {
	again, err := Analyze(ctx, block.NewReader(out, size), Options{})
	if err != nil {
		return err
	}
	if again.res.Action != SpaceMaps {
		return fmt.Errorf("repair: internal error: recounting the rebuilt metadata needed %v: %s", again.res.Action, again.res.Reason)
	}
	return again.Write(ctx, out, size)
}

// shareRoots gives devices whose whole tree was one shared tree in the
// input (a snapshot not written since) one tree again: the Restorer gave
// each its own internal nodes over shared leaves. It points their
// top-level entries at the first one's root, which leaves the copies
// unused until the space maps are recounted; it says whether it changed
// anything. Only intact trees qualify: their contents are equal.
func (p *Plan) shareRoots(out Output, size int64) (bool, error) {
	intact := map[thin.DevID]bool{}
	for _, d := range p.res.Devices {
		intact[d.ID] = len(d.LostRanges) == 0 && d.Dropped == 0
	}
	first := map[block.Nr]thin.DevID{}
	same := map[thin.DevID]thin.DevID{} // device -> device whose root it takes
	for _, d := range p.devs {
		if !d.hasRoot || !intact[d.id] {
			continue
		}
		if f, ok := first[d.root]; ok {
			same[d.id] = f
			continue
		}
		first[d.root] = d.id
	}
	if len(same) == 0 {
		return false, nil
	}
	r := block.NewReader(out, size)
	sb, err := thin.ReadSuperblock(r, 0)
	if err != nil {
		return false, err
	}
	// Where each device's top-level entry lies, and its root.
	type entry struct {
		leaf block.Nr
		i    int
		root uint64
	}
	entries := map[thin.DevID]entry{}
	var bad error
	err = newWalker(r).walk(sb.MappingRoot, 8, func(at block.Nr, n btree.Node) error {
		for i := range n.NrEntries {
			entries[thin.DevID(n.Key(i))] = entry{at, i, n.U64(i)}
		}
		return nil
	}, func(d damage) { bad = d.Err })
	if err != nil {
		return false, err
	}
	if bad != nil {
		return false, fmt.Errorf("repair: internal error: the rebuilt top level is unreadable: %w", bad)
	}
	buf := make([]byte, block.Size)
	byLeaf := map[block.Nr][]thin.DevID{}
	for id := range same {
		byLeaf[entries[id].leaf] = append(byLeaf[entries[id].leaf], id)
	}
	for leaf, ids := range byLeaf {
		if err := r.ReadInto(buf, leaf, block.Node); err != nil {
			return false, err
		}
		maxEntries := int(binary.LittleEndian.Uint32(buf[20:]))
		for _, id := range ids {
			binary.LittleEndian.PutUint64(buf[32+8*maxEntries+8*entries[id].i:], entries[same[id]].root)
		}
		block.Seal(buf, block.Node)
		if _, err := out.WriteAt(buf, int64(leaf)*block.Size); err != nil {
			return false, err
		}
	}
	ids := slices.Sorted(maps.Keys(same))
	for _, id := range ids {
		p.res.note("device %d shares device %d's tree again, as in the input", id, same[id])
	}
	return true, nil
}

// version keeps the input's metadata version when the kernel supports it.
func (p *Plan) version() uint32 {
	if v := p.sb.Version; v >= 1 && v <= thin.Version {
		return v
	}
	p.res.note("unsupported metadata version %d replaced by %d", p.sb.Version, thin.Version)
	return thin.Version
}

// Verify checks the metadata written to out (size bytes) and records the
// verdict and the metadata blocks in use in the Result.
func (p *Plan) Verify(ctx context.Context, out Output, size int64) error {
	r := block.NewReader(out, size)
	rep, err := check.Run(ctx, r, check.Options{})
	if err != nil {
		p.res.After = &Verdict{Outcome: check.SuperblockDamaged, Summary: err.Error()}
		return nil
	}
	p.res.After = &Verdict{Outcome: rep.Outcome(), Summary: rep.Summary()}
	if sb, err := thin.ReadSuperblock(r, 0); err == nil {
		p.res.MetadataAfter = sb.MetadataSM.NrAllocated
	}
	return nil
}

// Repair analyses in, writes the repair to out (size bytes, reading as
// zeros) and checks it. With out nil it is a dry run: the repair is built
// in memory, checked, and thrown away. The error means the repair could
// not be done (I/O, not thin metadata, cancelled); damage left is in the
// Result.
func Repair(ctx context.Context, in *block.Reader, out Output, size int64, opts Options) (*Result, error) {
	p, err := Analyze(ctx, in, opts)
	if err != nil {
		return nil, err
	}
	res := p.res
	if res.Action == Nothing || res.Action == Cannot {
		return res, nil
	}
	if out == nil {
		res.DryRun = true
		out = newMemImage(size)
	}
	if err := p.Write(ctx, out, size); err != nil {
		return res, err
	}
	if err := p.Verify(ctx, out, size); err != nil {
		return res, err
	}
	return res, nil
}

// patchLeaf writes details values into a details leaf and reseals it.
func patchLeaf(b []byte, ps []patch) {
	maxEntries := int(binary.LittleEndian.Uint32(b[20:]))
	for _, pt := range ps {
		pt.d.Put(b[32+8*maxEntries+thin.DetailsSize*pt.i:])
	}
	block.Seal(b, block.Node)
}
