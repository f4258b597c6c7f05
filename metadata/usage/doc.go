// Package usage works out how much data each thin device holds, as
// thin_ls reports it: mapped blocks, blocks no other device maps
// (exclusive) and blocks some other device maps too (shared), all in pool
// data blocks.
//
// Snapshots share b-tree subtrees, so the work is done per distinct node,
// not per device: internal nodes are read once to find, for every bottom
// leaf, how many devices reach it; each distinct leaf is then read once
// to count, for every data block, how many devices map it; and the leaves
// that only one device reaches are read once more to count what is
// exclusive. The cost grows with the metadata's size, not with the number
// of devices that share it.
//
// It does not check the metadata: damage ends the run with an error that
// says to run check.
package usage
