// Package scan finds what survives of a dm-thin pool's metadata when its
// roots are lost: it reads every block of the metadata device once, keeps
// compact facts about each valid b-tree node, rebuilds subtree summaries
// bottom-up and proposes root candidates.
//
// A block counts as a b-tree node when the b-tree salt fits its checksum,
// it records its own location, and its header is sane (flags, value size
// 4, 8, 16 or 24, max_entries, nr_entries, keys strictly ascending; see
// package btree). Blocks with the superblock salt are listed as superblock
// copies (block 0, the held metadata snapshot, stale copies); space-map
// bitmaps and index blocks are counted.
//
// Classification (value size, then contents):
//
//	value size  leaf                                  internal node
//	24          device details                        typed from its children:
//	8           top level, when keys < 2^24 and       details, top level or device
//	            values lead to device trees;          tree, whichever its first
//	            else a device's leaf (block_times)    valid child is
//	16, 4       space-map index / overflow: ignored
//
// A device's leaf is implausible when a block_time maps a data block past
// the data device or carries a time newer than the pool's (both taken
// from the superblock when readable, or from Options).
//
// Each node gets a summary of its subtree: key range, devices, mappings,
// highest data block, age (newest time of a block_time, or of a creation
// or snapshot in details), how many mappings carry that age, height, and
// the problems found anywhere below (child missing or of another tree,
// keys out of order, uneven depth, loop, too deep, implausible values).
//
// Root candidates are nodes no valid internal node of the same tree
// points to. Top levels pair with details trees that list exactly the
// same thin ids. Everything is ranked newest first: consistent before
// damaged, then by age, mappings at that age, and mappings. This is where
// the package departs from thin_repair and thin_dump --repair, which
// silently take an older root pair found in free blocks when the live one
// is damaged: here the superblock's roots win whenever they are valid,
// scanned roots only fill the gaps, and every candidate carries its age
// and a Stale set (another valid live root exists, newer device trees are
// unreachable from it, it is older than the superblock's time) so that the
// caller can tell the user when what was found is older than what was
// committed.
//
// Device trees that the chosen mapping tree does not reach are orphans
// (Result.Orphans): lost devices, stale versions of live ones, deleted
// devices. Names gives the thin ids any surviving top-level leaf gives
// them; Matches the devices of the chosen details tree without a root
// whose mapped_blocks equal the tree's mappings.
//
// The read goes through the device in 1 MiB chunks spread over
// GOMAXPROCS goroutines, each with its own buffer. Memory is 4 bytes per
// block, about 100 bytes per valid node, the keys and values of internal
// nodes, top-level leaves and details leaves (not of devices' leaves, the
// bulk of a pool), and the candidate lists, which Options bound. Later
// phases work on those facts alone and read nothing more. Nothing here
// writes; rebuilding trees and the superblock belongs to package repair.
package scan
