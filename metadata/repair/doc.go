// Package repair writes repaired dm-thin pool metadata: what thin_repair
// does, with a stricter promise about what it keeps.
//
// It reads the input with check.Run and its own damage-tolerant walk, then
// takes the least invasive of three ways that fixes everything found:
//
//	found                           done                              kept
//	nothing                         nothing                           everything
//	space maps wrong (bad counts,   every block the trees use is      every tree block at its place:
//	leaks, damaged space-map        copied to where it was; both      snapshots keep sharing
//	blocks), or only a wrong        space maps are rebuilt from the   subtrees, metadata use never
//	mapped_blocks, trees intact     recount (check.Recount) into      grows; a wrong mapped_blocks
//	                                free blocks with                  is corrected in its leaf
//	                                restore.WriteSpaceMaps; the
//	                                superblock last
//	damaged bottom-level nodes,     the trees are rebuilt through a   every readable mapping; the
//	lost details, mappings past     restore.Restorer: readable        pool's transaction id, time,
//	nr_data_blocks, devices only    leaves are fed in, damaged nodes  flags, data block size and
//	one tree lists, a device root   left out; a leaf several devices  size; every device's details;
//	pointing at the wrong tree      reach is written once (a def)     leaves shared as they were,
//	                                and shared (RefLeaves); devices   and whole trees shared as
//	                                that shared a whole tree share    they were
//	                                it again (shareRoots)
//	lost roots: an unreadable       package scan reads every block    the newest trees the scan
//	top-level node or details       and proposes roots; the trees     ranks first
//	root, a root that is no tree    found are rebuilt as above
//	of its kind, or the superblock
//	(pool values given as Options)
//
// Older trees. Copy-on-write leaves earlier versions of every tree in free
// blocks, and a scan lists them. Repair uses them in three places, each
// reported: roots the superblock lost; a device whose top-level entry
// leads to a tree that holds more or fewer mappings than its details say,
// when a tree of that device holds as many (the kernel updates both in one
// transaction) and is no older than the tree found, unless that one maps
// past the data device or later than the pool time, as no device tree
// does; and ranges of virtual blocks lost with damaged
// nodes, filled from the newest older tree of the same device that maps
// them (thin_repair does this too; that data may be older). A tree belongs
// to a device when a surviving top-level leaf, live or stale, names it so,
// or when no leaf names it and that device alone has as many mappings.
//
// Rules where the input contradicts itself, each reported:
//
//   - A mapping to a data block at or past the superblock's nr_data_blocks
//     is dropped. A size given instead (an option, or the values file)
//     that the mappings pass is raised to the smallest that holds them:
//     the kernel never maps past the data device nor lets a pool shrink,
//     so that size is too small, and dropping the mappings would lose
//     data. One the metadata could not count is refused.
//   - Data blocks mapped by several devices are legal (snapshots share
//     them); their counts are rebuilt from the trees, never taken from the
//     old space maps.
//   - A device with a mapping tree but no details gets details rebuilt from
//     its mappings: mapped_blocks the real count, transaction id the
//     pool's, creation time the oldest mapping's time, snapshot time the
//     pool time (so the kernel treats every older mapping as shared and
//     copies before writing: safe whatever the device really shared).
//   - A device with details but no mapping tree keeps its details with no
//     mappings. After lost roots, unnamed trees a scan found that hold as
//     many mappings as its details count, and that no device took, are
//     listed as its candidates: other devices count as many too (else
//     the tree would be its), so which is whose is not guessed.
//   - A consistent device tree a scan found that no top-level leaf names
//     and no device's details count is listed as unclaimed, not given
//     back: without a thin id it has no device. With no top level and no
//     details tree left at all, repair refuses rather than invent ids.
//   - With no details tree left, the newest consistent top level a scan
//     found names the devices, and each gets details rebuilt from its
//     mappings as above.
//   - Only devices the details tree lists are kept when stale top-level
//     leaves name others: those are deleted devices.
//   - mapped_blocks is always the real count.
//   - A held metadata snapshot is kept where it is by the space-map
//     repair (dropped when unreadable). A tree rebuild keeps it when its
//     trees check intact and map nothing past the data device: they and
//     its superblock copy are copied into free blocks at the top of the
//     metadata, block numbers moved along, and the new superblock points
//     at the copy (the report says where). Otherwise it is dropped, and
//     the report says why.
//
// Files: Repair writes to any io.WriterAt; RepairFile adds the file
// protocol (an exclusive lock on the input, O_EXCL on block devices, a
// temporary file fsynced and checked before a rename, a backup first for
// an in-place repair), so that a repair killed at any moment leaves the
// original or the complete repaired metadata, never a mix. A block device
// in place is written as the kernel writes it, new blocks first and the
// superblock last, and only when every block that changes but the
// superblock is one the old metadata does not use; otherwise it is
// refused (ErrInPlaceUnsafe).
//
// This package does not guess pool values: where the superblock is lost
// they come from Options, or from the dump or metadata backup that
// Options.ValuesFrom names, and the report says where each came from. A
// transaction id from that file lower than a device's details show is
// raised to theirs, and the report says so. It never takes a new
// metadata snapshot, and it never writes its input except through
// RepairFile's in-place rename, or in place on a device as above.
package repair
