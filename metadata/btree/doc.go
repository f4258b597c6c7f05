// Package btree parses and encodes the nodes of persistent-data b-trees, the
// one node format every dm-thin tree uses (mapping top and bottom levels,
// device details, the data space map's index, both overflow trees).
//
// Node layout (drivers/md/persistent-data/dm-btree-internal.h):
//
//	offset        size                 field
//	0             4                    csum (block.Node salt)
//	4             4                    flags: 1 internal, 2 leaf
//	8             8                    blocknr (own location)
//	16            4                    nr_entries
//	20            4                    max_entries
//	24            4                    value_size
//	28            4                    padding
//	32            8*max_entries        keys, ascending
//	32+8*max      value_size*max       values
//
// Internal nodes hold 8-byte child block numbers. This package checks one
// node at a time; walking trees, counting references and key ranges across
// nodes belong to the callers. It does not verify checksums: package block
// does that before bytes reach ParseNode.
package btree
