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
	"github.com/docker-devmapper/docker-devmapper/metadata/scan"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// Options are the pool values to use where the input has lost them. Each
// is used only when the superblock cannot give it; a value the superblock
// does give wins, and the result says the option was ignored.
type Options struct {
	TransactionID *uint64
	DataBlockSize *uint32
	NrDataBlocks  *uint64
	// ValuesFrom names a file to take the values above from where neither
	// the superblock nor an option gives them: a dump (thin_dump XML of
	// 0.9.0 or 1.x, or this tool's dump in any format) or metadata whose
	// superblock is readable (a backup, or a copy from before the
	// damage). Its time is a floor for the pool time. A file older than
	// the damage may hold a lower transaction id than the pool reached:
	// where a device's details show a higher one, that is used, and the
	// result says so. An unreadable file is an error whether or not its
	// values are needed.
	ValuesFrom string
	// TransactionIDFrom, DataBlockSizeFrom and NrDataBlocksFrom say, for
	// the report, where the values above came from when not from the
	// command line (docker's records, say); "" names the flag.
	TransactionIDFrom, DataBlockSizeFrom, NrDataBlocksFrom string
}

// source names where the value an option flag stands for came from.
func (o Options) source(flag string) string {
	from := map[string]string{"--transaction-id": o.TransactionIDFrom, "--data-block-size": o.DataBlockSizeFrom, "--nr-data-blocks": o.NrDataBlocksFrom}[flag]
	if from != "" {
		return from
	}
	return flag
}

// Output is where repaired metadata goes. It is read back: to check the
// result, and by the Restorer to unshare a leaf. If it has a Sync method,
// it is called before the superblock is written and after.
type Output interface {
	io.WriterAt
	io.ReaderAt
}

// ErrCannotRepair is the cause when a repair was asked to write but the
// damage needs what this version cannot do; the Result says why.
var ErrCannotRepair = errors.New("cannot repair this damage yet")

// devPlan is what the analysis learnt about one device.
type devPlan struct {
	id         thin.DevID
	details    thin.Details
	hasDetails bool
	root       block.Nr
	hasRoot    bool
	kept       uint64
	minTime    uint32
	maxTime    uint32 // newest mapping time of the tree walked
	anyMapping bool
	// implausible: the tree maps past the data device or later than the
	// pool time, as no device tree does (a root pointing at another kind
	// of node reads that way).
	implausible bool
}

// Plan is an analysed input: what is wrong and how a repair fixes it. It
// keeps the input's reader and the recount of check.Run for Write.
type Plan struct {
	in   *block.Reader
	sb   thin.Superblock
	rep  *check.Report
	res  *Result
	devs []devPlan
	// Flat per-metadata-block state, indexed by block.Nr (the walk reads
	// only blocks inside the input).
	leaves []uint32 // bottom leaves: how many devices reach each
	nodes  []bool   // every intact node of the live trees
	// detailsAt places each device's details value: leaf and slot.
	detailsAt map[thin.DevID]slot
	// patches are details values the space-map repair rewrites in place.
	patches map[block.Nr][]patch
	// lostRoots: the walk found a root or top-level node unreadable.
	lostRoots bool
	// scanned: the mapping tree's root comes from a scan; noDetails: no
	// details tree was found.
	scanned, noDetails bool
	// timeFromTrees: the pool time is lost; maxTime, the newest time the
	// trees hold, is used.
	timeFromTrees bool
	maxTime       uint32
	// timeFloor is a pool time the values file gives (timeFloorFrom
	// names it); the pool time is at least this.
	timeFloor     uint32
	timeFloorFrom string
	// tidGiven: the superblock is lost and the transaction id comes from
	// an option or the values file.
	tidGiven bool
	// dropSnap: the held metadata snapshot is unreadable and dropped.
	dropSnap bool
	// snap is the held metadata snapshot a rebuild keeps (planSnapshot).
	snap *heldSnapshot
	// sres is the scan of every block, once one was needed; fillWalker
	// reads older trees while another walk is under way.
	sres       *scan.Result
	fillWalker *walker
	// baseNotes is how many notes came before the trees were walked.
	baseNotes int
	// mapped holds each device's mapped_blocks as its details say.
	mapped map[thin.DevID]uint64
	// rootFix replaces the roots of devices whose top-level entry points
	// at the wrong tree; wantCount is what their details say.
	rootFix   map[thin.DevID]block.Nr
	wantCount map[thin.DevID]uint64
	// devRoots, when set, gives each device's root instead of the top
	// level of the mapping tree.
	devRoots map[thin.DevID]block.Nr
	// nrData bounds the data blocks a mapping may name. When the size
	// does not come from the superblock (nrGiven), it is what the
	// metadata can count while the trees are walked, and settleNrData
	// then makes it the size given, or the smallest that holds every
	// mapping kept (maxData, of device maxDataDev, when anyData).
	nrData     uint64
	nrGiven    bool
	maxData    uint64
	maxDataDev thin.DevID
	anyData    bool
}

// Result is the result so far: after Analyze, what a repair would do;
// after Write and Verify, what it did.
func (p *Plan) Result() *Result { return p.res }

