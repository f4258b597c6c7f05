//go:build !linux

package repair

import "os"

func dataExtent(_ *os.File, off, size int64) (int64, int64) { return off, size }
