package repair

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/restore"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// Dropping devices: the offline equivalent of the pool message
// "delete <id>" for metadata that checks clean, used to remove devices
// docker has no record of. Every block of the other devices stays where
// it is, byte for byte; only the top level of the mapping tree, the
// details tree and both space maps are written anew.
//
// Counting follows the kernel's dm_btree_del: taking a device out of the
// top level takes one reference from its root; a node whose count drops
// to 0 is free and takes one reference from each node it points at, and a
// bottom leaf one from each data block it maps. A subtree or data block
// that another device still reaches keeps a lower count and stays.

// Errors of DropDevices and DropFile; each message says what to do next.
var (
	// ErrDropNotClean: the input has damage that a drop would carry on.
	ErrDropNotClean = errors.New("the metadata does not check clean: run 'docker devmapper repair' first, then drop devices from the repaired metadata")
	// ErrNoSuchDevice: an id to drop is not a device of the pool.
	ErrNoSuchDevice = errors.New("no such thin device in the pool: list the pool's devices with 'docker devmapper ls'")
	// ErrMetadataSnapHeld: a held metadata snapshot would keep the
	// dropped devices.
	ErrMetadataSnapHeld = errors.New("the pool holds a metadata snapshot, which keeps every device it lists in use, so dropping would free nothing: " +
		"release it first ('dmsetup message <pool> 0 release_metadata_snap' while the pool is active), then drop the devices")
)

// DroppedDevice says what dropping one thin device took out.
type DroppedDevice struct {
	ID thin.DevID `json:"dev_id"`
	// Mappings is how many mappings the device had; all go with it.
	Mappings uint64 `json:"mappings"`
	// ExclusiveBlocks counts the data blocks that no other device of the
	// input maps, dropped or kept: what dropping this device alone frees.
	ExclusiveBlocks uint64 `json:"exclusive_data_blocks"`
	// Shared is set when the device shared data with another device (a
	// snapshot or its origin): that data stays in use.
	Shared bool `json:"shared"`
}

// DropResult is what DropDevices or DropFile did, or with DryRun would do.
type DropResult struct {
	Input  string `json:"input,omitempty"`
	Output string `json:"output,omitempty"`
	Backup string `json:"backup,omitempty"`
	DryRun bool   `json:"dry_run"`
	// Devices are the dropped devices, by id.
	Devices []DroppedDevice `json:"devices"`
	// Kept is how many devices stay.
	Kept int `json:"devices_kept"`
	// DataBlocksFreed counts the data blocks in use before and free
	// after: the dropped devices' exclusive blocks and those that only
	// dropped devices shared.
	DataBlocksFreed uint64 `json:"data_blocks_freed"`
	// MetadataBefore and MetadataAfter are nr_allocated of the input's and
	// the output's metadata space map.
	MetadataBefore uint64 `json:"metadata_blocks_before"`
	MetadataAfter  uint64 `json:"metadata_blocks_after,omitempty"`
	// After is the check of the output, once written.
	After *Verdict `json:"after,omitempty"`
}