// Analyze reads the metadata behind in (never writing) and decides what a
// repair must do. The error means the analysis could not be done: I/O,
// input that is not thin metadata (errors.Is check.ErrNotMetadata), or a
// cancelled context; damage of any kind is described in the Result.
func Analyze(ctx context.Context, in *block.Reader, opts Options) (*Plan, error) {
	var fv *fileValues
	if opts.ValuesFrom != "" {
		var err error
		if fv, err = readValuesFile(opts.ValuesFrom); err != nil {
			return nil, err
		}
	}
	p := &Plan{in: in, res: &Result{}, leaves: make([]uint32, in.Len()), nodes: make([]bool, in.Len())}
	res := p.res
	sb, err := thin.ReadSuperblock(in, 0)
	if err != nil && !errors.Is(err, block.ErrCorrupt) {
		return nil, err
	}
	rep, cerr := check.Run(ctx, in, check.Options{KeepCounts: true})
	if cerr != nil {
		return nil, cerr
	}
	p.rep = rep
	// The check's summary ends by suggesting a repair, which is under way.
	res.Before = Verdict{Outcome: rep.Outcome(), Summary: strings.TrimSuffix(rep.Summary(), ": run 'docker devmapper repair'")}
	if err != nil {
		if !p.lostSuperblock(opts, fv, err) {
			return p, nil
		}
		p.baseNotes = len(res.Notes)
		return p, p.fromScan(ctx)
	}
	p.sb = sb
	res.MetadataBefore = sb.MetadataSM.NrAllocated
	if !p.poolValues(opts, fv) {
		return p, nil
	}
	p.baseNotes = len(res.Notes)
	if err := p.walkTrees(); err != nil {
		return nil, err
	}
	if p.lostRoots {
		return p, p.fromScan(ctx)
	}
	if p.anyLost() || p.anyMiscounted() {
		// Older trees may still hold what damaged nodes lost, and a
		// device whose tree disagrees with its details may have a root
		// pointing at the wrong node: scan for trees and walk again.
		sres, err := p.scan(ctx)
		if err != nil {
			return nil, err
		}
		p.rightRoots(sres)
		p.reset()
		if err := p.walkTrees(); err != nil {
			return nil, err
		}
		for _, id := range slices.Sorted(maps.Keys(p.rootFix)) {
			res.note("device %d: its root did not lead to the %d mappings its details count; the newest tree of the device that holds exactly those is used instead (block %d)",
				id, p.wantCount[id], p.rootFix[id])
		}
	}
	p.decide()
	return p, p.planSnapshot(ctx)
}

// anyMiscounted says whether an intact device tree disagrees with its
// device's mapped_blocks.
func (p *Plan) anyMiscounted() bool {
	for _, d := range p.res.Devices {
		if d.MappedBlocksWas != nil && len(d.LostRanges) == 0 {
			return true
		}
	}
	return false
}

// rightRoots looks, for each device whose intact tree disagrees with its
// details, for a consistent tree that belongs to it (see ownedBy) and
// whose mappings are exactly as many as the details say:
// the kernel updates both in one transaction, so that tree is the
// device's and the root pointing elsewhere is the damage. The newest such
// tree wins; with none, the tree is trusted and the count corrected.
func (p *Plan) rightRoots(sres *scan.Result) {
	for i, d := range p.res.Devices {
		if d.MappedBlocksWas == nil || len(d.LostRanges) > 0 {
			continue
		}
		want, cur := *d.MappedBlocksWas, p.devs[i].root
		var best *scan.DeviceTree
		for j := range sres.Devices {
			t := &sres.Devices[j]
			// Never an older state than a plausible tree found: when the
			// details are the damaged part, an older tree of the device
			// (the held snapshot's, say) may hold as many mappings.
			dp := p.devs[i]
			if t.Consistent() && t.Root != cur && t.Mappings == want && (dp.implausible || t.Age >= dp.maxTime) &&
				p.ownedBy(*t, d.ID) && (best == nil || t.Age > best.Age) {
				best = t
			}
		}
		if best != nil {
			if p.rootFix == nil {
				p.rootFix, p.wantCount = map[thin.DevID]block.Nr{}, map[thin.DevID]uint64{}
			}
			p.rootFix[d.ID], p.wantCount[d.ID] = best.Root, want
		}
	}
}

// scan reads every block for tree roots, once per plan.
func (p *Plan) scan(ctx context.Context) (*scan.Result, error) {
	if p.sres != nil {
		return p.sres, nil
	}
	// The pool time bounds plausible block_times only when the superblock
	// gave it.
	sres, err := scan.Run(ctx, p.in, scan.Options{NrDataBlocks: p.nrData, Time: p.sb.Time, HasTime: !p.timeFromTrees})
	if err != nil {
		return nil, err
	}
	p.sres = sres
	return sres, nil
}

// reset forgets what a walk of the trees found, to walk them again.
func (p *Plan) reset() {
	res := p.res
	res.Devices, p.devs, res.Notes = nil, nil, res.Notes[:p.baseNotes]
	p.maxData, p.maxDataDev, p.anyData = 0, 0, false
	res.Conflicts, res.ConflictsTotal = nil, 0
	clear(p.leaves)
	clear(p.nodes)
}

// anyLost says whether a device lost mappings with damaged nodes.
func (p *Plan) anyLost() bool {
	for _, d := range p.res.Devices {
		if len(d.LostRanges) > 0 {
			return true
		}
	}
	return false
}

