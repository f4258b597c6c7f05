package thin

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
)

// MaxDepth bounds how deep a walk descends into one b-tree. A tree of 4 KiB
// nodes with at least 84 entries each reaches every key of a 2^64 key space
// within 11 levels, so a deeper path means the tree is damaged (a loop, or
// garbage pointers).
const MaxDepth = 16

var (
	// ErrNoSnapshot: the superblock holds no metadata snapshot.
	ErrNoSnapshot = errors.New("no metadata snapshot held")
	// ErrLoop: a child pointer leads back to a node already on the path.
	ErrLoop = fmt.Errorf("%w: b-tree loops back to a node on its own path", block.ErrCorrupt)
	// ErrTooDeep: the path from the root is longer than MaxDepth.
	ErrTooDeep = fmt.Errorf("%w: b-tree deeper than %d levels", block.ErrCorrupt, MaxDepth)
	// ErrNoMappingTree: the details tree lists a device that the top level
	// of the mapping tree lacks.
	ErrNoMappingTree = fmt.Errorf("%w: device has details but no mapping tree", block.ErrCorrupt)
	// ErrNoDetails: the top level of the mapping tree lists a device that
	// the details tree lacks.
	ErrNoDetails = fmt.Errorf("%w: device has a mapping tree but no details", block.ErrCorrupt)
)

// ReadHeldSnapshot reads the live superblock and then the copy of it that
// the held metadata snapshot keeps. It returns ErrNoSnapshot when none is
// held.
func ReadHeldSnapshot(r *block.Reader) (Superblock, error) {
	live, err := ReadSuperblock(r, 0)
	if err != nil {
		return Superblock{}, err
	}
	if live.MetadataSnap == 0 {
		return Superblock{}, ErrNoSnapshot
	}
	return ReadSuperblock(r, live.MetadataSnap)
}

// KeyRange is the inclusive range of keys, First..Last, that a parent node
// allows one child to hold: thin ids in the details tree and the top level
// of the mapping tree, virtual blocks in a device's tree.
type KeyRange struct {
	First, Last uint64
}

// AllKeys is the range a root may hold.
var AllKeys = KeyRange{0, math.MaxUint64}

// Contains says whether k lies in r.
func (r KeyRange) Contains(k uint64) bool { return r.First <= k && k <= r.Last }

func (r KeyRange) String() string {
	b := strconv.AppendUint(nil, r.First, 10)
	b = append(b, ".."...)
	if r.Last != math.MaxUint64 {
		b = strconv.AppendUint(b, r.Last, 10)
	}
	return string(b)
}

// Tree names one of the b-trees a walk reads.
type Tree uint8

const (
	TreeDetails Tree = iota // device details: thin id -> Details
	TreeTop                 // mapping tree, top level: thin id -> bottom root
	TreeDevice              // mapping tree, one device's bottom level: virtual block -> block_time
)

func (t Tree) String() string {
	switch t {
	case TreeDetails:
		return "device details tree"
	case TreeTop:
		return "mapping tree top level"
	}
	return "mapping tree"
}

// NodeError places a damaged b-tree node: which tree (and for a device's
// mappings, which device), the path from the root, and the keys the parent
// promised the node holds. With a Walker that reports damage and goes on,
// those keys are the part left out.
type NodeError struct {
	Tree Tree
	Dev  DevID      // the device whose mappings the node holds, for TreeDevice
	Path []block.Nr // root first, bad node last
	Keys KeyRange   // thin ids (TreeDetails, TreeTop) or virtual blocks (TreeDevice)
	Err  error      // a block, btree or thin sentinel, or an I/O error
}

func (e *NodeError) Error() string {
	var where string
	switch e.Tree {
	case TreeDevice:
		where = fmt.Sprintf("device %d, virtual blocks %v", e.Dev, e.Keys)
	default:
		where = fmt.Sprintf("%v, devices %v", e.Tree, e.Keys)
	}
	return fmt.Sprintf("%s: btree node %d (path %v): %v", where, e.Path[len(e.Path)-1], e.Path, e.Err)
}

