package dm

import (
	"fmt"
	"strconv"
	"strings"
)

// PoolTable is a thin-pool target's table line.
type PoolTable struct {
	MetadataDev   string // "major:minor"
	DataDev       string
	DataBlockSize uint64 // sectors
	LowWaterMark  uint64
	Features      []string
}

// ParsePoolTable reads a thin-pool table line.
func ParsePoolTable(s string) (PoolTable, error) {
	f := strings.Fields(s)
	if len(f) < 4 {
		return PoolTable{}, fmt.Errorf("thin-pool table %q: want at least 4 fields", s)
	}
	t := PoolTable{MetadataDev: f[0], DataDev: f[1]}
	var err error
	if t.DataBlockSize, err = strconv.ParseUint(f[2], 10, 64); err != nil {
		return PoolTable{}, fmt.Errorf("thin-pool table %q: data block size: %w", s, err)
	}
	if t.LowWaterMark, err = strconv.ParseUint(f[3], 10, 64); err != nil {
		return PoolTable{}, fmt.Errorf("thin-pool table %q: low water mark: %w", s, err)
	}
	if len(f) > 4 {
		n, err := strconv.Atoi(f[4])
		if err != nil || n != len(f)-5 {
			return PoolTable{}, fmt.Errorf("thin-pool table %q: feature count does not match", s)
		}
		t.Features = f[5:]
	}
	return t, nil
}

// PoolStatus is a thin-pool target's status line.
type PoolStatus struct {
	Failed        bool // "Fail" or "Error": the kernel gave up on the pool
	TransactionID uint64
	MetaUsed      uint64
	MetaTotal     uint64
	DataUsed      uint64
	DataTotal     uint64
	HeldRoot      uint64 // block of the held metadata snapshot, 0 = none
	Mode          string // rw, ro, out_of_data_space
	NeedsCheck    bool
	Raw           string
}

// ParsePoolStatus reads a thin-pool status line.
func ParsePoolStatus(s string) (PoolStatus, error) {
	st := PoolStatus{Raw: s}
	f := strings.Fields(s)
	if len(f) == 1 && (f[0] == "Fail" || f[0] == "Error") {
		st.Failed = true
		return st, nil
	}
	if len(f) < 5 {
		return st, fmt.Errorf("thin-pool status %q: want at least 5 fields", s)
	}
	var err error
	num := func(dst *uint64, v, what string) {
		if err != nil {
			return
		}
		if *dst, err = strconv.ParseUint(v, 10, 64); err != nil {
			err = fmt.Errorf("thin-pool status %q: %s: %w", s, what, err)
		}
	}
	pair := func(a, b *uint64, v, what string) {
		x, y, ok := strings.Cut(v, "/")
		if !ok && err == nil {
			err = fmt.Errorf("thin-pool status %q: %s is not used/total", s, what)
			return
		}
		num(a, x, what)
		num(b, y, what)
	}
	num(&st.TransactionID, f[0], "transaction id")
	pair(&st.MetaUsed, &st.MetaTotal, f[1], "metadata blocks")
	pair(&st.DataUsed, &st.DataTotal, f[2], "data blocks")
	if f[3] != "-" {
		num(&st.HeldRoot, f[3], "held metadata root")
	}
	if err != nil {
		return st, err
	}
	st.Mode = f[4]
	for _, x := range f[5:] {
		if x == "needs_check" {
			st.NeedsCheck = true
		}
	}
	return st, nil
}