// fromScan finds the lost roots with a scan of every block, walks the
// trees found and plans a rebuild from them.
func (p *Plan) fromScan(ctx context.Context) error {
	res := p.res
	// The pool time bounds plausible block_times only when the superblock
	// gave it.
	sres, err := p.scan(ctx)
	if err != nil {
		return err
	}
	roots := sres.Roots
	lost := res.Reason
	p.reset()
	if roots.MappingFrom == scan.None && roots.DetailsFrom == scan.None {
		best, ok := sres.Best()
		top, topOK := bestTopLevel(sres)
		switch {
		case ok:
			roots = scan.Roots{Mapping: best.Mapping.Root, MappingFrom: scan.Scanned, Details: best.Details.Root, DetailsFrom: scan.Scanned, Stale: best.Stale}
		case topOK:
			// No details tree survives: the top level names the devices,
			// and each gets details rebuilt from its mappings.
			roots = scan.Roots{Mapping: top.Root, MappingFrom: scan.Scanned}
			res.MayBeOlder = true
			res.note("no details tree survives: the newest consistent top level found (block %d, devices %v, newest time %d) names the devices; it may be older than the last commit and name devices deleted since",
				top.Root, top.IDs[:min(len(top.IDs), 8)], top.Age)
		default:
			res.Action = Cannot
			res.Reason = "the roots are lost and a scan of every block found no usable trees"
			if n, m := deviceTrees(sres); n > 0 {
				res.Reason = fmt.Sprintf("the roots are lost and a scan of every block found no top level or details tree, only %d device trees (%d mappings): without either their thin ids are unknown, and repair does not invent them", n, m)
			}
			return nil
		}
	}
	if roots.MappingFrom == scan.None {
		// No top level fits the details: give each device the newest
		// device tree that a surviving top-level leaf names it by, or
		// that no leaf names but whose mappings only this device's
		// mapped_blocks matches. The scan lists trees best first, so a
		// later tree wins only when strictly newer.
		p.devRoots = map[thin.DevID]block.Nr{}
		age := map[thin.DevID]uint32{}
		take := func(id thin.DevID, d scan.DeviceTree) {
			if _, ok := p.devRoots[id]; !ok || d.Age > age[id] {
				p.devRoots[id], age[id] = d.Root, d.Age
			}
		}
		for _, d := range sres.Devices {
			if !d.Consistent() {
				continue
			}
			for _, id := range d.Names {
				take(id, d)
			}
			if len(d.Names) == 0 && len(d.Matches) == 1 {
				take(d.Matches[0], d)
			}
		}
		res.MayBeOlder = true
		res.note("no top level of the mapping tree fits the device details; each device gets the newest consistent device tree that a surviving top-level leaf names it by or whose mappings only its mapped_blocks matches, which may be older than its last write")
	}
	p.sb.MappingRoot, p.sb.DetailsRoot = roots.Mapping, roots.Details
	p.noDetails = roots.DetailsFrom == scan.None
	p.scanned = roots.MappingFrom != scan.Superblock
	p.lostRoots = false
	if p.devRoots == nil {
		res.note("roots found by a scan of every block: mapping tree at block %d (%v), details tree %s",
			roots.Mapping, roots.MappingFrom, rootSource(roots.Details, roots.DetailsFrom))
	}
	if roots.Stale != 0 {
		res.MayBeOlder = true
		res.note("the state found may be older than the newest the metadata held: %v", roots.Stale)
	}
	if err := p.walkTrees(); err != nil {
		return err
	}
	if p.lostRoots {
		res.Action = Cannot
		res.Reason = "the trees a scan found are damaged at their top too: " + res.Reason
		return nil
	}
	p.claimTrees()
	p.decide()
	res.Action = Rebuild
	res.Reason = "rebuilt from the roots a scan found, because " + lost
	// The check could not count through the lost roots: its space-map
	// figures say nothing. Both space maps are new anyway.
	res.DataSM, res.MetadataSM = SpaceMapFix{}, SpaceMapFix{}
	return p.planSnapshot(ctx)
}

// bestTopLevel is the first consistent top level a scan ranked: the
// newest.
func bestTopLevel(sres *scan.Result) (scan.Tree, bool) {
	for _, t := range sres.Mappings {
		if t.Consistent() && len(t.IDs) > 0 {
			return t, true
		}
	}
	return scan.Tree{}, false
}

// deviceTrees counts the consistent device trees with mappings a scan
// found, and their mappings.
func deviceTrees(sres *scan.Result) (n int, mappings uint64) {
	for _, d := range sres.Devices {
		if d.Consistent() && d.Mappings > 0 {
			n++
			mappings += d.Mappings
		}
	}
	return n, mappings
}

func rootSource(at block.Nr, from scan.Source) string {
	if from == scan.None {
		return "not found (every device's details are rebuilt from its mappings)"
	}
	return fmt.Sprintf("at block %d (%v)", at, from)
}

