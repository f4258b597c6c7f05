package repair

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"gotest.tools/v3/assert"
)

func TestCopySparse(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "meta")
	f, err := os.Create(src)
	assert.NilError(t, err)
	const size = 256 << 20 // like docker's loop file: large, nearly empty
	assert.NilError(t, f.Truncate(size))
	chunks := map[int64][]byte{0: bytes.Repeat([]byte{1}, 8192), 100 << 20: bytes.Repeat([]byte{2}, 4096), size - 4096: bytes.Repeat([]byte{3}, 4096)}
	for off, b := range chunks {
		_, err := f.WriteAt(b, off)
		assert.NilError(t, err)
	}
	dst, err := os.Create(filepath.Join(dir, "backup"))
	assert.NilError(t, err)
	assert.NilError(t, copySparse(dst, f, size))
	st, err := dst.Stat()
	assert.NilError(t, err)
	assert.Equal(t, st.Size(), int64(size))
	for off, b := range chunks {
		got := make([]byte, len(b))
		_, err := dst.ReadAt(got, off)
		assert.NilError(t, err)
		assert.DeepEqual(t, got, b)
	}
	zero := make([]byte, 4096)
	_, err = dst.ReadAt(zero, 50<<20)
	assert.NilError(t, err)
	assert.Check(t, allZero(zero))
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		assert.Check(t, sys.Blocks*512 < 4<<20, "backup allocates %d bytes", sys.Blocks*512)
	}
}
