// Package block reads and writes the 4 KiB blocks of a dm-thin metadata
// device and verifies their checksums.
//
// Every structure block starts with the same 16-byte prefix:
//
//	offset size field
//	0      4    csum: crc32c(bytes 4..4095) XOR a per-kind salt
//	4      4    flags (superblock, b-tree node) or padding
//	8      8    blocknr: the block's own location
//
// The checksum is the kernel's dm_bm_checksum (drivers/md/persistent-data/
// dm-block-manager.c): CRC-32C seeded with ~0, without the final inversion,
// XORed with the salt of the block's kind (drivers/md/dm-thin-metadata.c,
// persistent-data/dm-btree.c, dm-space-map-common.c).
//
// This package is the only place that checks checksums; parsers elsewhere
// take bytes that have already been verified. It knows nothing of b-trees or
// space maps.
package block