// Summary is the closing line for a person.
func (r *DropResult) Summary() string {
	if len(r.Devices) == 0 {
		return "no device to drop: nothing written"
	}
	ids := make([]string, len(r.Devices))
	var mappings uint64
	for i, d := range r.Devices {
		ids[i] = fmt.Sprint(d.ID)
		mappings += d.Mappings
	}
	s := fmt.Sprintf("dropped %s %s (%d mappings), %d data blocks freed, %d devices kept as they were",
		plural(len(ids), "device", "devices"), strings.Join(ids, ", "), mappings, r.DataBlocksFreed, r.Kept)
	if r.DryRun {
		s = "would have " + s
	}
	switch {
	case r.After == nil:
	case r.After.Outcome == check.Clean:
		s += "; the result checks clean"
	default:
		s += "; the result does not check clean, so it was not installed: " + r.After.Summary
	}
	return s
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// WriteText prints the result for a person.
func (r *DropResult) WriteText(w io.Writer) error {
	var b strings.Builder
	if r.DryRun {
		b.WriteString("dry run: nothing is written\n")
	}
	for _, d := range r.Devices {
		fmt.Fprintf(&b, "device %d: %d mappings dropped, %d data blocks only it mapped freed", d.ID, d.Mappings, d.ExclusiveBlocks)
		if d.Shared {
			b.WriteString(" (it shared other blocks with another device: those stay)")
		}
		b.WriteString("\n")
	}
	if r.After != nil {
		fmt.Fprintf(&b, "metadata blocks in use: %d before, %d after\n", r.MetadataBefore, r.MetadataAfter)
		fmt.Fprintf(&b, "check of the result: %s\n", r.After.Summary)
	}
	if r.Backup != "" {
		fmt.Fprintf(&b, "backup of the original: %s\n", r.Backup)
	}
	if r.Output != "" && !r.DryRun && len(r.Devices) > 0 {
		fmt.Fprintf(&b, "metadata without the dropped devices written to %s\n", r.Output)
	}
	b.WriteString(r.Summary() + "\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// drop is an analysed drop: the counts after it and the new nodes, ready
// to write.
type drop struct {
	in  *block.Reader
	sb  thin.Superblock
	res *DropResult
	// meta and data are the reference counts after the drop, the old
	// space maps' own blocks at 0.
	meta, data []uint32
	// oldSpaceMap marks the old space maps' blocks, which the new ones
	// spare when they can (see writeSpaceMapsFree).
	oldSpaceMap []bool
	// nodes are the new top-level and details nodes, by block.
	nodes                    map[block.Nr][]byte
	mappingRoot, detailsRoot block.Nr
}

// DropDevices writes to out (size bytes, the input's size, reading as
// zeros where nothing is written) the metadata of in without the thin
// devices ids, and checks it. With out nil it is a dry run: the result is
// built in memory, checked and thrown away.
//
// The input must check clean (ErrDropNotClean otherwise: repair it
// first), hold every id (ErrNoSuchDevice) and hold no metadata snapshot
// (ErrMetadataSnapHeld). The output keeps every block of the other
// devices where it was, so snapshots keep sharing and metadata use does
// not grow: new top-level and details nodes go to blocks free in the
// input, both space maps are recounted and rewritten, and the superblock,
// written last between two syncs when out has a Sync method, keeps the
// pool's transaction id, time, flags, data block size and size. Blocks
// only dropped devices used become free, data and metadata; blocks they
// shared with kept devices keep the kept devices' references.
//
// The error means nothing usable was written; the Result is returned
// whenever the input could be analysed.
func DropDevices(ctx context.Context, in *block.Reader, out Output, size int64, ids []thin.DevID) (*DropResult, error) {
	d, err := planDrop(ctx, in, ids)
	if err != nil {
		return nil, err
	}
	res := d.res
	if len(res.Devices) == 0 {
		return res, nil
	}
	if out == nil {
		res.DryRun = true
		out = newMemImage(size)
	}
	if err := d.Write(ctx, out, size); err != nil {
		return res, err
	}
	clean, err := d.verify(ctx, out, size)
	if err != nil {
		return res, err
	}
	if !clean {
		return res, fmt.Errorf("%w: %s", ErrNotClean, res.After.Summary)
	}
	return res, nil
}

// planDrop checks the input and counts what dropping ids leaves.
func planDrop(ctx context.Context, in *block.Reader, ids []thin.DevID) (*drop, error) {
	rep, err := check.Run(ctx, in, check.Options{KeepCounts: true})
	if err != nil {
		return nil, err
	}
	if rep.Outcome() != check.Clean {
		return nil, fmt.Errorf("%w (%s)", ErrDropNotClean, strings.TrimSuffix(rep.Summary(), ": run 'docker devmapper repair'"))
	}
	rc := rep.Recount()
	sb, err := thin.ReadSuperblock(in, 0)
	if err != nil || rc == nil {
		return nil, fmt.Errorf("%w (the superblock or the counts could not be read again: %v)", ErrDropNotClean, err)
	}
	if sb.MetadataSnap != 0 {
		return nil, fmt.Errorf("%w (snapshot at block %d)", ErrMetadataSnapHeld, sb.MetadataSnap)
	}
	devs, err := thin.NewWalker(in, sb).Devices()
	if err != nil {
		return nil, err
	}
	byID := map[thin.DevID]thin.Device{}
	for _, dv := range devs {
		byID[dv.ID] = dv
	}
	gone := map[thin.DevID]bool{}
	var unknown []string
	for _, id := range ids {
		if _, ok := byID[id]; !ok {
			unknown = append(unknown, fmt.Sprint(id))
		}
		gone[id] = true
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("device %s: %w", strings.Join(unknown, ", "), ErrNoSuchDevice)
	}

	d := &drop{in: in, sb: sb, res: &DropResult{MetadataBefore: sb.MetadataSM.NrAllocated, Kept: len(devs) - len(gone)}}
	if len(gone) == 0 {
		return d, nil
	}
	d.meta, d.data = slices.Clone(rc.Meta), slices.Clone(rc.Data)
	d.oldSpaceMap = rc.SpaceMap
	for n, sm := range rc.SpaceMap {
		if sm {
			d.meta[n] = 0 // new space maps replace them
		}
	}
	rel := &releaser{in: in, meta: d.meta, data: d.data}

	// What each device frees on its own: release it, note, undo.
	dropIDs := slices.Sorted(maps.Keys(gone))
	for _, id := range dropIDs {
		dv := byID[id]
		dd := DroppedDevice{ID: id, Mappings: dv.Details.MappedBlocks}
		if dv.HasRoot {
			rel.journal = true
			if err := rel.release(dv.Root, 0, 8, true); err != nil {
				return nil, err
			}
			dd.ExclusiveBlocks = rel.freedData
			// A device that took a reference from a block that stays
			// (a node or a data block) shared it.
			dd.Shared = rel.kept
			rel.undo()
		}
		d.res.Devices = append(d.res.Devices, dd)
	}
	// Now for good, all of them.
	rel.journal = false
	for _, id := range dropIDs {
		if dv := byID[id]; dv.HasRoot {
			if err := rel.release(dv.Root, 0, 8, true); err != nil {
				return nil, err
			}
		}
	}
	d.res.DataBlocksFreed = rel.freedData
	// The old top level and details tree go; the kept devices' roots keep
	// the reference the new top level gives them instead.
	if err := rel.release(sb.MappingRoot, 0, 8, false); err != nil {
		return nil, err
	}
	if err := rel.release(sb.DetailsRoot, 0, thin.DetailsSize, false); err != nil {
		return nil, err
	}
	if err := d.buildTrees(devs, gone, rc.Meta); err != nil {
		return nil, err
	}
	return d, nil
}

// buildTrees builds the top level and the details tree of the kept
// devices in blocks free in the input (free[n] == 0), keeping them in
// memory until Write.
func (d *drop) buildTrees(devs []thin.Device, gone map[thin.DevID]bool, free []uint32) error {
	d.nodes = map[block.Nr][]byte{}
	next := block.Nr(1)
	alloc := allocFunc(func() (block.Nr, error) {
		for ; int(next) < len(free); next++ {
			if free[next] == 0 {
				at := next
				next++
				d.meta[at] = 1 // each new node has one parent, or the superblock
				return at, nil
			}
		}
		return 0, fmt.Errorf("%w: no free metadata block left for the new top-level and details nodes; the metadata device is full", restore.ErrNoSpace)
	})
	sink := sinkFunc(func(at block.Nr, b []byte) error {
		d.nodes[at] = slices.Clone(b)
		return nil
	})
	top := btree.NewBuilder(btree.Config{ValueSize: 8, Alloc: alloc, Sink: sink})
	details := btree.NewBuilder(btree.Config{ValueSize: thin.DetailsSize, Alloc: alloc, Sink: sink})
	val := make([]byte, thin.DetailsSize)
	for _, dv := range devs { // by id
		if gone[dv.ID] {
			continue
		}
		if dv.HasRoot {
			if err := top.AddU64(uint64(dv.ID), uint64(dv.Root)); err != nil {
				return err
			}
		}
		dv.Details.Put(val)
		if err := details.Add(uint64(dv.ID), val); err != nil {
			return err
		}
	}
	mr, err := top.Finish()
	if err != nil {
		return err
	}
	dr, err := details.Finish()
	if err != nil {
		return err
	}
	d.mappingRoot, d.detailsRoot = mr.Block, dr.Block
	return nil
}

type allocFunc func() (block.Nr, error)

func (f allocFunc) Alloc() (block.Nr, error) { return f() }

type sinkFunc func(at block.Nr, b []byte) error

func (f sinkFunc) WriteNode(at block.Nr, b []byte) error { return f(at, b) }

// Write writes the metadata without the dropped devices to out, which
// must hold size bytes and read as zeros where nothing is written: block
// 0 as zeros first, every block still in use copied to its place, the new
// nodes and space maps, and the superblock last between two syncs.
func (d *drop) Write(ctx context.Context, out Output, size int64) error {
	if _, err := out.WriteAt(make([]byte, block.Size), 0); err != nil {
		return fmt.Errorf("clearing the output's superblock: %w", err)
	}
	nrMeta := uint64(len(d.meta))
	buf := make([]byte, copyRun*block.Size)
	copied := func(n uint64) bool { return n != 0 && d.meta[n] != 0 && d.nodes[block.Nr(n)] == nil }
	for n := uint64(1); n < nrMeta; {
		if !copied(n) {
			n++
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		end := n + 1
		for end < nrMeta && end-n < copyRun && copied(end) {
			end++
		}
		b := buf[:(end-n)*block.Size]
		if err := d.in.ReadRaw(b, block.Nr(n)); err != nil {
			return err
		}
		if _, err := out.WriteAt(b, int64(n)*block.Size); err != nil {
			return fmt.Errorf("writing blocks %d..%d: %w", n, end-1, err)
		}
		n = end
	}
	for _, at := range slices.Sorted(maps.Keys(d.nodes)) {
		if _, err := out.WriteAt(d.nodes[at], int64(at)*block.Size); err != nil {
			return fmt.Errorf("writing the new node at block %d: %w", at, err)
		}
	}

	meta := restore.NewCounts(nrMeta)
	for n, v := range d.meta {
		if v > 0 {
			meta.Set(uint64(n), v)
		}
	}
	data := restore.NewCounts(d.sb.DataSM.NrBlocks)
	for b, v := range d.data {
		if v > 0 && uint64(b) < data.Len() {
			data.Set(uint64(b), v)
		}
	}
	metaRoot, dataRoot, err := writeSpaceMapsFree(out, meta, data, d.oldSpaceMap)
	if err != nil {
		return err
	}
	sb := d.sb
	sb.MappingRoot, sb.DetailsRoot = d.mappingRoot, d.detailsRoot
	sb.MetadataSM, sb.DataSM = metaRoot, dataRoot
	b := make([]byte, block.Size)
	sb.Encode(b, 0)
	if _, err := out.WriteAt(b, 0); err != nil {
		return fmt.Errorf("writing the superblock: %w", err)
	}
	return syncOut(out)
}

// verify checks what Write wrote, records the verdict and the metadata
// blocks in use, and says whether it checks clean.
func (d *drop) verify(ctx context.Context, out Output, size int64) (bool, error) {
	r := block.NewReader(out, size)
	rep, err := check.Run(ctx, r, check.Options{})
	if err != nil {
		d.res.After = &Verdict{Outcome: check.SuperblockDamaged, Summary: err.Error()}
		return false, nil
	}
	d.res.After = &Verdict{Outcome: rep.Outcome(), Summary: rep.Summary()}
	if sb, err := thin.ReadSuperblock(r, 0); err == nil {
		d.res.MetadataAfter = sb.MetadataSM.NrAllocated
	}
	return d.res.After.Outcome == check.Clean, nil
}

// releaser takes references away as the kernel does when it deletes a
// b-tree (dm_btree_del): a node whose count drops to 0 gives up a
// reference to each child, and a bottom leaf to each data block it maps
// when dataLeaves.
type releaser struct {
	in         *block.Reader
	meta, data []uint32
	bufs       [thin.MaxDepth][]byte
	// freedData counts data blocks whose count dropped to 0; kept is set
	// when a release left a count above 0.
	freedData uint64
	kept      bool
	// journal makes release log every decrement, for undo.
	journal          bool
	metaLog, dataLog []uint64
}

// release takes one reference from node nr, whose leaves hold values of
// vs bytes, at depth below the root it started from.
func (r *releaser) release(nr block.Nr, depth, vs int, dataLeaves bool) error {
	if uint64(nr) >= uint64(len(r.meta)) || r.meta[nr] == 0 {
		return fmt.Errorf("repair: internal error: metadata block %d has no reference left to release", nr)
	}
	r.meta[nr]--
	if r.journal {
		r.metaLog = append(r.metaLog, uint64(nr))
	}
	if r.meta[nr] > 0 {
		r.kept = true
		return nil
	}
	if depth >= thin.MaxDepth {
		return fmt.Errorf("repair: block %d: %w", nr, thin.ErrTooDeep)
	}
	if r.bufs[depth] == nil {
		r.bufs[depth] = make([]byte, block.Size)
	}
	buf := r.bufs[depth]
	if err := r.in.ReadInto(buf, nr, block.Node); err != nil {
		return err
	}
	n, err := btree.ParseNode(buf, nr, vs)
	if err != nil {
		return err
	}
	if n.Internal {
		for i := range n.NrEntries {
			if err := r.release(n.Child(i), depth+1, vs, dataLeaves); err != nil {
				return err
			}
		}
		return nil
	}
	if !dataLeaves {
		return nil
	}
	for i := range n.NrEntries {
		b := uint64(thin.BlockTime(n.U64(i)).Block())
		if b >= uint64(len(r.data)) || r.data[b] == 0 {
			return fmt.Errorf("repair: internal error: data block %d has no reference left to release", b)
		}
		r.data[b]--
		if r.journal {
			r.dataLog = append(r.dataLog, b)
		}
		if r.data[b] == 0 {
			r.freedData++
		} else {
			r.kept = true
		}
	}
	return nil
}

// undo gives back every reference released since the journal was last
// emptied, and forgets what was freed.
func (r *releaser) undo() {
	for _, n := range r.metaLog {
		r.meta[n]++
	}
	for _, b := range r.dataLog {
		r.data[b]++
	}
	r.metaLog, r.dataLog = r.metaLog[:0], r.dataLog[:0]
	r.freedData, r.kept = 0, false
}

// DropFile drops the thin devices ids from the metadata file or device
// o.Input, as DropDevices does, with RepairFile's protocol: an exclusive
// lock on the input, O_EXCL on block devices, the output written to a
// temporary file that is fsynced and checked clean before it is renamed
// over the target, and with o.InPlace a backup of the input first. Killed
// at any moment it leaves the original or the complete result, never a
// mix. o.Options is not used: a drop takes every pool value from the
// superblock. With no ids, or o.DryRun, nothing is written.
//
// The DropResult is returned whenever the input could be analysed, also
// with an error (for example ErrNotClean).
func DropFile(ctx context.Context, o FileOptions, ids []thin.DevID) (*DropResult, error) {
	o, in, size, unlock, err := openFile(o)
	if err != nil {
		return nil, err
	}
	defer unlock()
	d, err := planDrop(ctx, block.NewReader(in, size), ids)
	if err != nil {
		return nil, err
	}
	res := d.res
	res.Input = o.Input
	if len(res.Devices) == 0 {
		return res, nil
	}
	res.DryRun = o.DryRun
	res.Output, res.Backup = o.targets()
	return res, install(ctx, o, in, size, d)
}
