package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// lowerCount gives a pool the damage of the classic report: it lowers by
// one the stored count of the first data block that two leaves map
// ("B: was 1, expected 2"), and reseals that bitmap. It returns B.
func lowerCount(path string) (uint64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	r := block.NewReader(f, st.Size())
	sb, err := thin.ReadSuperblock(r, 0)
	if err != nil {
		return 0, err
	}
	var bitmaps []spacemap.IndexEntry
	buf := make([]byte, block.Size)
	var walk func(n block.Nr, depth int) error
	walk = func(n block.Nr, depth int) error {
		if depth > thin.MaxDepth {
			return errors.New("data space map index too deep")
		}
		if err := r.ReadInto(buf, n, block.Node); err != nil {
			return err
		}
		nd, err := btree.ParseNode(buf, n, spacemap.IndexEntrySize)
		if err != nil {
			return err
		}
		if !nd.Internal {
			for i := range nd.NrEntries {
				bitmaps = append(bitmaps, spacemap.ParseIndexEntry(nd.Value(i)))
			}
			return nil
		}
		kids := make([]block.Nr, nd.NrEntries)
		for i := range kids {
			kids[i] = nd.Child(i)
		}
		for _, k := range kids {
			if err := walk(k, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(sb.DataSM.BitmapRoot, 0); err != nil {
		return 0, fmt.Errorf("reading the data space map index: %w", err)
	}
	for i, e := range bitmaps {
		if err := r.ReadInto(buf, e.Blocknr, block.Bitmap); err != nil {
			return 0, err
		}
		for j := range spacemap.EntriesPerBitmap {
			if spacemap.Get(buf, j) != 2 {
				continue
			}
			spacemap.Set(buf, j, 1)
			block.Seal(buf, block.Bitmap)
			if _, err := f.WriteAt(buf, int64(e.Blocknr)*block.Size); err != nil {
				return 0, err
			}
			return uint64(i)*spacemap.EntriesPerBitmap + uint64(j), f.Sync()
		}
	}
	return 0, errors.New("no data block has a count of 2")
}
