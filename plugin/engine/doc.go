// Package engine reads what the plugin needs from a Docker Engine: the
// storage driver, the devicemapper pool behind it and where its metadata
// lives, from the DriverStatus pairs of GET /info.
//
// Devicemapper hosts run engines from 1.12 (API 1.24) to 24.0 (API 1.43).
// Their DriverStatus changed over that time and this package reads every
// form seen in real answers:
//
//   - sizes: "65.54 kB" (engines before 17.06) and "65.54kB" (after), in
//     decimal units as docker's go-units HumanSize prints them;
//   - key order: the pre-17.12 order and the later one (Udev Sync after
//     Backing Filesystem, the four file keys before the space keys);
//   - loop-lvm pools list "Data file", "Metadata file" (the loop devices)
//     and "Data loop file", "Metadata loop file" (the backing files);
//     direct-lvm pools (dm.thinpooldev) list none of them, or list the two
//     first ones empty.
//
// The package asks nothing that could start a daemon: callers decide
// whether to talk to the engine at all (see package daemon). It does not
// open the metadata.
package engine
