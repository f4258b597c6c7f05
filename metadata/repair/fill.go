package repair

import (
	"cmp"
	"slices"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/btree"
	"github.com/docker-devmapper/docker-devmapper/metadata/scan"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
)

// fill finds what an older tree of device id still maps in keys, a range
// that damage took out of the device's tree at root. Copy-on-write leaves
// older versions of a device's tree in free blocks; a scan lists them.
// The candidates are consistent trees other than root that belong to id
// (see ownedBy), newest first; the first that maps
// anything in keys gives it. Mappings past nr_data_blocks are left out.
// It returns nothing before a scan has run; the result depends only on
// the input, so the analysis and the rebuild get the same answer.
//
// Filling from an older tree is what thin_repair does too. The data those
// mappings point at may be older than what the lost ones pointed at; the
// report says how many mappings came from where.
func (p *Plan) fill(id thin.DevID, root block.Nr, keys thin.KeyRange) ([]thin.Mapping, block.Nr) {
	if p.sres == nil {
		return nil, 0
	}
	var cands []scan.DeviceTree
	for _, d := range p.sres.Devices {
		if !d.Consistent() || d.Root == root || d.First > keys.Last || d.Last < keys.First {
			continue
		}
		if p.ownedBy(d, id) {
			cands = append(cands, d)
		}
	}
	slices.SortStableFunc(cands, func(a, b scan.DeviceTree) int { return cmp.Compare(b.Age, a.Age) })
	if p.fillWalker == nil {
		p.fillWalker = newWalker(p.in)
	}
	for _, c := range cands {
		var ms []thin.Mapping
		err := p.fillWalker.walk(c.Root, 8, func(_ block.Nr, n btree.Node) error {
			for i := range n.NrEntries {
				k := n.Key(i)
				if !keys.Contains(k) {
					continue
				}
				bt := thin.BlockTime(n.U64(i))
				if uint64(bt.Block()) >= p.nrData {
					continue
				}
				ms = append(ms, thin.Mapping{VBlock: thin.VBlock(k), Data: bt.Block(), Time: bt.Time()})
			}
			return nil
		}, func(damage) {})
		if err == nil && len(ms) > 0 {
			return ms, c.Root
		}
	}
	return nil, 0
}
