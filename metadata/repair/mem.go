package repair

import (
	"io"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
)

// memImage is a sparse in-memory metadata image for a dry run: only the
// blocks written take memory; the rest read as zeros.
type memImage struct {
	size   int64
	blocks map[int64][]byte
}

func newMemImage(size int64) *memImage { return &memImage{size: size, blocks: map[int64][]byte{}} }

func (m *memImage) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > m.size {
		return 0, io.ErrShortWrite
	}
	done := 0
	for done < len(p) {
		at := off + int64(done)
		n, in := at/block.Size, int(at%block.Size)
		b := m.blocks[n]
		if b == nil {
			b = make([]byte, block.Size)
			m.blocks[n] = b
		}
		done += copy(b[in:], p[done:])
	}
	return done, nil
}

func (m *memImage) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= m.size {
		return 0, io.EOF
	}
	done := 0
	for done < len(p) && off+int64(done) < m.size {
		at := off + int64(done)
		n, in := at/block.Size, int(at%block.Size)
		want := min(len(p)-done, block.Size-in, int(m.size-at))
		if b := m.blocks[n]; b != nil {
			copy(p[done:done+want], b[in:])
		} else {
			clear(p[done : done+want])
		}
		done += want
	}
	if done < len(p) {
		return done, io.EOF
	}
	return done, nil
}
