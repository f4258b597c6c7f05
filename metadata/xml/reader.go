package xml

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// Errors Read returns, each inside a *LineError.
var (
	ErrMalformed       = errors.New("malformed XML")
	ErrUnknownElement  = errors.New("unknown element")
	ErrUnknownAttr     = errors.New("unknown attribute")
	ErrMissingAttr     = errors.New("missing attribute")
	ErrBadNumber       = errors.New("bad number")
	ErrMisplaced       = errors.New("element out of place")
	ErrOrder           = errors.New("mappings out of order or overlapping")
	ErrDuplicateDevice = errors.New("device listed twice")
	ErrDuplicateDef    = errors.New("def defined twice")
	ErrUndefinedRef    = errors.New("ref to an undefined def")
)

// LineError places a problem in the input: what is wrong on which line
// (counted from 1), or the error a Visitor returned for that line's element.
type LineError struct {
	Line int
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

const (
	// readSize is how much Read asks its io.Reader for at a time.
	readSize = 1 << 20
	// maxTag bounds one tag, '<' to '>'. Real tags are under 200 bytes.
	maxTag = 16 << 10
	// firstBuf is the window Read starts with; it grows to readSize+maxTag
	// once the input turns out to be larger, so small inputs stay cheap.
	firstBuf = 2 * maxTag
)

// Read parses the XML that thin_dump 0.9.0 or 1.x prints (or that Writer
// prints) from r and drives v with it, checking as it goes: well-formed
// tags in the schema's nesting, known elements and attributes, every
// required attribute present and in range (ids within 24 bits, data blocks
// within 40, times within 24), runs ascending and not overlapping within a
// device or def, no device or def listed twice, refs only to defs already
// defined. Comments, an XML declaration and whitespace are skipped.
//
// It reads r in pieces of up to 1 MiB and holds one piece plus a little state per
// def and per device id, whatever the size of the input; it calls v as
// each element is read, so v sees a prefix of the document before a later
// error. Errors are *LineError, except a read error from r, returned as
// is. Separate Reads may run at once.
func Read(r io.Reader, v Visitor) error {
	p := &parser{s: scanner{r: r, buf: make([]byte, firstBuf), line: 1}, v: v,
		devs: map[thin.DevID]struct{}{}, defs: map[string]span{},
		single: singleFields, rng: rangeFields}
	return p.run()
}

// scanner hands out tags from a sliding window over the input.
type scanner struct {
	r        io.Reader
	buf      []byte
	pos, end int
	eof      bool
	rerr     error
	line     int // line of buf[pos]
	total    int // bytes read so far
}

// fill reads more input after buf[pos:end], moving that to the front.
// It returns false when there is nothing more.
func (s *scanner) fill() bool {
	if s.eof {
		return false
	}
	if s.pos > 0 {
		s.end = copy(s.buf, s.buf[s.pos:s.end])
		s.pos = 0
	}
	if s.total >= firstBuf && len(s.buf) < readSize+maxTag {
		s.buf = append(s.buf, make([]byte, readSize+maxTag-len(s.buf))...)
	}
	for tries := 0; s.end < len(s.buf); tries++ {
		if tries == 100 {
			s.eof, s.rerr = true, io.ErrNoProgress
			return false
		}
		n, err := s.r.Read(s.buf[s.end:])
		s.end += n
		s.total += n
		if err != nil {
			s.eof = true
			if !errors.Is(err, io.EOF) {
				s.rerr = err
			}
			return n > 0
		}
		if n > 0 {
			return true
		}
	}
	return true
}

// skipSpace skips whitespace and returns the next byte, or false at the end.
func (s *scanner) skipSpace() (byte, bool) {
	for {
		for s.pos < s.end {
			switch c := s.buf[s.pos]; c {
			case '\n':
				s.line++
			case ' ', '\t', '\r':
			default:
				return c, true
			}
			s.pos++
		}
		if !s.fill() {
			return 0, false
		}
	}
}

// skipPast skips input up to and including marker, counting lines.
func (s *scanner) skipPast(marker string) bool {
	for {
		if i := bytes.Index(s.buf[s.pos:s.end], []byte(marker)); i >= 0 {
			s.line += bytes.Count(s.buf[s.pos:s.pos+i], []byte{'\n'})
			s.pos += i + len(marker)
			return true
		}
		keep := s.end - len(marker) + 1
		if keep > s.pos {
			s.line += bytes.Count(s.buf[s.pos:keep], []byte{'\n'})
			s.pos = keep
		}
		if !s.fill() {
			return false
		}
	}
}

// tag returns what lies between the '<' at pos and the next '>', and moves
// past it. The slice is valid until the next call. It returns nil for a
// comment or processing instruction, which it skips.
func (s *scanner) tag() ([]byte, error) {
	for s.end-s.pos < 4 && s.fill() {
	}
	rest := s.buf[s.pos:s.end]
	switch {
	case bytes.HasPrefix(rest, []byte("<!--")):
		s.pos += 4
		if !s.skipPast("-->") {
			return nil, fmt.Errorf("%w: comment not closed", ErrMalformed)
		}
		return nil, nil
	case bytes.HasPrefix(rest, []byte("<?")):
		s.pos += 2
		if !s.skipPast("?>") {
			return nil, fmt.Errorf("%w: processing instruction not closed", ErrMalformed)
		}
		return nil, nil
	case bytes.HasPrefix(rest, []byte("<!")):
		return nil, fmt.Errorf("%w: unsupported markup <!", ErrMalformed)
	}
	from := s.pos + 1
	for {
		if i := bytes.IndexByte(s.buf[from:s.end], '>'); i >= 0 {
			t := s.buf[s.pos+1 : from+i]
			s.pos = from + i + 1
			return t, nil
		}
		from = s.end
		if s.end-s.pos > maxTag {
			return nil, fmt.Errorf("%w: tag longer than %d bytes", ErrMalformed, maxTag)
		}
		off := s.pos
		if !s.fill() {
			return nil, fmt.Errorf("%w: tag not closed", ErrMalformed)
		}
		from -= off - s.pos // fill moved the window to the front
	}
}

type state uint8

const (
	stTop    state = iota // before <superblock>
	stSuper               // inside <superblock>
	stDevice              // inside <device>
	stDef                 // inside <def>
	stDone                // after </superblock>
)

// span is the virtual blocks a def covers, for the order check at refs.
type span struct {
	first, end uint64
	empty      bool
}

type parser struct {
	s  scanner
	v  Visitor
	st state

	devs map[thin.DevID]struct{}
	defs map[string]span
	def  string // name of the open def
	cur  span   // blocks covered so far in the open device or def

	single, rng fields // this parser's copies: fields hold parse results
}

func (p *parser) run() error {
	for {
		c, ok := p.s.skipSpace()
		if !ok {
			break
		}
		line := p.s.line
		if c != '<' {
			return &LineError{line, fmt.Errorf("%w: text outside tags", ErrMalformed)}
		}
		t, err := p.s.tag()
		if err == nil && t != nil {
			err = p.element(t)
		}
		if err != nil {
			if p.s.rerr != nil {
				return p.s.rerr // the input broke off; what is missing is not malformed
			}
			return &LineError{line, err}
		}
		p.s.line += bytes.Count(t, []byte{'\n'})
	}
	if p.s.rerr != nil {
		return p.s.rerr
	}
	if p.st != stDone {
		return &LineError{p.s.line, fmt.Errorf("%w: input ends inside %s", ErrMalformed, p.open())}
	}
	if err := p.v.End(); err != nil {
		return &LineError{p.s.line, err}
	}
	return nil
}

func (p *parser) open() string {
	switch p.st {
	case stTop:
		return "the document (no <superblock>)"
	case stSuper:
		return "<superblock>"
	case stDevice:
		return "<device>"
	}
	return "<def>"
}

// element handles one tag, the bytes between '<' and '>'.
func (p *parser) element(t []byte) error {
	if len(t) == 0 {
		return fmt.Errorf("%w: empty tag <>", ErrMalformed)
	}
	if t[0] == '/' {
		return p.endTag(t[1:])
	}
	empty := false
	if t[len(t)-1] == '/' {
		empty, t = true, t[:len(t)-1]
	}
	i := 0
	for i < len(t) && !isSpace(t[i]) {
		i++
	}
	name, attrs := t[:i], t[i:]
	switch string(name) {
	case "single_mapping", "range_mapping":
		if p.st != stDevice && p.st != stDef {
			return fmt.Errorf("%w: <%s> outside a device or def", ErrMisplaced, name)
		}
		if !empty {
			return fmt.Errorf("%w: <%s> must be empty (<%s …/>)", ErrMalformed, name, name)
		}
		return p.mapping(name[0] == 's', attrs)
	case "device":
		if p.st != stSuper {
			return fmt.Errorf("%w: <device> outside <superblock>", ErrMisplaced)
		}
		return p.device(attrs, empty)
	case "def":
		if p.st != stSuper {
			return fmt.Errorf("%w: <def> outside <superblock>", ErrMisplaced)
		}
		return p.beginDef(attrs, empty)
	case "ref":
		if p.st != stDevice {
			return fmt.Errorf("%w: <ref> outside a device", ErrMisplaced)
		}
		if !empty {
			return fmt.Errorf("%w: <ref> must be empty (<ref …/>)", ErrMalformed)
		}
		return p.ref(attrs)
	case "superblock":
		if p.st != stTop {
			return fmt.Errorf("%w: a second <superblock>", ErrMisplaced)
		}
		return p.superblock(attrs, empty)
	}
	if len(name) == 0 {
		return fmt.Errorf("%w: tag without a name", ErrMalformed)
	}
	return fmt.Errorf("%w <%s>", ErrUnknownElement, truncate(name))
}

func (p *parser) endTag(t []byte) error {
	name := bytes.TrimRight(t, " \t\r\n")
	var want string
	switch p.st {
	case stSuper:
		want = "superblock"
	case stDevice:
		want = "device"
	case stDef:
		want = "def"
	default:
		return fmt.Errorf("%w: </%s> without an open element", ErrMalformed, truncate(name))
	}
	if string(name) != want {
		return fmt.Errorf("%w: </%s> closes <%s>", ErrMalformed, truncate(name), want)
	}
	return p.close()
}

// close ends the innermost open element.
func (p *parser) close() error {
	switch p.st {
	case stSuper:
		p.st = stDone
		return nil
	case stDevice:
		p.st = stSuper
		return p.v.EndDevice()
	default: // stDef
		p.defs[p.def] = p.cur
		p.st = stSuper
		return p.v.EndDef()
	}
}

// attrs iterates over name="value" pairs.
type attrs struct {
	b   []byte
	err error
}

// next returns the next attribute, or false at the end or on a syntax
// error (then a.err is set).
func (a *attrs) next() (name, val []byte, ok bool) {
	b := a.b
	i := 0
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	if i == len(b) {
		return nil, nil, false
	}
	if i == 0 {
		a.err = fmt.Errorf("%w: attributes must be separated by spaces", ErrMalformed)
		return nil, nil, false
	}
	start := i
	for i < len(b) && b[i] != '=' && !isSpace(b[i]) {
		i++
	}
	name = b[start:i]
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	if i == len(b) || b[i] != '=' || len(name) == 0 {
		a.err = fmt.Errorf("%w: attribute %q without a value", ErrMalformed, truncate(name))
		return nil, nil, false
	}
	i++
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	if i == len(b) || (b[i] != '"' && b[i] != '\'') {
		a.err = fmt.Errorf("%w: value of %q not quoted", ErrMalformed, name)
		return nil, nil, false
	}
	q := b[i]
	end := bytes.IndexByte(b[i+1:], q)
	if end < 0 {
		a.err = fmt.Errorf("%w: value of %q not closed", ErrMalformed, name)
		return nil, nil, false
	}
	val = b[i+1 : i+1+end]
	if bytes.IndexByte(val, '<') >= 0 {
		a.err = fmt.Errorf("%w: '<' in the value of %q", ErrMalformed, name)
		return nil, nil, false
	}
	a.b = b[i+2+end:]
	return name, val, true
}

// fields collects the attributes of one element: numbers into nums (in the
// order of names) and the one string attribute, if any, into str.
type fields struct {
	elem  string
	names []string // attribute names, in order of nums
	max   []uint64 // largest value of each numeric attribute
	str   string   // name of the string attribute ("" for none)

	nums   [8]uint64
	seen   uint32 // bit i: names[i] given; bit 31: str given
	strVal []byte
}

const strBit = 1 << 31

func (f *fields) parse(b []byte) error {
	if f.fast(b) {
		return nil
	}
	f.seen = 0
	a := attrs{b: b}
	for {
		name, val, ok := a.next()
		if !ok {
			return a.err
		}
		if f.str != "" && string(name) == f.str {
			if f.seen&strBit != 0 {
				return fmt.Errorf("%w: %s: attribute %s given twice", ErrMalformed, f.elem, name)
			}
			f.seen |= strBit
			f.strVal = val
			continue
		}
		i := 0
		for i < len(f.names) && f.names[i] != string(name) {
			i++
		}
		if i == len(f.names) {
			return fmt.Errorf("%w %s in <%s>", ErrUnknownAttr, truncate(name), f.elem)
		}
		if f.seen&(1<<i) != 0 {
			return fmt.Errorf("%w: %s: attribute %s given twice", ErrMalformed, f.elem, name)
		}
		n, ok := parseUint(val, f.max[i])
		if !ok {
			return fmt.Errorf("%w: %s %s=%q (want a decimal number up to %d)", ErrBadNumber, f.elem, name, truncate(val), f.max[i])
		}
		f.seen |= 1 << i
		f.nums[i] = n
	}
}

// fast parses b when it is laid out exactly as thin_dump prints it: every
// numeric attribute in order, one space before each, double quotes, plain
// decimals within range. It reports false for anything else, and parse
// then takes the general path, which also finds the right error. This
// path is what makes reading a dump of millions of mappings take about a
// second.
func (f *fields) fast(b []byte) bool {
	if f.str != "" {
		return false
	}
	for i, name := range f.names {
		if len(b) < len(name)+4 || b[0] != ' ' || string(b[1:1+len(name)]) != name ||
			b[1+len(name)] != '=' || b[2+len(name)] != '"' {
			return false
		}
		b = b[3+len(name):]
		var n uint64
		j := 0
		for ; j < len(b) && j < 19; j++ {
			d := b[j] - '0'
			if d > 9 {
				break
			}
			n = n*10 + uint64(d)
		}
		if j == 0 || j == len(b) || b[j] != '"' || n > f.max[i] {
			return false
		}
		f.nums[i] = n
		b = b[j+1:]
	}
	for _, c := range b {
		if !isSpace(c) {
			return false
		}
	}
	f.seen = 1<<len(f.names) - 1
	return true
}

// require checks that the attributes whose bits are in mask were given.
func (f *fields) require(mask uint32) error {
	if missing := mask &^ f.seen; missing != 0 {
		if missing&strBit != 0 {
			return fmt.Errorf("%w %s in <%s>", ErrMissingAttr, f.str, f.elem)
		}
		for i := range f.names {
			if missing&(1<<i) != 0 {
				return fmt.Errorf("%w %s in <%s>", ErrMissingAttr, f.names[i], f.elem)
			}
		}
	}
	return nil
}

const (
	u32    = math.MaxUint32
	u64    = math.MaxUint64
	time24 = 1<<24 - 1
	data40 = thin.MaxDataBlocks - 1
)

// Templates; each parser copies them, as fields hold parse results.
var (
	superFields = fields{elem: "superblock", str: "uuid",
		names: []string{"time", "transaction", "flags", "version", "data_block_size", "nr_data_blocks", "metadata_snap"},
		max:   []uint64{u32, u64, u32, u32, u32, u64, u64}}
	deviceFields = fields{elem: "device",
		names: []string{"dev_id", "mapped_blocks", "transaction", "creation_time", "snap_time"},
		max:   []uint64{thin.MaxDevID, u64, u64, u32, u32}}
	singleFields = fields{elem: "single_mapping",
		names: []string{"origin_block", "data_block", "time"},
		max:   []uint64{u64, data40, time24}}
	rangeFields = fields{elem: "range_mapping",
		names: []string{"origin_begin", "data_begin", "length", "time"},
		max:   []uint64{u64, data40, u64, time24}}
)

func (p *parser) superblock(b []byte, empty bool) error {
	f := superFields
	if err := f.parse(b); err != nil {
		return err
	}
	// flags (bit 2), version (bit 3) and metadata_snap (bit 6) are optional:
	// 1.x omits flags when 0.
	if err := f.require(strBit | 1<<0 | 1<<1 | 1<<4 | 1<<5); err != nil {
		return err
	}
	uuid, err := unescape(f.strVal)
	if err != nil {
		return err
	}
	version := uint32(thin.Version)
	if f.seen&(1<<3) != 0 {
		version = uint32(f.nums[3])
	}
	sb := Superblock{UUID: uuid, Time: uint32(f.nums[0]), TransactionID: f.nums[1], Flags: uint32(f.nums[2]),
		Version: version, DataBlockSize: uint32(f.nums[4]), NrDataBlocks: f.nums[5], MetadataSnap: f.nums[6]}
	if f.seen&(1<<2) == 0 {
		sb.Flags = 0
	}
	if f.seen&(1<<6) == 0 {
		sb.MetadataSnap = 0
	}
	p.st = stSuper
	if err := p.v.Superblock(sb); err != nil {
		return err
	}
	if empty {
		return p.close()
	}
	return nil
}

func (p *parser) device(b []byte, empty bool) error {
	f := deviceFields
	if err := f.parse(b); err != nil {
		return err
	}
	if err := f.require(1<<5 - 1); err != nil {
		return err
	}
	id := thin.DevID(f.nums[0])
	if _, ok := p.devs[id]; ok {
		return fmt.Errorf("%w: dev_id %d", ErrDuplicateDevice, id)
	}
	p.devs[id] = struct{}{}
	p.st, p.cur = stDevice, span{empty: true}
	d := thin.Details{MappedBlocks: f.nums[1], TransactionID: f.nums[2],
		CreationTime: uint32(f.nums[3]), SnapshottedTime: uint32(f.nums[4])}
	if err := p.v.BeginDevice(id, d); err != nil {
		return err
	}
	if empty {
		return p.close()
	}
	return nil
}

func (p *parser) mapping(single bool, b []byte) error {
	var origin, data, length uint64
	var time uint32
	if single {
		f := &p.single
		if err := f.parse(b); err != nil {
			return err
		}
		if err := f.require(1<<3 - 1); err != nil {
			return err
		}
		origin, data, length, time = f.nums[0], f.nums[1], 1, uint32(f.nums[2])
	} else {
		f := &p.rng
		if err := f.parse(b); err != nil {
			return err
		}
		if err := f.require(1<<4 - 1); err != nil {
			return err
		}
		origin, data, length, time = f.nums[0], f.nums[1], f.nums[2], uint32(f.nums[3])
		if length == 0 {
			return fmt.Errorf("%w: range_mapping length=\"0\"", ErrBadNumber)
		}
		if length > data40+1-data {
			return fmt.Errorf("%w: range_mapping data blocks %d+%d pass 40 bits", ErrBadNumber, data, length)
		}
		if length > u64-origin {
			return fmt.Errorf("%w: range_mapping origin blocks %d+%d pass 64 bits", ErrBadNumber, origin, length)
		}
	}
	if err := p.advance(origin, origin+length); err != nil {
		return err
	}
	return p.v.Run(origin, data, length, time)
}

// advance records that the open device or def now covers first..end-1,
// which must lie after everything it covered before.
func (p *parser) advance(first, end uint64) error {
	if !p.cur.empty && first < p.cur.end {
		return fmt.Errorf("%w: block %d after blocks up to %d", ErrOrder, first, p.cur.end-1)
	}
	if p.cur.empty {
		p.cur = span{first: first}
	}
	p.cur.end = end
	return nil
}

func (p *parser) name(elem string, b []byte) (string, error) {
	a := attrs{b: b}
	var name []byte
	seen := false
	for {
		k, v, ok := a.next()
		if !ok {
			break
		}
		if string(k) != "name" {
			return "", fmt.Errorf("%w %s in <%s>", ErrUnknownAttr, truncate(k), elem)
		}
		if seen {
			return "", fmt.Errorf("%w: %s: attribute name given twice", ErrMalformed, elem)
		}
		name, seen = v, true
	}
	if a.err != nil {
		return "", a.err
	}
	if !seen {
		return "", fmt.Errorf("%w name in <%s>", ErrMissingAttr, elem)
	}
	return unescape(name)
}

func (p *parser) beginDef(b []byte, empty bool) error {
	name, err := p.name("def", b)
	if err != nil {
		return err
	}
	if _, ok := p.defs[name]; ok {
		return fmt.Errorf("%w: %q", ErrDuplicateDef, name)
	}
	p.st, p.def, p.cur = stDef, name, span{empty: true}
	if err := p.v.BeginDef(name); err != nil {
		return err
	}
	if empty {
		return p.close()
	}
	return nil
}

func (p *parser) ref(b []byte) error {
	name, err := p.name("ref", b)
	if err != nil {
		return err
	}
	d, ok := p.defs[name]
	if !ok {
		return fmt.Errorf("%w: %q", ErrUndefinedRef, name)
	}
	if !d.empty {
		if err := p.advance(d.first, d.end); err != nil {
			return err
		}
	}
	return p.v.Ref(name)
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// parseUint parses a plain decimal number no larger than max.
func parseUint(b []byte, max uint64) (uint64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		d := uint64(c - '0')
		if d > 9 || n > (max-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// unescape decodes the five predefined XML entities and numeric ones.
func unescape(b []byte) (string, error) {
	if bytes.IndexByte(b, '&') < 0 {
		return string(b), nil
	}
	out := make([]byte, 0, len(b))
	for len(b) > 0 {
		i := bytes.IndexByte(b, '&')
		if i < 0 {
			out = append(out, b...)
			break
		}
		out = append(out, b[:i]...)
		b = b[i:]
		j := bytes.IndexByte(b, ';')
		if j < 0 {
			return "", fmt.Errorf("%w: '&' without ';'", ErrMalformed)
		}
		switch ent := string(b[1:j]); ent {
		case "amp":
			out = append(out, '&')
		case "lt":
			out = append(out, '<')
		case "gt":
			out = append(out, '>')
		case "quot":
			out = append(out, '"')
		case "apos":
			out = append(out, '\'')
		default:
			n, ok := uint64(0), false
			if len(ent) > 1 && ent[0] == '#' {
				n, ok = parseUint([]byte(ent[1:]), 0x7f)
			}
			if !ok {
				return "", fmt.Errorf("%w: entity &%s;", ErrMalformed, truncate([]byte(ent)))
			}
			out = append(out, byte(n))
		}
		b = b[j+1:]
	}
	return string(out), nil
}

// truncate shortens what goes into an error message.
func truncate(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "…"
	}
	return string(b)
}
