package restore

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
)

// bufBlocks is how many blocks the writer gathers before one WriteAt:
// nodes are allocated in ascending order, so they form long runs, and a few
// MiB per write keeps system calls off the profile.
const bufBlocks = 1024

// writer gathers consecutive blocks into large writes.
type writer struct {
	w    io.WriterAt
	buf  []byte
	base block.Nr // block of buf[0]
	n    int      // blocks in buf
}

func newWriter(w io.WriterAt) *writer {
	return &writer{w: w, buf: make([]byte, bufBlocks*block.Size)}
}

// put queues block b (block.Size bytes) for location at.
func (w *writer) put(at block.Nr, b []byte) error {
	if w.n > 0 && (at != w.base+block.Nr(w.n) || w.n == bufBlocks) {
		if err := w.flush(); err != nil {
			return err
		}
	}
	if w.n == 0 {
		w.base = at
	}
	copy(w.buf[w.n*block.Size:], b[:block.Size])
	w.n++
	return nil
}

// flush writes what is queued.
func (w *writer) flush() error {
	if w.n == 0 {
		return nil
	}
	if _, err := w.w.WriteAt(w.buf[:w.n*block.Size], int64(w.base)*block.Size); err != nil {
		return fmt.Errorf("writing blocks %d..%d: %w", w.base, w.base+block.Nr(w.n)-1, err)
	}
	w.n = 0
	return nil
}

// read fills b with block at, from the queue or from the output.
func (w *writer) read(at block.Nr, b []byte) error {
	if w.n > 0 && at >= w.base && at < w.base+block.Nr(w.n) {
		off := int(at-w.base) * block.Size
		copy(b, w.buf[off:off+block.Size])
		return nil
	}
	ra, ok := w.w.(io.ReaderAt)
	if !ok {
		return ErrNoReadBack
	}
	if _, err := ra.ReadAt(b[:block.Size], int64(at)*block.Size); err != nil {
		return fmt.Errorf("reading back block %d: %w", at, err)
	}
	return nil
}

// allocator hands out blocks in ascending order below a limit.
type allocator struct {
	next, limit block.Nr
	what        string
}

func (a *allocator) Alloc() (block.Nr, error) {
	if a.next >= a.limit {
		return 0, fmt.Errorf("%w: %s needs more than %d blocks", ErrNoSpace, a.what, a.limit)
	}
	a.next++
	return a.next - 1, nil
}

// treeKind says how the nodes of a tree add to the reference counts.
type treeKind uint8

const (
	bottomTree  treeKind = iota // leaves map data blocks
	topTree                     // leaves point at bottom roots
	detailsTree                 // leaves hold no pointers
)

// sink writes the nodes of one tree and counts the references they hold.
type sink struct {
	r    *Restorer
	kind treeKind
}

func (s sink) WriteNode(at block.Nr, b []byte) error {
	le := binary.LittleEndian
	internal := le.Uint32(b[4:]) == 1
	nr := int(le.Uint32(b[16:]))
	vals := 32 + 8*int(le.Uint32(b[20:]))
	switch {
	case internal || s.kind == topTree:
		for i := range nr {
			s.r.meta.inc(le.Uint64(b[vals+8*i:]))
		}
	case s.kind == bottomTree:
		for i := range nr {
			s.r.data.inc(le.Uint64(b[vals+8*i:]) >> 24)
		}
	}
	return s.r.out.put(at, b)
}

// loader reads back bottom leaves for the Builders, which unshare a leaf
// when keeping it would leave a neighbour under-filled.
type loader struct{ r *Restorer }

func (l loader) LoadLeaf(at block.Nr) ([]uint64, []byte, error) { return l.r.loadLeaf(at) }

// loadLeaf reads back a bottom leaf this Restorer wrote.
func (r *Restorer) loadLeaf(at block.Nr) ([]uint64, []byte, error) {
	b := r.scratch
	if err := r.out.read(at, b); err != nil {
		return nil, nil, err
	}
	if err := block.Verify(b, at, block.Node); err != nil {
		return nil, nil, err
	}
	n, err := btree.ParseNode(b, at, 8)
	if err != nil {
		return nil, nil, err
	}
	if n.Internal {
		return nil, nil, fmt.Errorf("block %d: %w", at, ErrUnknownLeaf)
	}
	keys := make([]uint64, n.NrEntries)
	vals := make([]byte, 0, 8*n.NrEntries)
	for i := range keys {
		keys[i] = n.Key(i)
		vals = append(vals, n.Value(i)...)
	}
	return keys, vals, nil
}
