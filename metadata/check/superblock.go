package check

import (
	"errors"
	"fmt"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// scanLimit bounds how many blocks are looked at to decide whether input
// whose superblock is bad is thin metadata at all.
const scanLimit = 4096

// checkSuperblock reads and checks the live superblock (and the held
// snapshot's, if any) and sets the bounds the walk uses. It returns false
// when the rest cannot be checked; the findings say why.
func (c *checker) checkSuperblock() (bool, error) {
	buf := make([]byte, block.Size)
	if err := c.r.ReadRaw(buf, 0); err != nil {
		return false, err
	}
	if verr := block.Verify(buf, 0, block.Superblock); verr != nil {
		if !errors.Is(verr, block.ErrCorrupt) {
			return false, verr
		}
		if looksLikeXML(buf) {
			return false, fmt.Errorf("%w: this looks like XML; check reads the binary metadata (use 'restore' to turn a dump back into metadata)", ErrNotMetadata)
		}
		found, err := c.anyStructure()
		if err != nil {
			return false, err
		}
		if !found {
			return false, fmt.Errorf("%w: no block of the first %d carries a dm-thin checksum", ErrNotMetadata, min(c.r.Len(), scanLimit))
		}
		c.add(Finding{Severity: Fatal, Area: AreaSuperblock, Block: u64(0), Message: fmt.Sprintf("superblock is unreadable: %v", unwrapBlock(verr))})
		return false, nil
	}
	sb := thin.ParseSuperblock(buf)
	c.sb = sb
	c.rep.TransactionID, c.rep.Time, c.rep.Flags, c.rep.DataBlockSize = sb.TransactionID, sb.Time, sb.Flags, sb.DataBlockSize

	ok := true
	bad := func(format string, args ...any) {
		c.fatal(AreaSuperblock, format, args...)
		ok = false
	}
	// What the reference checkers skip, the kernel refuses: check it.
	if sb.Magic != thin.Magic {
		c.fatal(AreaSuperblock, "bad magic %d, expected %d (the kernel refuses to open this pool)", sb.Magic, thin.Magic)
	}
	if sb.Version < 1 || sb.Version > thin.Version {
		c.fatal(AreaSuperblock, "unsupported metadata version %d (the kernel supports 1 to %d)", sb.Version, thin.Version)
	}
	if sb.IncompatFlags != 0 {
		c.fatal(AreaSuperblock, "unknown incompatible feature flags %#x (the kernel refuses to open this pool)", sb.IncompatFlags)
	}
	if sb.CompatROFlags != 0 {
		c.fatal(AreaSuperblock, "unknown read-only-compatible feature flags %#x (the kernel opens this pool read-only)", sb.CompatROFlags)
	}
	if sb.MetadataBlockSize != thin.MetadataBlockSectors {
		c.fatal(AreaSuperblock, "metadata block size %d sectors, expected %d", sb.MetadataBlockSize, thin.MetadataBlockSectors)
	}
	if d := sb.DataBlockSize; d < thin.MinDataBlockSize || d > thin.MaxDataBlockSize || d%thin.MinDataBlockSize != 0 {
		c.fatal(AreaSuperblock, "data block size %d sectors out of range (128 to 2097152, a multiple of 128)", d)
	}
	if sb.Flags&thin.FlagNeedsCheck != 0 {
		c.warn(AreaSuperblock, "the kernel set the needs_check flag after an error")
	}
	if sb.Flags&^uint32(thin.FlagNeedsCheck) != 0 {
		c.warn(AreaSuperblock, "unknown flags %#x", sb.Flags&^uint32(thin.FlagNeedsCheck))
	}

	// Bounds for every pointer: the metadata space map's size, cut to the
	// device and to what one index block covers.
	msm := sb.MetadataSM
	c.nrMeta = block.Nr(msm.NrBlocks)
	switch {
	case msm.NrBlocks == 0:
		bad("metadata space map has no blocks")
	case msm.NrBlocks > uint64(c.r.Len()):
		c.fatal(AreaMetadataSM, "metadata space map covers %d blocks but the device holds only %d (truncated copy?)", msm.NrBlocks, c.r.Len())
		c.nrMeta = c.r.Len()
	}
	if c.nrMeta > spacemap.MaxMetadataBlocks {
		c.fatal(AreaMetadataSM, "metadata space map covers %d blocks, more than the %d an index block can hold", msm.NrBlocks, spacemap.MaxMetadataBlocks)
		c.nrMeta = spacemap.MaxMetadataBlocks
	}
	if sb.MetadataNrBlocks != msm.NrBlocks {
		c.warn(AreaSuperblock, "metadata_nr_blocks %d differs from the metadata space map's %d blocks", sb.MetadataNrBlocks, msm.NrBlocks)
	}
	if msm.NrAllocated > msm.NrBlocks {
		c.fatal(AreaMetadataSM, "nr_allocated %d exceeds nr_blocks %d", msm.NrAllocated, msm.NrBlocks)
	}

	// Data blocks: every bitmap needs a metadata block, which bounds what
	// nr_blocks can honestly claim and so what may be allocated for it.
	dsm := sb.DataSM
	c.nrData = dsm.NrBlocks
	switch {
	case dsm.NrBlocks > thin.MaxDataBlocks:
		c.fatal(AreaDataSM, "data space map claims %d blocks, more than a mapping can address (2^40)", dsm.NrBlocks)
		c.nrData = 0
	case dsm.NrBitmaps() > uint64(c.nrMeta):
		c.fatal(AreaDataSM, "data space map claims %d blocks, which needs %d bitmaps: more than the %d metadata blocks", dsm.NrBlocks, dsm.NrBitmaps(), c.nrMeta)
		c.nrData = 0
	}
	if dsm.NrAllocated > dsm.NrBlocks {
		c.fatal(AreaDataSM, "nr_allocated %d exceeds nr_blocks %d", dsm.NrAllocated, dsm.NrBlocks)
	}
	if !ok {
		return false, nil
	}

	c.trees = sb
	if sb.MetadataSnap != 0 {
		snap, err := c.readSnapshot(buf)
		if err != nil {
			return false, err
		}
		c.snap = snap
		if c.opts.MetadataSnap {
			if snap == nil {
				return false, nil // held but unreadable: the findings say why
			}
			c.trees = *snap
			c.rep.TransactionID, c.rep.Time, c.rep.Flags = snap.TransactionID, snap.Time, snap.Flags
		}
	} else if c.opts.MetadataSnap {
		return false, fmt.Errorf("%w in this metadata", thin.ErrNoSnapshot)
	}
	return true, nil
}

// readSnapshot reads the held metadata snapshot's superblock copy. A bad
// copy is a finding, not an error.
func (c *checker) readSnapshot(buf []byte) (*thin.Superblock, error) {
	n := c.sb.MetadataSnap
	if n >= c.nrMeta {
		c.fatal(AreaSuperblock, "metadata snapshot at block %d lies past the end of the metadata (%d blocks)", n, c.nrMeta)
		return nil, nil
	}
	if err := c.r.ReadInto(buf, n, block.Superblock); err != nil {
		if !errors.Is(err, block.ErrCorrupt) {
			return nil, err
		}
		c.add(Finding{Severity: Fatal, Area: AreaSuperblock, Block: u64(uint64(n)), Message: fmt.Sprintf("metadata snapshot is unreadable: %v", unwrapBlock(err))})
		return nil, nil
	}
	s := thin.ParseSuperblock(buf)
	if s.Magic != thin.Magic {
		c.add(Finding{Severity: Fatal, Area: AreaSuperblock, Block: u64(uint64(n)), Message: fmt.Sprintf("metadata snapshot has bad magic %d", s.Magic)})
	}
	return &s, nil
}

// anyStructure reports whether any of the first blocks carries a dm-thin
// checksum: a wiped superblock over real metadata is damage, random bytes
// are not metadata at all.
func (c *checker) anyStructure() (bool, error) {
	n := min(c.r.Len(), scanLimit)
	buf := make([]byte, 64*block.Size)
	for at := block.Nr(1); at < n; {
		cnt := min(n-at, 64)
		b := buf[:cnt*block.Size]
		if err := c.r.ReadRaw(b, at); err != nil {
			return false, err
		}
		for i := block.Nr(0); i < cnt; i++ {
			blk := b[i*block.Size : (i+1)*block.Size]
			if block.KindOf(blk) != block.Unknown && block.Location(blk) == at+i {
				return true, nil
			}
		}
		at += cnt
	}
	return false, nil
}

// unwrapBlock drops the "block N:" prefix where the finding already says
// which block.
func unwrapBlock(err error) error {
	var be *block.Error
	if errors.As(err, &be) {
		return be.Err
	}
	return err
}
