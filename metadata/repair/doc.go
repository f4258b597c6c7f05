// Package repair writes repaired dm-thin pool metadata: what thin_repair
// does, with a stricter promise about what it keeps.
//
// It reads the input with check.Run and its own damage-tolerant walk, then
// takes one of three ways, the least invasive that fixes everything found:
//
//	found                          done                          kept
//	nothing                        nothing                       everything
//	space maps wrong (bad counts,  every block the trees use is  every tree block at its
//	leaks, damaged space-map       copied to where it was; both  place: snapshots keep
//	blocks), trees intact          space maps are rebuilt from   sharing subtrees, metadata
//	                               the recount (check.Recount)   use never grows
//	                               into free blocks with
//	                               restore.WriteSpaceMaps; the
//	                               superblock last
//	damaged bottom-level nodes,    the trees are rebuilt through every readable mapping;
//	wrong mapped_blocks, lost      a restore.Restorer: readable  bottom leaves reached from
//	details, mappings past         leaves are fed in, damaged    several devices are written
//	nr_data_blocks, devices only   nodes left out; a leaf        once and shared; the pool's
//	one tree lists                 several devices reach is      transaction id, time, flags,
//	                               written once (a def) and      data block size and size and
//	                               shared (RefLeaves); devices   every device's details
//	                               that shared a whole tree
//	                               share it again (shareRoots)
//	lost roots: a top-level node   package scan reads every      the newest trees the scan
//	or the details root            block and proposes roots; the ranks first; each device's
//	unreadable, or the superblock  trees found are rebuilt as    tree, when no top level fits
//	(with the pool's values given  above                         the details, is the newest a
//	as Options)                                                  surviving top-level leaf names
//
// Rules where the input contradicts itself, each reported:
//
//   - A mapping to a data block at or past nr_data_blocks is dropped.
//   - Data blocks mapped by several devices are legal (snapshots share
//     them); their counts are rebuilt from the trees, never taken from the
//     old space maps.
//   - A device with a mapping tree but no details gets details rebuilt from
//     its mappings: mapped_blocks the real count, transaction id the
//     pool's, creation time the oldest mapping's time, snapshot time the
//     pool time (so the kernel treats every older mapping as shared and
//     copies before writing: safe whatever the device really shared).
//   - A device with details but no mapping tree keeps its details with no
//     mappings.
//   - mapped_blocks is always the real count.
//   - A held metadata snapshot is kept by the space-map repair and dropped
//     by a tree rebuild (the Restorer writes none); the report says so.
//
// Files: Repair writes to any io.WriterAt; RepairFile adds the file
// protocol (an exclusive lock on the input, O_EXCL on block devices, a
// temporary file fsynced and checked before a rename, a backup first for
// an in-place repair), so that a repair killed at any moment leaves the
// original or the complete repaired metadata, never a mix.
//
// This package does not guess pool values: where the superblock is lost
// they come from Options, and the report says where each came from.
package repair