func (e *NodeError) Unwrap() error { return e.Err }

// DeviceError says the details tree and the top level of the mapping tree
// disagree about one device.
type DeviceError struct {
	Dev DevID
	Err error // ErrNoMappingTree or ErrNoDetails
}

func (e *DeviceError) Error() string { return fmt.Sprintf("device %d: %v", e.Dev, e.Err) }
func (e *DeviceError) Unwrap() error { return e.Err }

// Device is a thin device as the details tree lists it, with the root of
// its mappings when the top level of the mapping tree has one.
type Device struct {
	ID      DevID
	Details Details
	Root    block.Nr // root of the device's bottom-level tree; valid if HasRoot
	HasRoot bool
}

// Walker reads the trees of one superblock in key order, depth first, with
// one 4 KiB buffer per tree level, so its memory does not grow with the
// number of mappings. It is not safe for concurrent use; use one Walker per
// goroutine (they may share the block.Reader).
//
// Every node is verified (checksum, location, header, keys ascending and
// inside the range its parent gives). A path is at most MaxDepth nodes and
// never visits a node twice, so a damaged tree cannot make a walk loop.
type Walker struct {
	r  *block.Reader
	sb Superblock

	// Damaged, when set, receives each damaged part (a *NodeError or a
	// *DeviceError); the walk leaves that part out and goes on. When nil,
	// the first damage ends the walk and is returned.
	Damaged func(error)

	bufs  [MaxDepth][]byte
	path  [MaxDepth]block.Nr
	depth int // of the leaf being visited
	ms    []Mapping
	lost  [2][]KeyRange // per TreeDetails/TreeTop: ranges left out by damage
}

// NewWalker walks the trees that sb (the live superblock or a snapshot's
// copy) points at.
func NewWalker(r *block.Reader, sb Superblock) *Walker {
	return &Walker{r: r, sb: sb, ms: make([]Mapping, 0, btree.MaxEntries(8))}
}

// Superblock is the superblock the walker reads from.
func (w *Walker) Superblock() Superblock { return w.sb }

func (w *Walker) damage(err error) error {
	if w.Damaged == nil {
		return err
	}
	w.Damaged(err)
	return nil
}