// lostSuperblock records that the superblock is unreadable: the roots of
// every tree are lost, which needs a scan, and the pool values come from
// opts, else from the values file fv (nil when none was given).
func (p *Plan) lostSuperblock(opts Options, fv *fileValues, err error) bool {
	res := p.res
	res.Action = Cannot
	res.Reason = fmt.Sprintf("the superblock is unreadable (%v), so the roots of every tree are lost", err)
	var file fileValues
	if fv != nil {
		file = *fv
	}
	var missing []string
	take := func(opt *uint64, flag string, v uint64, inFile bool) Value {
		switch {
		case opt != nil:
			return Value{Value: *opt, Source: opts.source(flag)}
		case inFile:
			return Value{Value: v, Source: file.source()}
		}
		missing = append(missing, flag)
		return Value{Source: "unknown: give " + flag}
	}
	var dbs *uint64
	if opts.DataBlockSize != nil {
		v := uint64(*opts.DataBlockSize)
		dbs = &v
	}
	res.Pool.TransactionID = take(opts.TransactionID, "--transaction-id", file.transactionID, fv != nil)
	res.Pool.DataBlockSize = take(dbs, "--data-block-size", uint64(file.dataBlockSize), fv != nil)
	res.Pool.NrDataBlocks = take(opts.NrDataBlocks, "--nr-data-blocks", file.nrData, fv != nil && file.nrData != 0)
	res.Pool.Time = Value{Source: "the newest time in the trees found"}
	if fv != nil {
		res.note("%s is %s: transaction id %d, data block size %d sectors, %d data blocks, time %d; a value the options do not give is taken from it, as the pool had it when the file was made",
			fv.path, fv.kind, fv.transactionID, fv.dataBlockSize, fv.nrData, fv.time)
	}
	switch {
	case len(missing) > 0 && fv != nil:
		res.Reason += fmt.Sprintf("; %s gives no nr_data_blocks (a dump of a held metadata snapshot has none): give %s",
			fv.path, strings.Join(missing, ", "))
		return false
	case len(missing) > 0:
		res.Reason += fmt.Sprintf("; repair does not guess the pool's values: give %s, or --values-from with a dump or a metadata backup made before the damage (docker deletes its thin devices when the transaction id is lower than its records)",
			strings.Join(missing, ", "))
		return false
	}
	if d := res.Pool.DataBlockSize.Value; !validDataBlockSize(d) {
		res.Reason += fmt.Sprintf("; the data block size %d (%s) is out of range (128 to 2097152 sectors, a multiple of 128)", d, res.Pool.DataBlockSize.Source)
		return false
	}
	if !p.givenNrData() {
		return false
	}
	p.sb = thin.Superblock{Magic: thin.Magic, Version: thin.Version, TransactionID: res.Pool.TransactionID.Value,
		DataBlockSize: uint32(res.Pool.DataBlockSize.Value), MetadataBlockSize: thin.MetadataBlockSectors}
	p.timeFromTrees, p.tidGiven = true, true
	if fv != nil {
		p.timeFloor, p.timeFloorFrom = fv.time, fv.source()
	}
	return true
}

// checkTransactionID compares a transaction id that does not come from
// the superblock with the device details just read. The kernel stamps a
// new device's details with the pool's transaction id of the time, and
// the tools that set it (docker, LVM) only raise it, so the pool's is at
// least the highest any device's details hold. Docker forgets the thin
// devices it recorded at a transaction later than the pool's: a value
// from the values file that is lower is raised, loudly; one an option
// gives is the user's word and kept, as loudly.
func (p *Plan) checkTransactionID(details map[thin.DevID]thin.Details) {
	var hi uint64
	var dev thin.DevID
	for _, id := range slices.Sorted(maps.Keys(details)) {
		if t := details[id].TransactionID; t > hi {
			hi, dev = t, id
		}
	}
	tid := &p.res.Pool.TransactionID
	if hi <= tid.Value {
		return
	}
	if tid.Source == "--transaction-id" {
		p.res.note("--transaction-id %d is lower than transaction %d of device %d's details: the pool had reached %d at least; kept as given, but docker forgets thin devices it recorded at a later transaction than the pool's",
			tid.Value, hi, dev, hi)
		return
	}
	p.res.note("transaction id raised from %d to %d: %s is older than the metadata, whose device %d was created at transaction %d; if docker's records name a later one, give it with --transaction-id",
		tid.Value, hi, strings.TrimPrefix(tid.Source, "--values-from "), dev, hi)
	*tid = Value{Value: hi, Source: fmt.Sprintf("device %d's details (%s gave %d)", dev, tid.Source, tid.Value)}
	p.sb.TransactionID = hi
}

