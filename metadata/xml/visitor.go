package xml

import (
	"errors"
	"fmt"

	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// Superblock holds the superblock attributes of a dump.
type Superblock struct {
	UUID          string // "" for every kernel-written pool
	Time          uint32
	TransactionID uint64
	Flags         uint32 // bit 0: NEEDS_CHECK
	Version       uint32
	DataBlockSize uint32 // sectors
	NrDataBlocks  uint64 // the data space map's nr_blocks; 0 in a snapshot's dump
	MetadataSnap  uint64 // 1.x only: block of the held snapshot, 0 for none; 0.9.0 XML does not show it
}

// FromThin gives the dump attributes of a binary superblock. The uuid is
// always "": thin_dump (0.9.0 and 1.x) never prints the on-disk field,
// which kernels leave zero anyway.
func FromThin(sb thin.Superblock) Superblock {
	return Superblock{
		UUID:          "",
		Time:          sb.Time,
		TransactionID: sb.TransactionID,
		Flags:         sb.Flags,
		Version:       sb.Version,
		DataBlockSize: sb.DataBlockSize,
		NrDataBlocks:  sb.DataSM.NrBlocks,
	}
}

// Visitor receives the content of a dump in document order:
//
//	Superblock
//	( BeginDef  Run*  EndDef )*                       (1.x input only)
//	( BeginDevice  ( Run | Ref )*  EndDevice )*       (devices may follow defs in any mix)
//	End
//
// Within a device or def the runs are ascending and do not overlap; a Ref
// stands for the runs of the def it names, at its place in that order. Runs
// need not be maximal: two adjacent runs may continue each other. Length is
// at least 1, dataBegin+length stays within 40 bits and time within 24.
// End is called once after the last device, and only when everything
// before it succeeded. An error from any method stops the producer, which
// returns it.
type Visitor interface {
	Superblock(sb Superblock) error
	BeginDevice(id thin.DevID, d thin.Details) error
	Run(originBegin, dataBegin, length uint64, time uint32) error
	EndDevice() error
	BeginDef(name string) error
	EndDef() error
	Ref(name string) error
	End() error
}

// ErrDefRef: a visitor that cannot share runs was given a def or a ref;
// wrap it with Expand.
var ErrDefRef = errors.New("shared definitions (def/ref) need Expand")

// MaxExpandRuns bounds the runs Expand keeps for all defs together (24
// bytes each).
const MaxExpandRuns = 1 << 23

type run struct {
	origin, data, length uint64
	time                 uint32
}

// Expand returns a Visitor that keeps the runs of every def and hands them
// to v in place of each ref, so that v never sees BeginDef, EndDef or Ref.
// It holds at most MaxExpandRuns runs. Not safe for concurrent use.
func Expand(v Visitor) Visitor {
	return &expander{v: v, defs: map[string][]run{}}
}

type expander struct {
	v     Visitor
	defs  map[string][]run
	cur   []run
	name  string
	inDef bool
	total int
}

func (e *expander) Superblock(sb Superblock) error { return e.v.Superblock(sb) }
func (e *expander) BeginDevice(id thin.DevID, d thin.Details) error {
	return e.v.BeginDevice(id, d)
}
func (e *expander) EndDevice() error { return e.v.EndDevice() }
func (e *expander) End() error       { return e.v.End() }

func (e *expander) Run(origin, data, length uint64, time uint32) error {
	if !e.inDef {
		return e.v.Run(origin, data, length, time)
	}
	if e.total >= MaxExpandRuns {
		return fmt.Errorf("defs hold more than %d runs", MaxExpandRuns)
	}
	e.total++
	e.cur = append(e.cur, run{origin, data, length, time})
	return nil
}

func (e *expander) BeginDef(name string) error {
	if e.inDef {
		return fmt.Errorf("def %q inside def %q", name, e.name)
	}
	if _, ok := e.defs[name]; ok {
		return fmt.Errorf("def %q defined twice", name)
	}
	e.inDef, e.name, e.cur = true, name, nil
	return nil
}

func (e *expander) EndDef() error {
	if !e.inDef {
		return errors.New("end of a def that was not begun")
	}
	e.defs[e.name] = e.cur
	e.inDef, e.cur = false, nil
	return nil
}

func (e *expander) Ref(name string) error {
	runs, ok := e.defs[name]
	if !ok {
		return fmt.Errorf("ref to undefined def %q", name)
	}
	for _, r := range runs {
		if err := e.v.Run(r.origin, r.data, r.length, r.time); err != nil {
			return err
		}
	}
	return nil
}
