package scan

// resolve types every node from its children and summarises the subtree
// under it, children first. The walk keeps its own stack on the heap, so a
// long chain of garbage nodes cannot exhaust the goroutine's stack, and a
// child found on the stack is a loop: it is left out of its parent.
func (s *scanned) resolve() {
	type frame struct{ i, next int32 }
	var stack []frame
	for _, i := range s.where { // in block order, so loops resolve the same way every time
		if i < 0 || s.nodes[i].state != 0 {
			continue
		}
		s.nodes[i].state = 1
		stack = append(stack[:0], frame{i, 0})
		for len(stack) > 0 {
			f := &stack[len(stack)-1]
			kids := s.children(&s.nodes[f.i])
			pushed := false
			for int(f.next) < len(kids) {
				c := s.at(kids[f.next])
				f.next++
				if c >= 0 && s.nodes[c].state == 0 {
					s.nodes[c].state = 1
					stack = append(stack, frame{c, 0})
					pushed = true
					break
				}
			}
			if pushed {
				continue
			}
			s.finish(&s.nodes[f.i])
			stack = stack[:len(stack)-1]
		}
	}
}

// children are the block numbers a node points to: the children of an
// internal node, the device roots of what may be a top-level leaf.
func (s *scanned) children(nd *node) []uint64 {
	if nd.kind == kindInternal || nd.kind == kindMapping && nd.flags&flagMaybeTop != 0 {
		return s.vals(nd)
	}
	return nil
}

// finish summarises nd once every child it has is finished (or on the
// stack, which makes it a loop).
func (s *scanned) finish(nd *node) {
	defer func() {
		nd.all |= nd.own
		nd.state = 2
	}()
	switch nd.kind {
	case kindMapping:
		if nd.flags&flagMaybeTop != 0 && s.finishTop(nd) {
			return
		}
		nd.typ = typDevice
		if nd.flags&flagPlausible == 0 {
			nd.own |= Implausible
		}
	case kindDetails:
		nd.typ = typDetails
		if nd.flags&flagBadIDs != 0 {
			nd.own |= BadDeviceID
		}
	case kindIndex:
		nd.typ = typIndex
	case kindOverflow:
		nd.typ = typOverflow
	case kindInternal:
		s.finishInternal(nd)
	}
	if nd.entries == 0 {
		nd.lo, nd.hi = 1, 0
	}
}

// finishTop decides whether an 8-byte leaf whose keys are thin ids and
// whose values are block numbers is a top-level leaf, and if so sums the
// device trees it names. It is one when a value leads to a device tree, or
// when it holds two or more entries: a device's leaf cannot, since its
// values would all map data block 0.
func (s *scanned) finishTop(nd *node) bool {
	vals := s.vals(nd)
	devs := 0
	for _, v := range vals {
		if c := s.at(v); c >= 0 && s.nodes[c].state == 2 && s.nodes[c].typ == typDevice {
			devs++
		}
	}
	if devs == 0 && len(vals) < 2 {
		return false
	}
	nd.typ = typTop
	nd.devices = uint32(len(vals))
	nd.mappings, nd.maxData, nd.age, nd.atAge = 0, 0, 0, 0
	for _, v := range vals {
		ch, ok := s.child(nd, v, typDevice)
		if !ok {
			continue
		}
		ch.named = true
		nd.add(ch)
		nd.all |= ch.all
	}
	return true
}

// child is the node that nd's value v points at. ok says it is a node of
// type want that is not on the walk's stack; otherwise nd's own flags say
// why not (a missing child, a loop, a child of another kind), and the
// child is returned if it exists and is not on the stack.
func (s *scanned) child(nd *node, v uint64, want treeType) (ch *node, ok bool) {
	c := s.at(v)
	if c < 0 {
		nd.own |= ChildMissing
		return nil, false
	}
	ch = &s.nodes[c]
	switch {
	case ch.state == 1:
		nd.own |= Loop
		return nil, false
	case ch.typ != want:
		nd.own |= ChildMissing
		return ch, false
	}
	return ch, true
}

// finishInternal types an internal node from its first valid child and
// checks the others agree: same tree, same height, keys inside the range
// the node's keys give each child.
func (s *scanned) finishInternal(nd *node) {
	keys, kids := s.keys(nd), s.vals(nd)
	for _, v := range kids {
		if c := s.at(v); c >= 0 && s.nodes[c].state == 2 && s.nodes[c].typ != typNone {
			nd.typ = s.nodes[c].typ
			break
		}
	}
	if nd.typ == typNone {
		nd.own |= ChildMissing
		for _, v := range kids {
			if c := s.at(v); c >= 0 && s.nodes[c].state == 1 {
				nd.own |= Loop
			}
		}
		return
	}
	var (
		height uint8
		seen   bool // a child has set height
		any    bool // a child has set lo..hi
		prevHi uint64
	)
	for j, v := range kids {
		ch, ok := s.child(nd, v, nd.typ)
		if !ok {
			if ch != nil {
				nd.all |= ch.all & Loop // an untyped child may stand in a loop
			}
			continue
		}
		ch.ref = true
		if !seen {
			height, seen = ch.height, true
		} else if ch.height != height {
			nd.own |= UnevenDepth
		}
		if ch.lo <= ch.hi { // not empty
			if ch.lo < keys[j] || j+1 < len(keys) && ch.hi >= keys[j+1] || any && ch.lo <= prevHi {
				nd.own |= KeysDisorder
			}
			if !any {
				nd.lo = ch.lo
			}
			any, prevHi, nd.hi = true, ch.hi, ch.hi
		}
		nd.add(ch)
		nd.devices += ch.devices
		nd.maxTid = max(nd.maxTid, ch.maxTid)
		nd.all |= ch.all
	}
	if !any {
		nd.lo, nd.hi = 1, 0
	}
	if height >= MaxHeight {
		nd.own |= TooDeep
		nd.height = MaxHeight
		return
	}
	nd.height = height + 1
}

// add folds a child's mapping figures into nd.
func (nd *node) add(ch *node) {
	nd.mappings += ch.mappings
	nd.maxData = max(nd.maxData, ch.maxData)
	switch {
	case ch.age > nd.age:
		nd.age, nd.atAge = ch.age, ch.atAge
	case ch.age == nd.age:
		nd.atAge += ch.atAge
	}
}
