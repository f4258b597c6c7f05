package repair

import (
	"errors"
	"fmt"
	"slices"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// damage is one node a walk left out: where it is and which keys it owed.
type damage struct {
	Node block.Nr
	Keys thin.KeyRange
	Err  error
}

// walker reads one b-tree at a time in key order, leaving out damaged
// nodes. Unlike thin.Walker it tells the leaf's block number, which the
// rebuild needs to keep leaves shared. Not safe for concurrent use.
type walker struct {
	r    *block.Reader
	bufs [thin.MaxDepth][]byte
	path [thin.MaxDepth]block.Nr
	// nodes, when not nil, marks every intact node the walks read; it
	// covers every block of the reader.
	nodes []bool
}

func newWalker(r *block.Reader) *walker { return &walker{r: r} }

// walk calls leaf for every intact leaf of the tree at root, whose leaves
// hold values of vs bytes, in key order; bad for every node left out. The
// node passed to leaf lives in the walker's buffer until leaf returns.
// Only an I/O error or an error from leaf ends the walk.
func (w *walker) walk(root block.Nr, vs int, leaf func(at block.Nr, n btree.Node) error, bad func(damage)) error {
	return w.node(0, root, thin.AllKeys, vs, leaf, bad)
}

func (w *walker) node(depth int, nr block.Nr, keys thin.KeyRange, vs int, leaf func(block.Nr, btree.Node) error, bad func(damage)) error {
	fail := func(err error) error {
		bad(damage{Node: nr, Keys: keys, Err: err})
		return nil
	}
	if depth >= thin.MaxDepth {
		return fail(thin.ErrTooDeep)
	}
	if slices.Contains(w.path[:depth], nr) {
		return fail(thin.ErrLoop)
	}
	w.path[depth] = nr
	if w.bufs[depth] == nil {
		w.bufs[depth] = make([]byte, block.Size)
	}
	buf := w.bufs[depth]
	if err := w.r.ReadInto(buf, nr, block.Node); err != nil {
		if !errors.Is(err, block.ErrCorrupt) {
			return err
		}
		return fail(err)
	}
	n, err := btree.ParseNode(buf, nr, vs)
	if err != nil {
		return fail(err)
	}
	if w.nodes != nil {
		w.nodes[nr] = true
	}
	if n.NrEntries > 0 {
		if lo, hi := n.Key(0), n.Key(n.NrEntries-1); !keys.Contains(lo) || !keys.Contains(hi) {
			return fail(fmt.Errorf("%w: holds %d..%d", btree.ErrKeyRange, lo, hi))
		}
	}
	if !n.Internal {
		return leaf(nr, n)
	}
	for i := range n.NrEntries {
		sub := thin.KeyRange{First: n.Key(i), Last: keys.Last}
		if i+1 < n.NrEntries {
			sub.Last = n.Key(i+1) - 1
		}
		if err := w.node(depth+1, n.Child(i), sub, vs, leaf, bad); err != nil {
			return err
		}
	}
	return nil
}