// poolValues takes the pool values from the superblock, and from opts or
// else the values file fv where the superblock's are unusable. It
// returns false when a value is missing.
func (p *Plan) poolValues(opts Options, fv *fileValues) bool {
	sb, res := p.sb, p.res
	super := func(v uint64) Value { return Value{Value: v, Source: "superblock"} }
	res.Pool = Pool{
		TransactionID: super(sb.TransactionID),
		Time:          super(uint64(sb.Time)),
		DataBlockSize: super(uint64(sb.DataBlockSize)),
		NrDataBlocks:  super(sb.DataSM.NrBlocks),
		Flags:         sb.Flags,
	}
	if v := opts.TransactionID; v != nil && *v != sb.TransactionID {
		res.note("--transaction-id %d ignored: the superblock is readable and says %d", *v, sb.TransactionID)
	}
	fileUsed := false
	// Each data bitmap takes a metadata block, so a data space map larger
	// than the metadata device could index is damage, not a pool's size;
	// sizing the rebuilt space maps from it would exhaust memory.
	// A data device of no blocks is no pool: every mapping would be
	// dropped as past its end. Ask rather than lose them all.
	if n, most := sb.DataSM.NrBlocks, uint64(p.in.Len())*spacemap.EntriesPerBitmap; n > most || n == 0 {
		switch {
		case opts.NrDataBlocks != nil:
			res.Pool.NrDataBlocks = Value{Value: *opts.NrDataBlocks, Source: opts.source("--nr-data-blocks")}
		case fv != nil && fv.nrData != 0:
			res.Pool.NrDataBlocks = Value{Value: fv.nrData, Source: fv.source()}
			fileUsed = true
		default:
			res.Action = Cannot
			res.Reason = fmt.Sprintf("the superblock's data space map claims %d blocks, more than %d metadata blocks can count; give the pool's size with --nr-data-blocks", n, p.in.Len())
			if n == 0 {
				res.Reason = "the superblock's data space map claims a data device of 0 blocks; give the pool's size with --nr-data-blocks"
			}
			return false
		}
	} else if v := opts.NrDataBlocks; v != nil && *v != sb.DataSM.NrBlocks {
		res.note("--nr-data-blocks %d ignored: the superblock is readable and says %d", *v, sb.DataSM.NrBlocks)
	}
	if d := sb.DataBlockSize; !validDataBlockSize(uint64(d)) {
		switch {
		case opts.DataBlockSize != nil:
			res.Pool.DataBlockSize = Value{Value: uint64(*opts.DataBlockSize), Source: opts.source("--data-block-size")}
		case fv != nil && validDataBlockSize(uint64(fv.dataBlockSize)):
			res.Pool.DataBlockSize = Value{Value: uint64(fv.dataBlockSize), Source: fv.source()}
			fileUsed = true
		default:
			res.Action = Cannot
			res.Reason = fmt.Sprintf("the superblock's data block size %d sectors is out of range; give the pool's with --data-block-size", d)
			return false
		}
	} else if v := opts.DataBlockSize; v != nil && *v != d {
		res.note("--data-block-size %d ignored: the superblock is readable and says %d", *v, d)
	}
	if fv != nil && !fileUsed {
		res.note("--values-from %s ignored: the superblock is readable and gives every pool value", fv.path)
	}
	p.nrData = res.Pool.NrDataBlocks.Value
	if res.Pool.NrDataBlocks.Source != "superblock" && !p.givenNrData() {
		return false
	}
	if n := sb.MetadataSnap; n != 0 {
		if _, err := thin.ReadSuperblock(p.in, n); err != nil {
			p.dropSnap = true
			res.note("the held metadata snapshot at block %d is unreadable (%v): dropped (reserve a new one if needed)", n, err)
		}
	}
	return true
}

// dataCapacity is how many data blocks a space map in this metadata can
// count: each data bitmap takes a metadata block.
func (p *Plan) dataCapacity() uint64 {
	return min(uint64(p.in.Len())*spacemap.EntriesPerBitmap, thin.MaxDataBlocks)
}

// givenNrData prepares the walk for a data device size that an option or
// the values file gave: one larger than the metadata can count is
// refused; otherwise the trees are walked bounded only by what the
// metadata can count, and settleNrData decides.
func (p *Plan) givenNrData() bool {
	res := p.res
	v := res.Pool.NrDataBlocks
	if most := p.dataCapacity(); v.Value > most {
		res.Action = Cannot
		res.Reason = fmt.Sprintf("%d data blocks (%s) are more than %d metadata blocks can count (at most %d): give the data device's size in blocks",
			v.Value, v.Source, p.in.Len(), most)
		return false
	}
	p.nrGiven, p.nrData = true, p.dataCapacity()
	return true
}

// settleNrData fixes the size of the data device once the trees are
// walked. A size from the superblock stands: mappings past it were
// dropped. A size given as an option or by the values file is raised to
// the smallest that holds every mapping kept: the kernel never maps past
// the data device and never lets a pool shrink, so a size the mappings
// pass is too small, and dropping them would lose data. The result says
// so loudly; a pool so sized will not activate on a smaller data device.
func (p *Plan) settleNrData() {
	if !p.nrGiven {
		return
	}
	res := p.res
	given := res.Pool.NrDataBlocks
	p.nrData, p.sb.DataSM.NrBlocks = given.Value, given.Value
	if !p.anyData || p.maxData < given.Value {
		return
	}
	need := p.maxData + 1
	res.note("nr_data_blocks raised from %d (%s) to %d: device %d maps data block %d, and the kernel never maps past the data device nor lets a pool shrink, so the size given is too small; dropping those mappings would lose data. If the data device really holds fewer blocks, the pool will not activate: check its size (its sectors divided by the data block size)",
		given.Value, given.Source, need, p.maxDataDev, p.maxData)
	res.Pool.NrDataBlocks = Value{Value: need, Source: fmt.Sprintf("the highest mapped data block + 1 (%s gave %d, too few)", given.Source, given.Value)}
	p.nrData = need
	p.sb.DataSM.NrBlocks = need
}

// validDataBlockSize says whether d sectors is a data block size the
// kernel takes.
func validDataBlockSize(d uint64) bool {
	return d >= thin.MinDataBlockSize && d <= thin.MaxDataBlockSize && d%thin.MinDataBlockSize == 0
}

