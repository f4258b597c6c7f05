//go:build linux

package dm

import (
	"encoding/binary"
	"testing"

	"gotest.tools/v3/assert"
)

func TestIoctlNumbers(t *testing.T) {
	// DM_TABLE_STATUS and DM_TARGET_MSG as the kernel headers define them.
	assert.Equal(t, ioc(cmdTableStatus), uintptr(0xc138fd0c))
	assert.Equal(t, ioc(cmdTargetMsg), uintptr(0xc138fd0e))
}

func spec(start, length uint64, typ, params string, last bool) []byte {
	n := (specSize + len(params) + 1 + 7) / 8 * 8
	b := make([]byte, n)
	le := binary.LittleEndian
	le.PutUint64(b[0:], start)
	le.PutUint64(b[8:], length)
	if !last {
		le.PutUint32(b[20:], uint32(n))
	}
	copy(b[24:40], typ)
	copy(b[specSize:], params)
	return b
}

func TestParseSpecs(t *testing.T) {
	data := append(spec(0, 209715200, "thin-pool", "7:1 7:0 128 32768 1 skip_block_zeroing", false),
		spec(209715200, 8, "error", "", true)...)
	got, err := parseSpecs(data, 2)
	assert.NilError(t, err)
	assert.DeepEqual(t, got, []Target{
		{Start: 0, Length: 209715200, Type: "thin-pool", Params: "7:1 7:0 128 32768 1 skip_block_zeroing"},
		{Start: 209715200, Length: 8, Type: "error"},
	})
	_, err = parseSpecs(data[:30], 1)
	assert.ErrorContains(t, err, "out of bounds")
}

// TestOpen runs where device-mapper is missing or we are not
// root: Open must fail with a message, not panic.
func TestOpen(t *testing.T) {
	c, err := Open()
	if err != nil {
		assert.ErrorContains(t, err, "device-mapper control node")
		return
	}
	defer c.Close()
	_, _, err = c.Pool("docker-devmapper-test-no-such-pool")
	assert.Check(t, err != nil)
}

// TestReplyData: a target message's reply carries no data; the kernel
// leaves data_size at the offset of the header's data field, below
// data_start. That is an empty payload, not an error.
func TestReplyData(t *testing.T) {
	reply := func(start, size uint32) []byte {
		b := make([]byte, 1024)
		binary.LittleEndian.PutUint32(b[12:], size)
		binary.LittleEndian.PutUint32(b[16:], start)
		return b
	}
	for _, tc := range []struct {
		name        string
		start, size uint32
		want        int
		err         string
	}{
		{name: "message, no data", start: headerSize, size: dataOffset},
		{name: "status", start: headerSize, size: headerSize + 100, want: 100},
		{name: "empty", start: headerSize, size: headerSize},
		{name: "past the buffer", start: headerSize, size: 2048, err: "out of bounds"},
		{name: "start inside the header", start: 100, size: 400, err: "out of bounds"},
		{name: "start past the end", start: 600, size: 400, err: "out of bounds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := replyData(reply(tc.start, tc.size))
			if tc.err != "" {
				assert.ErrorContains(t, err, tc.err)
				return
			}
			assert.NilError(t, err)
			assert.Equal(t, len(got), tc.want)
		})
	}
}
