// Package xml writes and reads the XML that thin_dump prints for dm-thin
// pool metadata, and two other renderings of the same content.
//
// The schema (thin_dump 0.9.0, element by element, attributes in order):
//
//	<superblock uuid="" time="T" transaction="N" flags="F" version="2" data_block_size="S" nr_data_blocks="B">
//	  <device dev_id="I" mapped_blocks="M" transaction="N" creation_time="T" snap_time="T">
//	    <single_mapping origin_block="V" data_block="D" time="T"/>
//	    <range_mapping origin_begin="V" data_begin="D" length="L" time="T"/>
//	  </device>
//	</superblock>
//
// Indentation is two spaces per level, a device without mappings still has
// separate open and close tags, and the output ends with a newline.
// Consecutive mappings whose virtual and data blocks both go up by one and
// whose times are equal form one run, printed as range_mapping (or as
// single_mapping when the run is one block long), whatever b-tree leaves
// they come from.
//
// thin_dump 1.x omits flags when it is 0, may add metadata_snap to the
// superblock, and factors leaves that several devices share out into
// <def name="B">…</def> elements before the devices, which the devices then
// name with <ref name="B"/>. Runs never cross a def/ref boundary there.
//
// Writer prints the 0.9.0 XML byte for byte, 0.9.0's human_readable
// format, or JSON. Dump walks binary metadata (package thin) into any
// Visitor; Read parses XML of either version into one. Expand turns def/ref
// into plain runs for visitors that cannot share.
//
// This package does not check metadata beyond what walking it needs, and
// does not write binary metadata.
package xml