// walkTrees reads the details tree, the top level of the mapping tree and
// every device's tree, and records what each device keeps and loses.
func (p *Plan) walkTrees() error {
	res, w := p.res, newWalker(p.in)
	w.nodes = p.nodes
	details := map[thin.DevID]thin.Details{}
	p.detailsAt = map[thin.DevID]slot{}
	p.mapped = map[thin.DevID]uint64{}
	var lostDetails []damage
	walkDetails := w.walk
	if p.noDetails {
		walkDetails = func(block.Nr, int, func(block.Nr, btree.Node) error, func(damage)) error { return nil }
	}
	err := walkDetails(p.sb.DetailsRoot, thin.DetailsSize, func(at block.Nr, n btree.Node) error {
		for i := range n.NrEntries {
			if k := n.Key(i); k <= thin.MaxDevID {
				d := thin.ParseDetails(n.Value(i))
				details[thin.DevID(k)] = d
				p.mapped[thin.DevID(k)] = d.MappedBlocks
				p.detailsAt[thin.DevID(k)] = slot{at, i}
				p.maxTime = max(p.maxTime, d.CreationTime, d.SnapshottedTime)
			}
		}
		return nil
	}, func(d damage) { lostDetails = append(lostDetails, d) })
	if err != nil {
		return err
	}
	if p.tidGiven {
		p.checkTransactionID(details)
	}
	roots := map[thin.DevID]block.Nr{}
	var lostTop []damage
	walkTop := w.walk
	if p.devRoots != nil {
		// Only the devices the details tree lists: stale top-level
		// leaves also name deleted devices.
		for id, root := range p.devRoots {
			if _, ok := details[id]; ok {
				roots[id] = root
			}
		}
		walkTop = func(block.Nr, int, func(block.Nr, btree.Node) error, func(damage)) error { return nil }
	}
	err = walkTop(p.sb.MappingRoot, 8, func(at block.Nr, n btree.Node) error {
		for i := range n.NrEntries {
			k, root := n.Key(i), n.Child(i)
			if root >= p.in.Len() || root == 0 {
				// Not a block number: this leaf is no top level (a
				// device's leaf holds block_times), or is damaged.
				lostTop = append(lostTop, damage{Node: at, Keys: thin.KeyRange{First: k, Last: k},
					Err: fmt.Errorf("%w: device %d's root %d is not a metadata block", block.ErrCorrupt, k, root)})
				return nil
			}
			if k <= thin.MaxDevID {
				roots[thin.DevID(k)] = root
			}
		}
		return nil
	}, func(d damage) { lostTop = append(lostTop, d) })
	if err != nil {
		return err
	}
	for id, root := range p.rootFix {
		roots[id] = root
	}
	switch {
	case len(lostTop) > 0:
		p.lostRoots = true
		res.Reason = fmt.Sprintf("node %d of the mapping tree's top level is unreadable (%v), so the roots of devices %v are lost",
			lostTop[0].Node, lostTop[0].Err, lostTop[0].Keys)
		return nil
	case len(lostDetails) > 0 && lostDetails[0].Node == p.sb.DetailsRoot && !p.noDetails:
		p.lostRoots = true
		res.Reason = fmt.Sprintf("the root of the device details tree, node %d, is unreadable (%v)",
			p.sb.DetailsRoot, lostDetails[0].Err)
		return nil
	}
	for _, d := range lostDetails {
		res.note("device details of devices %v lost with node %d (%v)", d.Keys, d.Node, d.Err)
	}
	if len(lostDetails) == 0 && p.devRoots == nil && !p.noDetails && disjoint(details, roots) {
		// Two intact trees that share no device are not one state: a
		// root points at the wrong node. Let a scan find the trees.
		p.lostRoots = true
		res.Reason = fmt.Sprintf("the details tree (devices %v) and the mapping tree's top level (devices %v) share no device, so a root points at the wrong node",
			idList(details), idList(roots))
		return nil
	}

	if p.timeFromTrees {
		// Walk the device trees once first: rebuilt details take the
		// pool time as their snapshot time.
		for _, root := range roots {
			if err := w.walk(root, 8, func(_ block.Nr, n btree.Node) error {
				for i := range n.NrEntries {
					p.maxTime = max(p.maxTime, thin.BlockTime(n.U64(i)).Time())
				}
				return nil
			}, func(damage) {}); err != nil {
				return err
			}
		}
		p.sb.Time = max(p.maxTime, p.timeFloor)
		res.Pool.Time.Value = uint64(p.sb.Time)
		if p.timeFloor > p.maxTime {
			res.Pool.Time.Source = p.timeFloorFrom + " (later than every time in the trees found)"
		}
	}
	ids := slices.Sorted(maps.Keys(details))
	for id := range roots {
		if _, ok := details[id]; !ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		dp := devPlan{id: id}
		dp.details, dp.hasDetails = details[id]
		dp.root, dp.hasRoot = roots[id]
		_, fixed := p.rootFix[id]
		dev := Device{ID: id, RecoveredByScan: (p.scanned || fixed) && dp.hasRoot}
		if dp.hasRoot {
			if err := p.walkDevice(w, &dp, &dev); err != nil {
				return err
			}
		}
		switch {
		case !dp.hasRoot:
			dev.NoMappingTree = true
			if dp.details.MappedBlocks > 0 {
				dev.Lost = dp.details.MappedBlocks
			}
			dp.details.MappedBlocks = 0
		case !dp.hasDetails:
			dev.DetailsRebuilt = true
			dp.details = thin.Details{
				TransactionID:   p.sb.TransactionID,
				CreationTime:    dp.minTime,
				SnapshottedTime: p.sb.Time,
			}
			if len(dev.LostRanges) > 0 {
				dev.LostUnknown = true
			}
		default:
			if dp.details.MappedBlocks > dp.kept {
				dev.Lost = dp.details.MappedBlocks - dp.kept
			} else if len(dev.LostRanges) > 0 && dev.Refilled == 0 {
				// The details were wrong too: how many were lost is
				// unknown.
				dev.LostUnknown = true
			}
		}
		if dp.hasDetails && dp.hasRoot && dp.details.MappedBlocks != dp.kept {
			was := dp.details.MappedBlocks
			dev.MappedBlocksWas = &was
		}
		if dp.hasRoot {
			dp.details.MappedBlocks = dp.kept
		}
		dev.Kept = dp.kept
		dev.Details = dp.details
		if dev.DetailsRebuilt {
			d := dp.details
			dev.Rebuilt = &RebuiltDetails{MappedBlocks: d.MappedBlocks, TransactionID: d.TransactionID, CreationTime: d.CreationTime, SnapTime: d.SnapshottedTime}
		}
		p.devs = append(p.devs, dp)
		res.Devices = append(res.Devices, dev)
	}
	return nil
}

