package xml

import (
	"slices"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// Options select what Dump reads.
type Options struct {
	// MetadataSnap dumps the held metadata snapshot instead of the live
	// metadata: the copy of the superblock at SnapBlock, or when SnapBlock
	// is 0 the one the live superblock names.
	MetadataSnap bool
	SnapBlock    block.Nr
	// SkipMappings lists devices without their mappings.
	SkipMappings bool
	// DevIDs, when not empty, dumps only these devices (ids without a
	// device are ignored, as thin_dump does).
	DevIDs []thin.DevID
	// Damaged, when set, receives each part of the metadata that could not
	// be read (see thin.Walker.Damaged); the dump leaves it out and goes
	// on. When nil the first damage ends the dump and is returned.
	Damaged func(error)
}

// Dump reads the metadata behind r and drives v with it: the superblock,
// then the devices in id order, each with its mappings in virtual-block
// order as maximal runs, then End. It reads one b-tree path at a time with
// one buffer per level and calls v once per run, so memory stays flat
// however many mappings there are. It returns the superblock's read error
// (the input is not usable metadata), an I/O error, the first error from v,
// or with Damaged nil the first damage. Several Dumps may share r at once.
func Dump(r *block.Reader, v Visitor, o Options) error {
	var sb thin.Superblock
	var err error
	switch {
	case !o.MetadataSnap:
		sb, err = thin.ReadSuperblock(r, 0)
	case o.SnapBlock != 0:
		sb, err = thin.ReadSuperblock(r, o.SnapBlock)
	default:
		sb, err = thin.ReadHeldSnapshot(r)
	}
	if err != nil {
		return err
	}
	if err := v.Superblock(FromThin(sb)); err != nil {
		return err
	}
	w := thin.NewWalker(r, sb)
	w.Damaged = o.Damaged
	devs, err := w.Devices()
	if err != nil {
		return err
	}
	var (
		cur     run
		haveRun bool
	)
	// leaf merges consecutive mappings into runs before they reach v, so
	// that v is called per run, not per mapping.
	leaf := func(ms []thin.Mapping) error {
		for _, m := range ms {
			vb, db := uint64(m.VBlock), uint64(m.Data)
			if haveRun && vb == cur.origin+cur.length && db == cur.data+cur.length && m.Time == cur.time {
				cur.length++
				continue
			}
			if haveRun {
				if err := v.Run(cur.origin, cur.data, cur.length, cur.time); err != nil {
					return err
				}
			}
			cur, haveRun = run{vb, db, 1, m.Time}, true
		}
		return nil
	}
	for _, d := range devs {
		if len(o.DevIDs) > 0 && !slices.Contains(o.DevIDs, d.ID) {
			continue
		}
		if err := v.BeginDevice(d.ID, d.Details); err != nil {
			return err
		}
		if !o.SkipMappings {
			haveRun = false
			if err := w.Mappings(d, leaf); err != nil {
				return err
			}
			if haveRun {
				if err := v.Run(cur.origin, cur.data, cur.length, cur.time); err != nil {
					return err
				}
			}
		}
		if err := v.EndDevice(); err != nil {
			return err
		}
	}
	return v.End()
}
