package dm_test

import (
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/plugin/dm"
)

func TestParsePoolStatus(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want dm.PoolStatus
		err  string
	}{
		// What the kernel printed for the fixtures (testdata/kernel/README.md).
		{in: "1 113/1024 0/16384 - rw discard_passdown queue_if_no_space - 1024",
			want: dm.PoolStatus{TransactionID: 1, MetaUsed: 113, MetaTotal: 1024, DataTotal: 16384, Mode: "rw"}},
		{in: "8 117/1024 10/4096 29 rw discard_passdown queue_if_no_space - 1024",
			want: dm.PoolStatus{TransactionID: 8, MetaUsed: 117, MetaTotal: 1024, DataUsed: 10, DataTotal: 4096, HeldRoot: 29, Mode: "rw"}},
		{in: "42 227/2048 641/65536 - ro discard_passdown error_if_no_space needs_check 1024",
			want: dm.PoolStatus{TransactionID: 42, MetaUsed: 227, MetaTotal: 2048, DataUsed: 641, DataTotal: 65536, Mode: "ro", NeedsCheck: true}},
		{in: "Fail", want: dm.PoolStatus{Failed: true}},
		{in: "1 2 3", err: "at least 5 fields"},
		{in: "x 1/2 3/4 - rw", err: "transaction id"},
		{in: "1 12 3/4 - rw", err: "not used/total"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := dm.ParsePoolStatus(tc.in)
			if tc.err != "" {
				assert.ErrorContains(t, err, tc.err)
				return
			}
			assert.NilError(t, err)
			tc.want.Raw = tc.in
			assert.DeepEqual(t, got, tc.want)
		})
	}
}

func TestParsePoolTable(t *testing.T) {
	// The table docker's loop-lvm pool had in a real run.
	got, err := dm.ParsePoolTable("7:1 7:0 128 32768 1 skip_block_zeroing")
	assert.NilError(t, err)
	assert.DeepEqual(t, got, dm.PoolTable{MetadataDev: "7:1", DataDev: "7:0", DataBlockSize: 128, LowWaterMark: 32768, Features: []string{"skip_block_zeroing"}})
	_, err = dm.ParsePoolTable("7:1 7:0 128 32768 2 skip_block_zeroing")
	assert.ErrorContains(t, err, "feature count")
	_, err = dm.ParsePoolTable("7:1 7:0")
	assert.ErrorContains(t, err, "at least 4")
}
