// Package restore writes complete dm-thin pool metadata from a stream of
// devices and mappings: what thin_restore does, without the XML (the
// caller parses whatever it reads and drives a Restorer).
//
// What it writes, in block order:
//
//	block            contents                              written
//	0                superblock (block.Superblock salt)     last, after a Sync
//	1 ..             bottom-level leaves and internal nodes  as each fills
//	                 of every device and def, top-level and
//	                 details nodes, interleaved
//	then             metadata overflow tree (le32 values)   at End
//	                 data overflow tree (le32 values)
//	                 data bitmaps, data index b-tree
//	                 (16-byte index entries)
//	                 metadata bitmaps, metadata index block
//
// Superblock: magic 27022010, version 2 (or Options.Version), the given
// time, transaction id, flags and data_block_size, metadata_block_size 8,
// metadata_nr_blocks = the output size in blocks (at most
// spacemap.MaxMetadataBlocks), metadata_snap 0, uuid zero.
//
// Trees (drivers/md/dm-thin-metadata.c): top level dev id -> bottom root;
// bottom level virtual block -> block_time (data<<24 | time); details dev id
// -> {mapped_blocks, transaction_id, creation_time, snapshotted_time}.
// Nodes are packed full; every node but a root keeps at least a third of
// max_entries, as drivers/md/persistent-data/dm-btree.c does. Devices may
// share bottom leaves (a def, or leaves of an earlier device) or a whole
// tree (Snapshot), as kernel snapshots do.
//
// Space maps (drivers/md/persistent-data/dm-space-map-common.c), counted
// exactly:
//
//	metadata block   one per pointer to it: the superblock 1, each tree root
//	                 1 from the superblock, each child pointer of an internal
//	                 node, each top-level value; a shared node is counted per
//	                 pointer but contributes its own pointers once; every
//	                 space-map block (bitmaps, index block, index and
//	                 overflow tree nodes) 1
//	data block       the number of distinct bottom leaves that map it
//	nr_allocated     blocks with a non-zero count
//	index entry      nr_free = zero counts in the bitmap, entries past
//	                 nr_blocks included; none_free_before = the first zero
//
// Counts of 3 or more are 3 in the bitmap and the real value in the
// overflow tree.
//
// Memory: a byte per data and metadata block (in bitmap-sized pieces
// allocated as touched), one summary per bottom leaf and a few pending
// nodes per tree level; never the mappings themselves.
//
// WriteSpaceMaps writes just the two space maps from counts a caller
// made, for a repair that keeps the trees where they are.
//
// This package does not read XML, check existing metadata or write a
// metadata snapshot.
package restore
