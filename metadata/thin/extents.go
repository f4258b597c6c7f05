package thin

import (
	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
)

// Allocated lists the metadata blocks the live superblock's metadata
// space map says are in use, as extents merged across gaps of up to gap
// blocks: what a walk of the trees will read. It reads the index block
// and the bitmaps; on any problem it returns nil (the list is only a
// hint for read-ahead).
func Allocated(r *block.Reader, sb Superblock, gap block.Nr) []block.Extent {
	nr := min(sb.MetadataSM.NrBlocks, uint64(r.Len()), spacemap.MaxMetadataBlocks)
	buf := make([]byte, block.Size)
	if err := r.ReadInto(buf, sb.MetadataSM.BitmapRoot, block.Index); err != nil {
		return nil
	}
	es, err := spacemap.ParseIndexBlock(buf, spacemap.BitmapsFor(nr))
	if err != nil {
		return nil
	}
	var out []block.Extent
	vals := make([]uint8, spacemap.EntriesPerBitmap)
	for i, e := range es {
		if err := r.ReadInto(buf, e.Blocknr, block.Bitmap); err != nil {
			return nil
		}
		base := uint64(i) * spacemap.EntriesPerBitmap
		n := int(min(spacemap.EntriesPerBitmap, nr-base))
		spacemap.Decode(buf, vals, n)
		for j, v := range vals[:n] {
			if v == 0 {
				continue
			}
			b := block.Nr(base) + block.Nr(j)
			if k := len(out) - 1; k >= 0 && b-(out[k].Start+out[k].Len) <= gap {
				out[k].Len = b - out[k].Start + 1
				continue
			}
			out = append(out, block.Extent{Start: b, Len: 1})
		}
	}
	return out
}