// Devices lists the devices of the details tree in id order, each with the
// root the top level of the mapping tree gives it. A device that only one
// of the two trees lists is reported as a *DeviceError (unless damage to
// the other tree already covers it); one without details is left out, one
// without a mapping tree is listed with HasRoot false. The returned error
// is an I/O error, or with Damaged nil the first damage.
func (w *Walker) Devices() ([]Device, error) {
	var devs []Device
	w.lost = [2][]KeyRange{}
	err := w.walk(TreeDetails, 0, w.sb.DetailsRoot, DetailsSize, func(n btree.Node) error {
		for i := range n.NrEntries {
			k := n.Key(i)
			if k > MaxDevID {
				if err := w.badID(TreeDetails, k); err != nil {
					return err
				}
				continue
			}
			devs = append(devs, Device{ID: DevID(k), Details: ParseDetails(n.Value(i))})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	type root struct {
		id DevID
		nr block.Nr
	}
	var roots []root
	err = w.walk(TreeTop, 0, w.sb.MappingRoot, 8, func(n btree.Node) error {
		for i := range n.NrEntries {
			k := n.Key(i)
			if k > MaxDevID {
				if err := w.badID(TreeTop, k); err != nil {
					return err
				}
				continue
			}
			roots = append(roots, root{DevID(k), block.Nr(n.U64(i))})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Both lists are ascending: merge them.
	j := 0
	for i := range devs {
		for j < len(roots) && roots[j].id < devs[i].ID {
			if err := w.orphan(roots[j].id); err != nil {
				return nil, err
			}
			j++
		}
		if j < len(roots) && roots[j].id == devs[i].ID {
			devs[i].Root, devs[i].HasRoot = roots[j].nr, true
			j++
			continue
		}
		if !w.lostIn(TreeTop, devs[i].ID) {
			if err := w.damage(&DeviceError{Dev: devs[i].ID, Err: ErrNoMappingTree}); err != nil {
				return nil, err
			}
		}
	}
	for ; j < len(roots); j++ {
		if err := w.orphan(roots[j].id); err != nil {
			return nil, err
		}
	}
	return devs, nil
}

// badID reports a key of the leaf being visited that cannot be a thin id.
// The other slots of the leaf are still used.
func (w *Walker) badID(t Tree, k uint64) error {
	return w.damage(&NodeError{Tree: t, Path: slices.Clone(w.path[:w.depth+1]), Keys: KeyRange{k, k},
		Err: fmt.Errorf("%w: thin id %d exceeds 24 bits", block.ErrCorrupt, k)})
}

func (w *Walker) orphan(id DevID) error {
	if w.lostIn(TreeDetails, id) {
		return nil
	}
	return w.damage(&DeviceError{Dev: id, Err: ErrNoDetails})
}

func (w *Walker) lostIn(t Tree, id DevID) bool {
	for _, r := range w.lost[t] {
		if r.Contains(uint64(id)) {
			return true
		}
	}
	return false
}

// Mappings calls leaf with the mappings of d in virtual-block order, one
// batch per b-tree leaf. The slice belongs to the Walker and is valid only
// until leaf returns. An error from leaf ends the walk and is returned as
// is. A device without a root has no mappings.
func (w *Walker) Mappings(d Device, leaf func([]Mapping) error) error {
	if !d.HasRoot {
		return nil
	}
	return w.walk(TreeDevice, d.ID, d.Root, 8, func(n btree.Node) error {
		ms := w.ms[:0]
		for i := range n.NrEntries {
			bt := BlockTime(n.U64(i))
			ms = append(ms, Mapping{VBlock: VBlock(n.Key(i)), Data: bt.Block(), Time: bt.Time()})
		}
		w.ms = ms
		return leaf(ms)
	})
}

func (w *Walker) walk(t Tree, dev DevID, root block.Nr, valueSize int, leaf func(btree.Node) error) error {
	return w.node(t, dev, 0, root, AllKeys, valueSize, leaf)
}

// node reads the node at nr, depth levels below the root, into the buffer
// of its level, and visits it. The parent's node stays valid in the buffer
// one level up while the children are read.
func (w *Walker) node(t Tree, dev DevID, depth int, nr block.Nr, keys KeyRange, valueSize int, leaf func(btree.Node) error) error {
	fail := func(err error) error {
		path := slices.Clone(w.path[:depth])
		path = append(path, nr)
		if t != TreeDevice {
			w.lost[t] = append(w.lost[t], keys)
		}
		return w.damage(&NodeError{Tree: t, Dev: dev, Path: path, Keys: keys, Err: err})
	}
	if depth >= MaxDepth {
		return fail(ErrTooDeep)
	}
	if slices.Contains(w.path[:depth], nr) {
		return fail(ErrLoop)
	}
	w.path[depth] = nr
	if w.bufs[depth] == nil {
		w.bufs[depth] = make([]byte, block.Size)
	}
	buf := w.bufs[depth]
	if err := w.r.ReadInto(buf, nr, block.Node); err != nil {
		if !errors.Is(err, block.ErrCorrupt) {
			return err // I/O: the walk cannot go on
		}
		return fail(err)
	}
	n, err := btree.ParseNode(buf, nr, valueSize)
	if err != nil {
		return fail(err)
	}
	if n.NrEntries > 0 {
		if lo, hi := n.Key(0), n.Key(n.NrEntries-1); !keys.Contains(lo) || !keys.Contains(hi) {
			return fail(fmt.Errorf("%w: holds %d..%d", btree.ErrKeyRange, lo, hi))
		}
	}
	if !n.Internal {
		w.depth = depth
		return leaf(n)
	}
	for i := range n.NrEntries {
		sub := KeyRange{n.Key(i), keys.Last}
		if i+1 < n.NrEntries {
			sub.Last = n.Key(i+1) - 1
		}
		if err := w.node(t, dev, depth+1, n.Child(i), sub, valueSize, leaf); err != nil {
			return err
		}
	}
	return nil
}
