package repair_test

import (
	"os"
	"path/filepath"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/repair"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// FuzzValuesFile feeds --values-from's reader every kind of file it
// takes, cut and garbled: it returns values or an error, never panics,
// and values always come with the kind of file they were read from.
func FuzzValuesFile(f *testing.F) {
	img := thintest.Load(f, "s2-snapshot-tree")
	f.Add(img[:block.Size])
	f.Add(img[:block.Size-1])
	f.Add(thintest.Dump(f, "s2-snapshot-tree", "thin_dump-0.9.0.xml")[:600])
	f.Add([]byte(`{"superblock": {"uuid": "", "time": 4, "transaction": 42, "flags": 0, "version": 2, "data_block_size": 128, "nr_data_blocks": 65536}, "devices": []}`))
	f.Add([]byte("begin superblock: \"\", 4, 42, 0, 2, 128, 65536\n"))
	f.Add([]byte("begin superblock: \"a\"b\", 4, 42\n"))
	f.Add([]byte("\xef\xbb\xbf  <superblock transaction=\"1\""))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "values")
		assert.NilError(t, os.WriteFile(path, b, 0o600))
		v, err := repair.ReadValuesFile(path)
		if err == nil {
			assert.Check(t, v.Kind != "", "values from a file of no kind: %+v", v)
		}
	})
}
