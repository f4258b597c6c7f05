package restore

import (
	"encoding/binary"
	"fmt"

	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// End finishes the metadata: the top level of the mapping tree, the
// details tree, both space maps (in one range after the trees, see
// writeSpaceMaps), and last the superblock.
func (r *Restorer) End() error {
	if err := r.usable(); err != nil {
		return err
	}
	if r.cur != nil {
		return r.fail(fmt.Errorf("%w: End inside a device or def", ErrState))
	}
	if err := r.end(); err != nil {
		return r.fail(err)
	}
	r.ended = true
	return nil
}

func (r *Restorer) end() error {
	mapRoot, err := r.top.Finish()
	if err != nil {
		return err
	}
	detRoot, err := r.details.Finish()
	if err != nil {
		return err
	}
	r.meta.inc(0) // the superblock
	r.meta.inc(uint64(mapRoot.Block))
	r.meta.inc(uint64(detRoot.Block))

	// Def leaves that no device kept hold no mapping: give back the data
	// references their writing took.
	for _, lf := range r.defLeaves {
		if r.meta.get(uint64(lf.Block)) != 0 {
			continue
		}
		_, vals, err := r.loadLeaf(lf.Block)
		if err != nil {
			return err
		}
		for i := 0; i < len(vals); i += 8 {
			r.data.dec(binary.LittleEndian.Uint64(vals[i:]) >> 24)
		}
	}

	// The space maps go in one range after the trees.
	metaRoot, dataRoot, err := writeSpaceMaps(r.out, r.meta, r.data, r.alloc.next)
	if err != nil {
		return err
	}
	if err := r.out.flush(); err != nil {
		return err
	}
	if r.sync != nil {
		if err := r.sync.Sync(); err != nil {
			return err
		}
	}
	sb := thin.Superblock{
		Flags:             r.opts.Flags,
		Magic:             thin.Magic,
		Version:           r.opts.Version,
		Time:              r.opts.Time,
		TransactionID:     r.opts.TransactionID,
		DataSM:            dataRoot,
		MetadataSM:        metaRoot,
		MappingRoot:       mapRoot.Block,
		DetailsRoot:       detRoot.Block,
		DataBlockSize:     r.opts.DataBlockSize,
		MetadataBlockSize: thin.MetadataBlockSectors,
		MetadataNrBlocks:  r.nrMeta,
	}
	sb.Encode(r.scratch, 0)
	if err := r.out.put(0, r.scratch); err != nil {
		return err
	}
	return r.out.flush()
}
