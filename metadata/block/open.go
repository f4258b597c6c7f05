package block

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// File is a metadata file or block device opened for reading.
type File struct {
	*Reader
	f    *os.File
	size int64
}

// Open opens path read-only. It works for regular files, loop devices and
// block devices alike: the size comes from seeking to the end, which block
// devices support.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: cannot find its size: %w", path, err)
	}
	return &File{Reader: NewReader(f, size), f: f, size: size}, nil
}

// Size is the size in bytes of the file or device.
func (f *File) Size() int64 { return f.size }

// ReaderAt gives the underlying file for callers that read large extents.
func (f *File) ReaderAt() io.ReaderAt { return f.f }

// OS gives the underlying *os.File, for hints such as fadvise.
func (f *File) OS() *os.File { return f.f }

// Close closes the file.
func (f *File) Close() error { return f.f.Close() }

// Extent is a run of blocks, [Start, Start+Len).
type Extent struct {
	Start Nr
	Len   Nr
}

// WillNeed asks the kernel to start reading the extents into the page
// cache now, in large requests, so that a walk that then reads one block
// at a time finds them there instead of waiting for the disk each time.
// It holds no memory of its own and returns at once; it is only a hint,
// so errors are ignored.
func (f *File) WillNeed(exts []Extent) {
	for _, e := range exts {
		willNeed(f.f, int64(e.Start)*Size, int64(e.Len)*Size)
	}
}

// SyncDir fsyncs the directory dir, so that a file created or renamed in
// it stays after a crash. File systems that cannot sync a directory
// (EINVAL) are taken as done.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("cannot sync directory %s: %w", dir, err)
	}
	return nil
}
