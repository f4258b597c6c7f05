// Package spacemap decodes the on-disk space maps of persistent-data
// (drivers/md/persistent-data/dm-space-map-common.h) and keeps in-core
// reference counts to compare them against.
//
// Space-map root (the 128-byte areas of the superblock; 32 bytes used):
//
//	offset size field
//	0      8    nr_blocks
//	8      8    nr_allocated (blocks whose count > 0)
//	16     8    bitmap_root: data - root of the index b-tree (16-byte values);
//	            metadata - the single index block
//	24     8    ref_count_root: overflow b-tree, block -> le32 count
//
// Index entry (16 bytes): blocknr (8), nr_free (4), none_free_before (4).
//
// Metadata index block: csum (4), padding (4), blocknr (8), then 255 index
// entries. Bitmap block: csum (4), unused (4), blocknr (8), then 4080 bytes
// of 2-bit counts, 16320 per bitmap. Entry j sits in byte 16+j/4 at bit
// s = 2*(j%4); bit s is the value's high bit and bit s+1 its low bit. A
// value of 3 means "3 or more": the overflow tree holds the count.
//
// This package neither walks trees nor opens files.
package spacemap
