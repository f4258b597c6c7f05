package dockerroot

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

// FuzzSetOpenTransaction feeds the rewrite of docker's transaction record
// any bytes: it refuses what is not the record it expects, and what it
// writes is docker's record with only open_transaction_id changed (hash
// and device id kept byte for byte), which it can set back.
func FuzzSetOpenTransaction(f *testing.F) {
	f.Add([]byte(`{"open_transaction_id":10,"device_hash":"bd1a97c99310e0911348c450b8a676fe70dfa3164393a07f0df5b78ca477f918","device_id":4}`), uint64(10), uint64(9))
	f.Add([]byte(`{"open_transaction_id":42,"device_hash":"","device_id":5}`), uint64(42), uint64(41))
	f.Add([]byte(`{"open_transaction_id":7}`), uint64(7), uint64(8))
	f.Add([]byte(`{"open_transaction_id":"7","device_hash":null}`), uint64(7), uint64(8))
	f.Add([]byte(`[]`), uint64(0), uint64(1))
	f.Fuzz(func(t *testing.T, b []byte, from, to uint64) {
		out, err := setOpenTransaction(b, from, to)
		if err != nil {
			return
		}
		var in, got map[string]json.RawMessage
		assert.NilError(t, json.Unmarshal(b, &in))
		assert.NilError(t, json.Unmarshal(out, &got), "%s", out)
		assert.Check(t, is.Equal(string(got[openTransactionField]), jsonUint(to)))
		for _, k := range []string{"device_hash", "device_id"} {
			if v, ok := in[k]; ok && len(v) > 0 {
				assert.Check(t, bytes.Equal(compact(t, got[k]), compact(t, v)), "%s changed: %s -> %s", k, v, got[k])
			}
		}
		back, err := setOpenTransaction(out, to, from)
		assert.NilError(t, err, "%s", out)
		var again map[string]json.RawMessage
		assert.NilError(t, json.Unmarshal(back, &again))
		assert.Check(t, is.Equal(string(again[openTransactionField]), jsonUint(from)))
	})
}

func jsonUint(v uint64) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func compact(t *testing.T, v json.RawMessage) []byte {
	var b bytes.Buffer
	assert.NilError(t, json.Compact(&b, v))
	return b.Bytes()
}

// FuzzLoad feeds docker's record files any bytes: Load reads them or says
// which it cannot read, never panics, and the comparison with a pool
// takes whatever it read.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"device_id":4,"size":1073741824,"transaction_id":4,"initialized":false,"deleted":false}`),
		[]byte(`{"open_transaction_id":9,"device_hash":"","device_id":1}`))
	f.Add([]byte(`{"device_id":-1}`), []byte(`{"open_transaction_id":"x"}`))
	f.Add([]byte(`null`), []byte(``))
	f.Fuzz(func(t *testing.T, record, transaction []byte) {
		root := t.TempDir()
		md := filepath.Join(root, "devicemapper", "metadata")
		assert.NilError(t, os.MkdirAll(md, 0o700))
		assert.NilError(t, os.WriteFile(filepath.Join(md, "base"), []byte(`{"device_id":1,"size":10737418240,"transaction_id":1,"initialized":true,"deleted":false}`), 0o600))
		assert.NilError(t, os.WriteFile(filepath.Join(md, "bd1a97c99310e0911348c450b8a676fe70dfa3164393a07f0df5b78ca477f918"), record, 0o600))
		assert.NilError(t, os.WriteFile(filepath.Join(md, "transaction-metadata"), transaction, 0o600))
		rec, err := Load(root)
		if err != nil {
			return
		}
		p := PlanFixes(rec, 9, []PoolDevice{{ID: 1, TransactionID: 1}, {ID: 4, TransactionID: 4}})
		for _, c := range p.Changes {
			assert.Check(t, is.Equal(c.File, TransactionFile))
		}
	})
}
