package repair

import (
	"os"

	"golang.org/x/sys/unix"
)

// dataExtent finds the next run of data at or after off: [start, end).
// Without SEEK_DATA (a block device, an old file system) it is the rest of
// the file.
func dataExtent(f *os.File, off, size int64) (int64, int64) {
	start, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	if err != nil {
		if err == unix.ENXIO { // no data past off
			return size, size
		}
		return off, size
	}
	end, err := unix.Seek(int(f.Fd()), start, unix.SEEK_HOLE)
	if err != nil || end > size {
		end = size
	}
	return start, end
}
