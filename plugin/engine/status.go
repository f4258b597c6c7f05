package engine

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Space is one of the pool's space lines, in bytes.
type Space struct {
	Used, Total, Available uint64
}

// Fraction is Used/Total, or 0 when Total is unknown.
func (s Space) Fraction() float64 {
	if s.Total == 0 {
		return 0
	}
	return float64(s.Used) / float64(s.Total)
}

// DeviceMapper is the devicemapper driver's view of its thin pool.
type DeviceMapper struct {
	PoolName          string
	PoolBlocksize     uint64 // bytes, a multiple of 512
	BaseDeviceSize    uint64 // bytes
	BackingFilesystem string
	DataFile          string // the data device (a loop device with loop-lvm)
	MetadataFile      string // the metadata device
	DataLoopFile      string // loop-lvm: the file behind DataFile
	MetadataLoopFile  string // loop-lvm: the file behind MetadataFile
	Data              Space
	Metadata          Space
	MinFreeSpace      uint64
	UdevSync          bool
	DeferredRemoval   bool
	DeferredDeletion  bool
	DeferredDeleted   int
	LibraryVersion    string
	// Unknown keeps pairs this package does not know, in order.
	Unknown [][2]string
}

// LoopLVM reports whether the pool sits on loop devices over files, the
// default that docker sets up by itself.
func (d *DeviceMapper) LoopLVM() bool { return d.MetadataLoopFile != "" || d.DataLoopFile != "" }

// MetadataPath is where the pool's metadata can be read: the loop file of
// a loop-lvm pool; the metadata device if the engine names one; for an LVM
// thin pool (dm.thinpooldev) its hidden metadata volume, which LVM names
// POOL_tmeta under /dev/mapper.
func (d *DeviceMapper) MetadataPath() string {
	switch {
	case d.MetadataLoopFile != "":
		return d.MetadataLoopFile
	case d.MetadataFile != "":
		return d.MetadataFile
	case d.PoolName != "":
		return "/dev/mapper/" + d.PoolName + "_tmeta"
	}
	return ""
}

// ErrNotDeviceMapper: the engine uses another storage driver.
var ErrNotDeviceMapper = errors.New("the engine does not use the devicemapper storage driver")

// ParseDriverStatus reads the devicemapper DriverStatus pairs. It accepts
// both size spellings and any key order; a value it cannot read is an
// error naming the key.
func ParseDriverStatus(pairs [][2]string) (*DeviceMapper, error) {
	d := &DeviceMapper{}
	var errs []error
	size := func(dst *uint64, k, v string) {
		n, err := ParseSize(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", k, err))
			return
		}
		*dst = n
	}
	flag := func(dst *bool, k, v string) {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %q is not true or false", k, v))
			return
		}
		*dst = b
	}
	for _, p := range pairs {
		k, v := strings.TrimSpace(p[0]), strings.TrimSpace(p[1])
		switch k {
		case "Pool Name":
			d.PoolName = v
		case "Pool Blocksize":
			// Printed rounded ("65.54kB"); the real size is a whole
			// number of 512-byte sectors (65536).
			size(&d.PoolBlocksize, k, v)
			d.PoolBlocksize = (d.PoolBlocksize + 256) / 512 * 512
		case "Base Device Size":
			size(&d.BaseDeviceSize, k, v)
		case "Backing Filesystem":
			d.BackingFilesystem = v
		case "Data file":
			d.DataFile = v
		case "Metadata file":
			d.MetadataFile = v
		case "Data loop file":
			d.DataLoopFile = v
		case "Metadata loop file":
			d.MetadataLoopFile = v
		case "Data Space Used":
			size(&d.Data.Used, k, v)
		case "Data Space Total":
			size(&d.Data.Total, k, v)
		case "Data Space Available":
			size(&d.Data.Available, k, v)
		case "Metadata Space Used":
			size(&d.Metadata.Used, k, v)
		case "Metadata Space Total":
			size(&d.Metadata.Total, k, v)
		case "Metadata Space Available":
			size(&d.Metadata.Available, k, v)
		case "Thin Pool Minimum Free Space":
			size(&d.MinFreeSpace, k, v)
		case "Udev Sync Supported":
			flag(&d.UdevSync, k, v)
		case "Deferred Removal Enabled":
			flag(&d.DeferredRemoval, k, v)
		case "Deferred Deletion Enabled":
			flag(&d.DeferredDeletion, k, v)
		case "Deferred Deleted Device Count":
			n, err := strconv.Atoi(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %q is not a number", k, v))
			}
			d.DeferredDeleted = n
		case "Library Version":
			d.LibraryVersion = v
		default:
			d.Unknown = append(d.Unknown, [2]string{k, v})
		}
	}
	if d.PoolName == "" {
		errs = append(errs, errors.New("no Pool Name: this is not a devicemapper DriverStatus"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("reading the devicemapper status: %w", err)
	}
	return d, nil
}

var units = map[string]float64{
	"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "PB": 1e15, "EB": 1e18,
	// The binary spellings appear in logs and in hand-written flags.
	"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40, "PiB": 1 << 50,
}

// ParseSize reads a size as the engine prints it: "65.54kB", "65.54 kB",
// "1.074GB", "0 B", "524.3 kB". Units are decimal, as go-units HumanSize
// writes them.
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("%q is not a size", s)
	}
	num, err := strconv.ParseFloat(t[:i], 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size", s)
	}
	unit := strings.TrimSpace(t[i:])
	if unit == "" {
		unit = "B"
	}
	m, ok := units[unit]
	if !ok {
		return 0, fmt.Errorf("%q has an unknown unit %q", s, unit)
	}
	v := num * m
	if v >= math.MaxUint64 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return uint64(math.Round(v)), nil
}
