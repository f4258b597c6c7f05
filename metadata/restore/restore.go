package restore

import (
	"errors"
	"fmt"
	"io"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// Errors a Restorer returns. Those about one device or mapping come
// wrapped in a *DeviceError.
var (
	// ErrOptions: the pool parameters are out of the kernel's range.
	ErrOptions = errors.New("bad pool parameters")
	// ErrTooManyDataBlocks: the data space map alone would not fit the
	// metadata device.
	ErrTooManyDataBlocks = errors.New("nr_data_blocks too large for the metadata device")
	// ErrNoSpace: the metadata does not fit the output.
	ErrNoSpace = errors.New("out of metadata space")
	// ErrState: a call out of sequence (a mapping outside a device, a
	// device inside a def, anything after End).
	ErrState = errors.New("restore: call out of sequence")
	// ErrOrder: mappings out of order or overlapping.
	ErrOrder = errors.New("mappings out of order or overlapping")
	// ErrDataBlock: a mapping points past nr_data_blocks.
	ErrDataBlock = errors.New("data block beyond nr_data_blocks")
	// ErrTime: a mapping's time does not fit 24 bits.
	ErrTime = errors.New("mapping time beyond 24 bits")
	// ErrDeviceID: a device id beyond 24 bits.
	ErrDeviceID = errors.New("device id beyond 24 bits")
	// ErrDuplicateDevice: a device listed twice.
	ErrDuplicateDevice = errors.New("device listed twice")
	// ErrDeviceOrder: devices not in ascending id order.
	ErrDeviceOrder = errors.New("devices not in ascending order")
	// ErrMappedBlocks: a device's mapped_blocks differs from its mappings.
	ErrMappedBlocks = errors.New("mapped_blocks does not match the mappings")
	// ErrDuplicateDef: two defs with one name.
	ErrDuplicateDef = errors.New("def defined twice")
	// ErrUndefinedRef: a ref to a def not (yet) defined.
	ErrUndefinedRef = errors.New("ref to an undefined def")
	// ErrUnknownOrigin: a snapshot of a device not (yet) written.
	ErrUnknownOrigin = errors.New("snapshot of an unknown device")
	// ErrUnknownLeaf: a leaf to share that this Restorer did not write.
	ErrUnknownLeaf = errors.New("not a bottom-level leaf written by this restore")
	// ErrNoReadBack: a shared leaf had to be unshared, which needs the
	// output to be an io.ReaderAt as well.
	ErrNoReadBack = errors.New("output cannot be read back to unshare a leaf")
)

// DeviceError places a problem in a device or def and, for mappings, at a
// virtual block.
type DeviceError struct {
	Dev       thin.DevID // the device, unless Def is set
	Def       string     // the def, when the problem is in one
	VBlock    uint64     // the mapping concerned, if HasVBlock
	HasVBlock bool
	Err       error
}

func (e *DeviceError) Error() string {
	where := fmt.Sprintf("device %d", e.Dev)
	if e.Def != "" {
		where = fmt.Sprintf("def %q", e.Def)
	}
	if e.HasVBlock {
		return fmt.Sprintf("%s, block %d: %v", where, e.VBlock, e.Err)
	}
	return fmt.Sprintf("%s: %v", where, e.Err)
}
func (e *DeviceError) Unwrap() error { return e.Err }

// Options are the pool-wide values of the new metadata.
type Options struct {
	Time          uint32 // pool time
	TransactionID uint64
	Flags         uint32 // superblock flags; bit 0 is NEEDS_CHECK
	Version       uint32 // metadata version; 0 means thin.Version (2)
	DataBlockSize uint32 // sectors: 128..2097152, a multiple of 128
	NrDataBlocks  uint64 // blocks on the data device
}

// tree is the device or def being built.
type tree struct {
	b       *btree.Builder
	dev     thin.DevID
	details thin.Details
	def     string
	isDef   bool
	next    uint64 // lowest virtual block the next mapping may have
	started bool   // next is meaningful
}

// Restorer writes complete dm-thin metadata to an output, fed in document
// order:
//
//	( BeginDef  (Mapping | Run)*  EndDef )*           anywhere between devices
//	( BeginDevice  (Mapping | Run | Ref | RefLeaves)*  EndDevice  |  Snapshot )*
//	End
//
// Devices come in ascending id order and mappings in ascending virtual
// block order. Bottom-level leaves are written as soon as they are full and
// memory holds a few nodes per tree level, the reference counts (a byte
// per data and metadata block, in pieces allocated as touched), and a
// summary per bottom leaf and per def. Nothing in the output is valid until End has written the
// superblock; New zeroes block 0 first, so a restore that fails midway
// leaves metadata that no tool mistakes for a pool.
//
// A Restorer is not safe for concurrent use. The first error it returns
// leaves it unusable.
type Restorer struct {
	opts   Options
	out    *writer
	sync   interface{ Sync() error }
	nrMeta uint64
	meta   *counts
	data   *counts
	alloc  allocator

	top, details *btree.Builder
	cur          *tree
	lastDev      thin.DevID
	anyDev       bool
	defs         map[string][]btree.Leaf
	defLeaves    []btree.Leaf
	known        map[block.Nr]btree.Leaf
	roots        map[thin.DevID]btree.Root // finished devices, for Snapshot
	leaves       []btree.Leaf
	scratch      []byte
	detailsBuf   [thin.DetailsSize]byte
	err          error
	ended        bool
}

// fixedSMBlocks is how many blocks the space maps need whatever the
// contents: bitmaps, the metadata index, the data index and two empty
// overflow trees.
func fixedSMBlocks(nrMeta, nrData uint64) uint64 {
	db := spacemap.BitmapsFor(nrData)
	return spacemap.BitmapsFor(nrMeta) + 1 + db + btree.NodesFor(db, spacemap.IndexEntrySize) + 2
}

// New prepares to write metadata to w, which holds size bytes: that sets
// the number of metadata blocks (capped at spacemap.MaxMetadataBlocks). It
// zeroes block 0 straight away. If w also has a Sync method, End calls it
// before writing the superblock; syncing after End is the caller's job.
// Unsharing a leaf (see RefLeaves) needs w to be an io.ReaderAt too, as
// an *os.File is.
func New(w io.WriterAt, size int64, opts Options) (*Restorer, error) {
	if opts.DataBlockSize < thin.MinDataBlockSize || opts.DataBlockSize > thin.MaxDataBlockSize ||
		opts.DataBlockSize%thin.MinDataBlockSize != 0 {
		return nil, fmt.Errorf("%w: data block size %d sectors", ErrOptions, opts.DataBlockSize)
	}
	if opts.NrDataBlocks > thin.MaxDataBlocks {
		return nil, fmt.Errorf("%w: %d data blocks, at most %d", ErrOptions, opts.NrDataBlocks, uint64(thin.MaxDataBlocks))
	}
	if opts.Version == 0 {
		opts.Version = thin.Version
	}
	nrMeta := uint64(0)
	if size > 0 {
		nrMeta = min(uint64(size)/block.Size, spacemap.MaxMetadataBlocks)
	}
	// The superblock, the two tree roots and the fixed space-map blocks
	// must fit, or nothing will.
	fixed := fixedSMBlocks(nrMeta, opts.NrDataBlocks)
	if fixed+3 > nrMeta {
		if spacemap.BitmapsFor(opts.NrDataBlocks) > nrMeta {
			return nil, fmt.Errorf("%w: %d data blocks need %d bitmap blocks, the metadata has %d blocks",
				ErrTooManyDataBlocks, opts.NrDataBlocks, spacemap.BitmapsFor(opts.NrDataBlocks), nrMeta)
		}
		return nil, fmt.Errorf("%w: %d blocks, even an empty pool needs %d", ErrNoSpace, nrMeta, fixed+3)
	}
	r := &Restorer{
		opts:    opts,
		out:     newWriter(w),
		nrMeta:  nrMeta,
		meta:    newCounts(nrMeta),
		data:    newCounts(opts.NrDataBlocks),
		alloc:   allocator{next: 1, limit: block.Nr(nrMeta - fixed), what: "the mapping and details trees"},
		defs:    map[string][]btree.Leaf{},
		known:   map[block.Nr]btree.Leaf{},
		roots:   map[thin.DevID]btree.Root{},
		scratch: make([]byte, block.Size),
	}
	r.sync, _ = w.(interface{ Sync() error })
	r.top = btree.NewBuilder(btree.Config{ValueSize: 8, Alloc: &r.alloc, Sink: sink{r, topTree}})
	r.details = btree.NewBuilder(btree.Config{ValueSize: thin.DetailsSize, Alloc: &r.alloc, Sink: sink{r, detailsTree}})
	if _, err := w.WriteAt(make([]byte, block.Size), 0); err != nil {
		return nil, fmt.Errorf("clearing the superblock: %w", err)
	}
	return r, nil
}

// NrMetadataBlocks is the number of metadata blocks the output will have.
func (r *Restorer) NrMetadataBlocks() uint64 { return r.nrMeta }

// fail records the first error and returns it.
func (r *Restorer) fail(err error) error {
	if r.err == nil {
		r.err = err
	}
	return err
}

func (r *Restorer) usable() error {
	if r.err != nil {
		return r.err
	}
	if r.ended {
		return fmt.Errorf("%w: already ended", ErrState)
	}
	return nil
}

func (r *Restorer) newTree(isDef bool) *btree.Builder {
	return btree.NewBuilder(btree.Config{
		ValueSize:  8,
		Alloc:      &r.alloc,
		Sink:       sink{r, bottomTree},
		Loader:     loader{r},
		KeepLeaves: true,
		LeavesOnly: isDef,
	})
}

// BeginDevice starts thin device id. Devices come in strictly ascending
// id order. d.MappedBlocks must equal the number of mappings that follow,
// shared ones included.
func (r *Restorer) BeginDevice(id thin.DevID, d thin.Details) error {
	if err := r.usable(); err != nil {
		return err
	}
	if err := r.nextDevice(id); err != nil {
		return err
	}
	r.cur = &tree{b: r.newTree(false), dev: id, details: d}
	return nil
}

// nextDevice checks that device id may come next and takes it.
func (r *Restorer) nextDevice(id thin.DevID) error {
	if r.cur != nil {
		return r.fail(fmt.Errorf("%w: device %d begun inside another device or def", ErrState, id))
	}
	switch {
	case id > thin.MaxDevID:
		return r.fail(&DeviceError{Dev: id, Err: ErrDeviceID})
	case r.anyDev && id == r.lastDev:
		return r.fail(&DeviceError{Dev: id, Err: ErrDuplicateDevice})
	case r.anyDev && id < r.lastDev:
		return r.fail(&DeviceError{Dev: id, Err: fmt.Errorf("%w: %d after %d", ErrDeviceOrder, id, r.lastDev)})
	}
	r.lastDev, r.anyDev = id, true
	return nil
}

// Snapshot adds device id as an untouched snapshot of origin, a device
// finished before: its top-level entry points at origin's root, so the two
// share their whole tree, as the kernel's create_snap leaves them until
// either is written. d.MappedBlocks must equal origin's mapping count. It
// stands for BeginDevice and EndDevice; Leaves then lists nothing.
func (r *Restorer) Snapshot(id thin.DevID, d thin.Details, origin thin.DevID) error {
	if err := r.usable(); err != nil {
		return err
	}
	if err := r.nextDevice(id); err != nil {
		return err
	}
	root, ok := r.roots[origin]
	if !ok {
		return r.fail(&DeviceError{Dev: id, Err: fmt.Errorf("%w: %d", ErrUnknownOrigin, origin)})
	}
	if root.Entries != d.MappedBlocks {
		return r.fail(&DeviceError{Dev: id, Err: fmt.Errorf("%w: mapped_blocks %d, origin %d has %d mappings",
			ErrMappedBlocks, d.MappedBlocks, origin, root.Entries)})
	}
	r.leaves = r.leaves[:0]
	return r.addDevice(id, d, root)
}

// addDevice enters a finished device in the top level and the details.
func (r *Restorer) addDevice(id thin.DevID, d thin.Details, root btree.Root) error {
	if err := r.top.AddU64(uint64(id), uint64(root.Block)); err != nil {
		return r.fail(err)
	}
	d.Put(r.detailsBuf[:])
	if err := r.details.Add(uint64(id), r.detailsBuf[:]); err != nil {
		return r.fail(err)
	}
	r.roots[id] = root
	return nil
}

// BeginDef starts a def: mappings written as leaves of their own, for
// devices to share with Ref. Names are unique.
func (r *Restorer) BeginDef(name string) error {
	if err := r.usable(); err != nil {
		return err
	}
	if r.cur != nil {
		return r.fail(fmt.Errorf("%w: def %q begun inside a device or def", ErrState, name))
	}
	if _, ok := r.defs[name]; ok {
		return r.fail(&DeviceError{Def: name, Err: ErrDuplicateDef})
	}
	r.cur = &tree{b: r.newTree(true), def: name, isDef: true}
	return nil
}

func (r *Restorer) where(err error) *DeviceError {
	return &DeviceError{Dev: r.cur.dev, Def: r.cur.def, Err: err}
}

func (r *Restorer) whereAt(v uint64, err error) *DeviceError {
	return &DeviceError{Dev: r.cur.dev, Def: r.cur.def, VBlock: v, HasVBlock: true, Err: err}
}

// Mapping adds one mapping to the current device or def.
func (r *Restorer) Mapping(m thin.Mapping) error {
	return r.Run(uint64(m.VBlock), uint64(m.Data), 1, m.Time)
}

// Run adds length mappings: virtual blocks originBegin.. to data blocks
// dataBegin.., all made at time. It must start past every mapping before
// it in the device or def.
func (r *Restorer) Run(originBegin, dataBegin, length uint64, time uint32) error {
	if err := r.usable(); err != nil {
		return err
	}
	t := r.cur
	if t == nil {
		return r.fail(fmt.Errorf("%w: mapping outside a device or def", ErrState))
	}
	switch {
	case length == 0 || originBegin+length < originBegin:
		return r.fail(r.whereAt(originBegin, fmt.Errorf("%w: run of length %d", ErrOrder, length)))
	case t.started && originBegin < t.next:
		return r.fail(r.whereAt(originBegin, fmt.Errorf("%w: block %d after %d", ErrOrder, originBegin, t.next-1)))
	case dataBegin >= r.opts.NrDataBlocks || length > r.opts.NrDataBlocks-dataBegin:
		return r.fail(r.whereAt(originBegin, fmt.Errorf("%w: data blocks %d..%d, nr_data_blocks %d",
			ErrDataBlock, dataBegin, dataBegin+length-1, r.opts.NrDataBlocks)))
	case time > 0xFFFFFF:
		return r.fail(r.whereAt(originBegin, fmt.Errorf("%w: %d", ErrTime, time)))
	}
	t.started, t.next = true, originBegin+length
	if err := t.b.AddRunU64(originBegin, dataBegin<<24|uint64(time), 1<<24, length); err != nil {
		return r.fail(r.whereAt(originBegin, err))
	}
	return nil
}

// Ref shares the leaves of def name with the current device, at this
// place in its mapping order.
func (r *Restorer) Ref(name string) error {
	if err := r.usable(); err != nil {
		return err
	}
	if r.cur == nil || r.cur.isDef {
		return r.fail(fmt.Errorf("%w: ref %q outside a device", ErrState, name))
	}
	leaves, ok := r.defs[name]
	if !ok {
		return r.fail(r.where(fmt.Errorf("%w: %q", ErrUndefinedRef, name)))
	}
	return r.RefLeaves(leaves...)
}

// RefLeaves shares bottom leaves written before (listed by Leaves after an
// EndDevice or EndDef) with the current device, in key order after its
// mappings so far: the device's tree points at them instead of copying
// them, as a kernel snapshot does. A leaf is copied instead when sharing it
// would leave a neighbouring node under the kernel's minimum fill; that
// reads it back from the output. The data it maps then gains a reference
// for the copy.
func (r *Restorer) RefLeaves(leaves ...btree.Leaf) error {
	if err := r.usable(); err != nil {
		return err
	}
	t := r.cur
	if t == nil || t.isDef {
		return r.fail(fmt.Errorf("%w: shared leaves outside a device", ErrState))
	}
	for _, lf := range leaves {
		if k, ok := r.known[lf.Block]; !ok || k != lf {
			return r.fail(r.where(fmt.Errorf("%w: block %d", ErrUnknownLeaf, lf.Block)))
		}
		if t.started && lf.First < t.next {
			return r.fail(r.whereAt(lf.First, fmt.Errorf("%w: shared leaf %d starts at %d, after %d", ErrOrder, lf.Block, lf.First, t.next-1)))
		}
		if err := t.b.AddLeaf(lf); err != nil {
			return r.fail(r.where(err))
		}
		t.started, t.next = true, lf.Last+1
	}
	return nil
}

// EndDevice finishes the current device: it writes the rest of its tree
// and adds it to the top level of the mapping tree and to the details
// tree.
func (r *Restorer) EndDevice() error {
	if err := r.usable(); err != nil {
		return err
	}
	t := r.cur
	if t == nil || t.isDef {
		return r.fail(fmt.Errorf("%w: end of a device that was not begun", ErrState))
	}
	root, err := t.b.Finish()
	if err != nil {
		return r.fail(r.where(err))
	}
	if root.Entries != t.details.MappedBlocks {
		return r.fail(r.where(fmt.Errorf("%w: mapped_blocks %d, %d mappings", ErrMappedBlocks, t.details.MappedBlocks, root.Entries)))
	}
	r.remember(t.b.Leaves())
	r.cur = nil
	return r.addDevice(t.dev, t.details, root)
}

// EndDef finishes the current def.
func (r *Restorer) EndDef() error {
	if err := r.usable(); err != nil {
		return err
	}
	t := r.cur
	if t == nil || !t.isDef {
		return r.fail(fmt.Errorf("%w: end of a def that was not begun", ErrState))
	}
	leaves, err := t.b.FinishLeaves()
	if err != nil {
		return r.fail(r.where(err))
	}
	r.remember(leaves)
	r.defs[t.def] = r.Leaves()
	r.defLeaves = append(r.defLeaves, leaves...)
	r.cur = nil
	return nil
}

func (r *Restorer) remember(leaves []btree.Leaf) {
	r.leaves = append(r.leaves[:0], leaves...)
	for _, lf := range leaves {
		r.known[lf.Block] = lf
	}
}

// Leaves lists the bottom leaves of the device or def finished last, in key
// order, for RefLeaves. The slice is the caller's.
func (r *Restorer) Leaves() []btree.Leaf { return append([]btree.Leaf(nil), r.leaves...) }
