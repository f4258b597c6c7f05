//go:build linux

package dm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The dm_ioctl header (include/uapi/linux/dm-ioctl.h), 312 bytes:
//
//	offset size field
//	0      12   version[3]
//	12     4    data_size (header + payload)
//	16     4    data_start (payload offset)
//	20     4    target_count
//	24     4    open_count
//	28     4    flags
//	32     4    event_nr
//	36     4    padding
//	40     8    dev
//	48     128  name
//	176    129  uuid
//	305    7    data (padding)
const (
	headerSize = 312
	nameLen    = 128

	cmdListDevices = 2
	cmdDevStatus   = 7
	cmdTableStatus = 12
	cmdTargetMsg   = 14

	flagStatusTable = 1 << 4 // DM_STATUS_TABLE_FLAG: the table, not the status
	flagBufferFull  = 1 << 8 // DM_BUFFER_FULL_FLAG: reply did not fit

	specSize = 40 // dm_target_spec: sector_start, length, status, next, target_type[16]
)

// ioctl numbers: _IOWR(0xfd, nr, struct dm_ioctl).
func ioc(nr uintptr) uintptr { return 3<<30 | headerSize<<16 | 0xfd<<8 | nr }

// ErrNoDevice: no device-mapper device has that name.
var ErrNoDevice = errors.New("no such device-mapper device")

// Control is an open /dev/mapper/control.
type Control struct{ f *os.File }

// Open opens the device-mapper control node. It needs root.
func Open() (*Control, error) {
	f, err := os.OpenFile("/dev/mapper/control", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the device-mapper control node: %w", err)
	}
	return &Control{f: f}, nil
}

// Close closes the control node.
func (c *Control) Close() error { return c.f.Close() }

// call runs one ioctl with name and payload, growing the buffer while the
// kernel says the reply did not fit, and returns the reply's payload.
func (c *Control) call(cmd uintptr, name string, flags uint32, payload []byte) ([]byte, uint32, error) {
	if len(name) >= nameLen {
		return nil, 0, fmt.Errorf("device name %q is too long", name)
	}
	size := 16 * 1024
	for range 8 {
		buf := make([]byte, max(size, headerSize+len(payload)))
		le := binary.LittleEndian
		le.PutUint32(buf[0:], 4) // interface version 4.0.0
		le.PutUint32(buf[12:], uint32(len(buf)))
		le.PutUint32(buf[16:], headerSize)
		le.PutUint32(buf[28:], flags)
		copy(buf[48:48+nameLen], name)
		copy(buf[headerSize:], payload)
		if err := ioctlBytes(c.f.Fd(), ioc(cmd), buf); err != nil {
			if errors.Is(err, unix.ENXIO) {
				return nil, 0, fmt.Errorf("%w: %q", ErrNoDevice, name)
			}
			return nil, 0, fmt.Errorf("device-mapper ioctl %d on %q: %w", cmd, name, err)
		}
		outFlags := le.Uint32(buf[28:])
		if outFlags&flagBufferFull != 0 {
			size *= 4
			continue
		}
		data, err := replyData(buf)
		if err != nil {
			return nil, 0, fmt.Errorf("device-mapper ioctl %d on %q: %w", cmd, name, err)
		}
		return data, le.Uint32(buf[20:]), nil
	}
	return nil, 0, fmt.Errorf("device-mapper ioctl %d on %q: reply too large", cmd, name)
}

// dataOffset is offsetof(struct dm_ioctl, data): the data_size the kernel
// leaves in a reply that carries no data, such as a target message's
// (ctl_ioctl sets it before every command; only commands that return
// data move it past data_start).
const dataOffset = 305

// replyData is the payload of a reply in buf: data_start to data_size,
// nothing when the kernel returned none.
func replyData(buf []byte) ([]byte, error) {
	le := binary.LittleEndian
	start, end := le.Uint32(buf[16:]), le.Uint32(buf[12:])
	if end <= dataOffset {
		return nil, nil
	}
	if start < headerSize || end > uint32(len(buf)) || start > end {
		return nil, errors.New("reply out of bounds")
	}
	return buf[start:end], nil
}