// walkDevice counts what device dp's tree keeps, drops and loses, and
// which leaves it reaches.
func (p *Plan) walkDevice(w *walker, dp *devPlan, dev *Device) error {
	return w.walk(dp.root, 8, func(at block.Nr, n btree.Node) error {
		p.leaves[at]++
		for i := range n.NrEntries {
			bt := thin.BlockTime(n.U64(i))
			if bt.Time() > p.sb.Time && !p.timeFromTrees {
				dp.implausible = true
			}
			if uint64(bt.Block()) >= p.nrData {
				dp.implausible = true
				dev.Dropped++
				msg := fmt.Sprintf("data block past the end of the data device (%d blocks): mapping dropped", p.nrData)
				if p.nrGiven {
					msg = fmt.Sprintf("data block past what the metadata can count (%d blocks): mapping dropped", p.nrData)
				}
				p.res.conflict(Conflict{Dev: dp.id, VBlock: n.Key(i), Data: uint64(bt.Block()), Message: msg})
				continue
			}
			p.dataSeen(dp.id, uint64(bt.Block()))
			p.maxTime = max(p.maxTime, bt.Time())
			dp.maxTime = max(dp.maxTime, bt.Time())
			if !dp.anyMapping || bt.Time() < dp.minTime {
				dp.minTime = bt.Time()
			}
			dp.anyMapping = true
			dp.kept++
		}
		return nil
	}, func(d damage) {
		line := fmt.Sprintf("virtual blocks %v with node %d: %v", d.Keys, d.Node, d.Err)
		if ms, from := p.fill(dp.id, dp.root, d.Keys); len(ms) > 0 {
			for _, m := range ms {
				p.dataSeen(dp.id, uint64(m.Data))
				p.maxTime = max(p.maxTime, m.Time)
				if !dp.anyMapping || m.Time < dp.minTime {
					dp.minTime = m.Time
				}
				dp.anyMapping = true
			}
			dp.kept += uint64(len(ms))
			dev.Refilled += uint64(len(ms))
			line += fmt.Sprintf(" (%d mappings of this range taken from an older tree of the device at block %d)", len(ms), from)
		}
		dev.LostRanges = append(dev.LostRanges, line)
	})
}

// dataSeen records that device id keeps a mapping to data block d.
func (p *Plan) dataSeen(id thin.DevID, d uint64) {
	if !p.anyData || d > p.maxData {
		p.maxData, p.maxDataDev, p.anyData = d, id, true
	}
}

