// Package thin decodes the dm-thin pool structures that sit on top of the
// persistent-data b-trees and space maps (drivers/md/dm-thin-metadata.c).
//
// Superblock (block 0; the held metadata snapshot is a copy elsewhere):
//
//	offset size field
//	0      4    csum (block.Superblock salt)
//	4      4    flags (bit 0: NEEDS_CHECK)
//	8      8    blocknr
//	16     16   uuid (zero in practice)
//	32     8    magic 27022010
//	40     4    version (2)
//	44     4    time
//	48     8    trans_id
//	56     8    metadata_snap (block of the held snapshot, 0 = none)
//	64     128  data space-map root
//	192    128  metadata space-map root
//	320    8    data_mapping_root
//	328    8    device_details_root
//	336    4    data_block_size (sectors)
//	340    4    metadata_block_size (sectors, 8)
//	344    8    metadata_nr_blocks
//	352    4    compat_flags
//	356    4    compat_ro_flags
//	360    4    incompat_flags
//
// Device details (24-byte values of the details tree, keyed by thin id):
// mapped_blocks (8), transaction_id (8), creation_time (4),
// snapshotted_time (4).
//
// Mapping tree: the top level maps a thin id to the root of that device's
// bottom-level tree; a bottom leaf maps a virtual block to a block_time,
// data_block<<24 | time&0xFFFFFF.
//
// Walker (walk.go) reads a superblock's trees in key order for dump and
// repair, one node at a time; the parallel checker and the usage count
// walk the trees their own way. This package counts no references.
package thin
