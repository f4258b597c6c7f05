// Package dm talks to the kernel's device-mapper through its ioctl
// interface (include/uapi/linux/dm-ioctl.h), in Go, without libdevmapper
// or dmsetup: the status and table of a thin pool, and the messages that
// reserve and release its metadata snapshot, so that a live pool's
// metadata can be read consistently.
//
// Thin-pool lines (Documentation/admin-guide/device-mapper/thin-provisioning.rst):
//
//	table:  <metadata dev> <data dev> <data block size> <low water mark> [<nr features> <feature>...]
//	status: <transaction id> <used meta>/<total meta> <used data>/<total data> <held metadata root>
//	        ro|rw|out_of_data_space [no_]discard_passdown error|queue_if_no_space
//	        needs_check|- [<metadata low watermark>]
//	        or "Fail", or "Error"
//
// The parsers are plain functions over those strings; only ioctl.go needs
// Linux.
package dm