// decide picks the action from the walk and the check report.
func (p *Plan) decide() {
	p.settleNrData()
	res, rep := p.res, p.rep
	var treeTrouble []string
	onlyCount := map[thin.DevID]bool{} // devices whose only fault is mapped_blocks
	for _, d := range res.Devices {
		if d.MappedBlocksWas != nil && len(d.LostRanges) == 0 && d.Dropped == 0 && !d.DetailsRebuilt && !d.NoMappingTree {
			onlyCount[d.ID] = true
			continue
		}
		switch {
		case len(d.LostRanges) > 0:
			treeTrouble = append(treeTrouble, fmt.Sprintf("device %d has damaged nodes", d.ID))
		case d.Dropped > 0:
			treeTrouble = append(treeTrouble, fmt.Sprintf("device %d maps data blocks past the end", d.ID))
		case d.DetailsRebuilt:
			treeTrouble = append(treeTrouble, fmt.Sprintf("device %d has no details", d.ID))
		case d.NoMappingTree:
			treeTrouble = append(treeTrouble, fmt.Sprintf("device %d has no mapping tree", d.ID))
		}
	}
	for _, id := range slices.Sorted(maps.Keys(p.rootFix)) {
		treeTrouble = append(treeTrouble, fmt.Sprintf("device %d's root points at the wrong tree", id))
	}
	for _, f := range rep.Findings {
		if f.Severity == check.Fatal && f.Area == check.AreaDevices && f.Dev != nil && f.Block == nil && onlyCount[thin.DevID(*f.Dev)] {
			continue // fixed in place below
		}
		if f.Severity == check.Fatal && (f.Area == check.AreaMappings || f.Area == check.AreaDevices) {
			treeTrouble = append(treeTrouble, f.String())
		}
		if f.Severity == check.Fatal && f.Block != nil && *f.Block < uint64(len(p.nodes)) && p.nodes[*f.Block] {
			// A tree node the space maps claim too: the recount mixes
			// both uses, so only a rebuild can count it right.
			treeTrouble = append(treeTrouble, f.String())
		}
		if f.Severity != check.Warning && (f.Area == check.AreaDataSM || f.Area == check.AreaMetadataSM) {
			fix := &res.DataSM
			if f.Area == check.AreaMetadataSM {
				fix = &res.MetadataSM
			}
			fix.Damage = append(fix.Damage, f.Message)
		}
	}
	res.DataSM.Wrong, res.DataSM.Leaked, res.DataSM.Mismatches = rep.Data.Wrong, rep.Data.Leaked, rep.Data.Mismatches
	res.MetadataSM.Wrong, res.MetadataSM.Leaked, res.MetadataSM.Mismatches = rep.Metadata.Wrong, rep.Metadata.Leaked, rep.Metadata.Mismatches
	rc := rep.Recount()
	if len(treeTrouble) == 0 && len(onlyCount) > 0 {
		if why := p.planPatches(rc, onlyCount); why != "" {
			treeTrouble = append(treeTrouble, why)
		}
	}
	switch {
	case len(treeTrouble) > 0:
		res.Action = Rebuild
		// The check counted what the damaged trees reach; the rebuilt
		// trees reach something else, so its mismatches say nothing of
		// what the new space maps fix.
		res.DataSM.Wrong, res.DataSM.Leaked, res.DataSM.Mismatches = 0, 0, nil
		res.MetadataSM.Wrong, res.MetadataSM.Leaked, res.MetadataSM.Mismatches = 0, 0, nil
		res.Reason = "the trees need rebuilding: " + treeTrouble[0]
		if len(treeTrouble) > 1 {
			res.Reason += fmt.Sprintf(" (and %d more problems)", len(treeTrouble)-1)
		}
	case rep.Outcome() == check.Clean && len(p.patches) == 0:
		res.Action = Nothing
		res.Reason = "the metadata checks clean"
	case rc == nil || p.treeInSpaceMap(rc):
		res.Action = Rebuild
		res.Reason = "the space maps could not be recounted in place"
	default:
		res.Action = SpaceMaps
		res.Reason = "the trees are intact; both space maps are rebuilt from them"
		if len(p.patches) > 0 {
			res.Reason += ", and wrong mapped_blocks values are corrected where they lie"
		}
		if p.sb.Magic != thin.Magic {
			res.note("bad magic %d replaced by %d", p.sb.Magic, thin.Magic)
		}
	}
}

// disjoint says whether two non-empty device sets share no device.
func disjoint[A, B any](a map[thin.DevID]A, b map[thin.DevID]B) bool {
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	for id := range a {
		if _, ok := b[id]; ok {
			return false
		}
	}
	return true
}

// idList prints the ids of a device set, ascending, at most 8.
func idList[V any](m map[thin.DevID]V) string {
	ids := slices.Sorted(maps.Keys(m))
	s := fmt.Sprint(ids[:min(len(ids), 8)])
	if len(ids) > 8 {
		s = s[:len(s)-1] + fmt.Sprintf(" and %d more]", len(ids)-8)
	}
	return s
}

// treeInSpaceMap says whether a block of the live trees is marked as
// used only by the old space maps.
func (p *Plan) treeInSpaceMap(rc *check.Recount) bool {
	for n, tree := range p.nodes {
		if tree && n < len(rc.SpaceMap) && rc.SpaceMap[n] {
			return true
		}
	}
	return false
}

// slot places a value in a leaf.
type slot struct {
	leaf block.Nr
	i    int
}

// patch is a details value to write into slot i of a leaf.
type patch struct {
	i int
	d thin.Details
}

// planPatches plans to correct mapped_blocks of the devices in ids inside
// their details leaves, which keeps every block in place. A leaf that the
// held metadata snapshot shares (count above 1) is not changed, since the
// snapshot's devices may rightly say otherwise: that needs a rebuild, and
// planPatches says why.
func (p *Plan) planPatches(rc *check.Recount, ids map[thin.DevID]bool) string {
	if rc == nil {
		return "the details need correcting and the metadata could not be recounted"
	}
	p.patches = map[block.Nr][]patch{}
	for _, d := range p.res.Devices {
		if !ids[d.ID] {
			continue
		}
		at := p.detailsAt[d.ID]
		if uint64(at.leaf) >= uint64(len(rc.Meta)) || rc.Meta[at.leaf] != 1 {
			p.patches = nil
			return fmt.Sprintf("device %d has a wrong mapped_blocks in a details leaf the metadata snapshot shares", d.ID)
		}
		p.patches[at.leaf] = append(p.patches[at.leaf], patch{at.i, d.Details})
	}
	return ""
}

// ownedBy says whether a scanned device tree belongs to device id: a
// surviving top-level leaf (live or stale) names it so, or no leaf names
// it and id is the only device whose details' mapped_blocks equal its
// mappings.
func (p *Plan) ownedBy(t scan.DeviceTree, id thin.DevID) bool {
	if len(t.Names) > 0 {
		return slices.Contains(t.Names, id)
	}
	n, ok := p.mapped[id]
	if !ok || n != t.Mappings {
		return false
	}
	for other, m := range p.mapped {
		if other != id && m == n {
			return false
		}
	}
	return true
}
