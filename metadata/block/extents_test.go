package block_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
)

func TestReadEach(t *testing.T) {
	const n = 3000
	img := make([]byte, n*block.Size)
	for i := range n {
		binary.LittleEndian.PutUint64(img[i*block.Size+8:], uint64(i))
	}
	r := block.NewReader(bytes.NewReader(img), int64(len(img)))
	var want []block.Nr
	for i := block.Nr(0); i < n; i += 1 + i%37 { // dense runs and gaps
		want = append(want, i)
	}
	var mu sync.Mutex
	seen := map[block.Nr]bool{}
	err := r.ReadEach(t.Context(), want, func(w int, nr block.Nr, b []byte) error {
		assert.Check(t, len(b) == block.Size)
		assert.Check(t, w >= 0 && w < block.Readers())
		assert.Check(t, block.Location(b) == nr)
		mu.Lock()
		seen[nr] = true
		mu.Unlock()
		return nil
	})
	assert.NilError(t, err)
	assert.Equal(t, len(seen), len(want))

	boom := errors.New("boom")
	bad := want[len(want)/2]
	err = r.ReadEach(t.Context(), want, func(_ int, nr block.Nr, b []byte) error {
		if nr == bad {
			return boom
		}
		return nil
	})
	assert.Check(t, errors.Is(err, boom))

	err = r.ReadEach(t.Context(), []block.Nr{n}, func(int, block.Nr, []byte) error { return nil })
	assert.Check(t, errors.Is(err, block.ErrOutOfRange))

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err = r.ReadEach(ctx, want, func(int, block.Nr, []byte) error { return nil })
	assert.Check(t, errors.Is(err, context.Canceled))
	assert.NilError(t, r.ReadEach(t.Context(), nil, nil))
}