// Target is one line of a device's table or status.
type Target struct {
	Start, Length uint64 // sectors
	Type          string
	Params        string
}

// Table returns the table (status=false) or status (status=true) lines
// of device name.
func (c *Control) Table(name string, status bool) ([]Target, error) {
	var flags uint32
	if !status {
		flags = flagStatusTable
	}
	data, n, err := c.call(cmdTableStatus, name, flags, nil)
	if err != nil {
		return nil, err
	}
	return parseSpecs(data, n)
}

// parseSpecs reads n dm_target_spec records, each followed by its
// parameter string; "next" is the offset from the start of one record to
// the next.
func parseSpecs(data []byte, n uint32) ([]Target, error) {
	var out []Target
	off := 0
	for i := uint32(0); i < n; i++ {
		if off+specSize > len(data) {
			return nil, errors.New("device-mapper reply: target record out of bounds")
		}
		s := data[off:]
		le := binary.LittleEndian
		t := Target{Start: le.Uint64(s[0:]), Length: le.Uint64(s[8:])}
		next := int(le.Uint32(s[20:]))
		t.Type = cstring(s[24:40])
		end := len(s)
		if next > 0 && next <= len(s) {
			end = next
		}
		t.Params = cstring(s[specSize:end])
		out = append(out, t)
		if next <= 0 {
			break
		}
		off += next
	}
	return out, nil
}

func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// Message sends a target message ("reserve_metadata_snap") to sector 0
// of device name.
func (c *Control) Message(name, msg string) error {
	payload := make([]byte, 8+len(msg)+1)
	copy(payload[8:], msg)
	_, _, err := c.call(cmdTargetMsg, name, 0, payload)
	return err
}

// Pool reads a thin pool's table and status.
func (c *Control) Pool(name string) (PoolTable, PoolStatus, error) {
	tab, err := c.Table(name, false)
	if err != nil {
		return PoolTable{}, PoolStatus{}, err
	}
	st, err := c.Table(name, true)
	if err != nil {
		return PoolTable{}, PoolStatus{}, err
	}
	if len(tab) != 1 || tab[0].Type != "thin-pool" || len(st) != 1 {
		return PoolTable{}, PoolStatus{}, fmt.Errorf("%q is not a thin pool", name)
	}
	pt, err := ParsePoolTable(tab[0].Params)
	if err != nil {
		return pt, PoolStatus{}, err
	}
	ps, err := ParsePoolStatus(st[0].Params)
	return pt, ps, err
}

// ReserveSnapshot asks the pool to hold a metadata snapshot and returns
// the block it was written to. Release it with ReleaseSnapshot.
func (c *Control) ReserveSnapshot(pool string) (uint64, error) {
	if err := c.Message(pool, "reserve_metadata_snap"); err != nil {
		return 0, fmt.Errorf("reserving a metadata snapshot of %q: %w", pool, err)
	}
	_, st, err := c.Pool(pool)
	if err != nil {
		return 0, err
	}
	if st.HeldRoot == 0 {
		return 0, fmt.Errorf("pool %q reports no held metadata snapshot after reserving one", pool)
	}
	return st.HeldRoot, nil
}

// ReleaseSnapshot drops the pool's held metadata snapshot.
func (c *Control) ReleaseSnapshot(pool string) error {
	if err := c.Message(pool, "release_metadata_snap"); err != nil {
		return fmt.Errorf("releasing the metadata snapshot of %q: %w", pool, err)
	}
	return nil
}

// ioctlBytes passes buf to the kernel, which reads and rewrites it in
// place. This is the package's one use of unsafe: a syscall argument.
func ioctlBytes(fd uintptr, req uintptr, buf []byte) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(unsafe.Pointer(&buf[0])))
	if errno != 0 {
		return errno
	}
	return nil
}
