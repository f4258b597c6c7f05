package repair_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/docker-devmapper/docker-devmapper/metadata/check"
	"github.com/docker-devmapper/docker-devmapper/metadata/repair"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
	"github.com/docker-devmapper/docker-devmapper/metadata/xml"
)

// writeFile writes b to a new file called name in a temporary directory.
func writeFile(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	assert.NilError(t, os.WriteFile(p, b, 0o600))
	return p
}

// ourDump is fixture img dumped by package xml in format f.
func ourDump(t *testing.T, img thintest.Image, f xml.Format) []byte {
	t.Helper()
	var b bytes.Buffer
	w := xml.NewWriter(&b, f)
	assert.NilError(t, xml.Dump(img.Reader(), w, xml.Options{}))
	assert.NilError(t, w.Flush())
	return b.Bytes()
}

// TestRepairValuesFrom wipes the superblock of kernel fixtures and
// repairs them with the pool values taken from a dump or a backup of the
// original: the result is the original pool, and says where each value
// came from.
func TestRepairValuesFrom(t *testing.T) {
	type want struct {
		tid, dbs, nr, time uint64
		// The sources expected ("file" stands for --values-from and the
		// file's path); tidFrom and timeFrom are prefixes.
		tidFrom, dbsFrom, nrFrom, timeFrom string
	}
	s2 := want{tid: 42, dbs: 128, nr: 65536, time: 4, tidFrom: "file", dbsFrom: "file", nrFrom: "file", timeFrom: "the newest time in the trees"}
	for _, tc := range []struct {
		name    string
		fixture string
		file    func(t *testing.T, orig thintest.Image) string
		opts    repair.Options
		want    want
		// lossless: the output dumps as the fixture's reference dump.
		lossless bool
		note     string // a note the result must hold
	}{
		{
			name: "thin_dump-0.9.0-xml", fixture: "s2-snapshot-tree",
			file: func(t *testing.T, _ thintest.Image) string {
				return writeFile(t, "pool.xml", thintest.Dump(t, "s2-snapshot-tree", "thin_dump-0.9.0.xml"))
			},
			want: s2, lossless: true, note: "is an XML dump: transaction id 42",
		},
		{
			name: "thin_dump-1.1.0-xml", fixture: "s2-snapshot-tree",
			file: func(t *testing.T, _ thintest.Image) string {
				return writeFile(t, "pool.xml", thintest.Dump(t, "s2-snapshot-tree", "thin_dump-1.1.0.xml"))
			},
			want: s2, lossless: true,
		},
		{
			name: "our-json-dump", fixture: "s2-snapshot-tree",
			file: func(t *testing.T, orig thintest.Image) string {
				return writeFile(t, "pool.json", ourDump(t, orig, xml.JSON))
			},
			want: s2, lossless: true, note: "is a JSON dump",
		},
		{
			name: "our-human-readable-dump", fixture: "s2-snapshot-tree",
			file: func(t *testing.T, orig thintest.Image) string {
				return writeFile(t, "pool.txt", ourDump(t, orig, xml.HumanReadable))
			},
			want: s2, lossless: true, note: "is a human_readable dump",
		},
		{
			name: "metadata-backup", fixture: "s2-snapshot-tree",
			file: func(t *testing.T, orig thintest.Image) string { return writeFile(t, "pool.bak", orig) },
			want: s2, lossless: true, note: "is metadata whose superblock is readable",
		},
		{
			// The pool time only grows: a file's later time wins over
			// the trees'.
			name: "dump-time-later-than-the-trees", fixture: "s2-snapshot-tree",
			file: func(t *testing.T, _ thintest.Image) string {
				doc := string(thintest.Dump(t, "s2-snapshot-tree", "thin_dump-0.9.0.xml"))
				return writeFile(t, "pool.xml", []byte(strings.Replace(doc, `time="4"`, `time="7"`, 1)))
			},
			want: want{tid: 42, dbs: 128, nr: 65536, time: 7, tidFrom: "file", dbsFrom: "file", nrFrom: "file", timeFrom: "file"},
		},
		{
			name: "options-beat-the-file", fixture: "s2-snapshot-tree",
			file: func(t *testing.T, orig thintest.Image) string { return writeFile(t, "pool.bak", orig) },
			opts: repair.Options{TransactionID: ptr(uint64(50))},
			want: want{tid: 50, dbs: 128, nr: 65536, time: 4, tidFrom: "--transaction-id", dbsFrom: "file", nrFrom: "file"},
		},
		{
			name: "big-block-pool", fixture: "s3-bigblock-metasnap",
			file: func(t *testing.T, _ thintest.Image) string {
				return writeFile(t, "pool.xml", thintest.Dump(t, "s3-bigblock-metasnap", "thin_dump-0.9.0.xml"))
			},
			// Not lossless: without the superblock the scan finds two
			// states as new as each other (device 1 lives on in the
			// held snapshot's trees) and reports the tie.
			want: want{tid: 8, dbs: 8192, nr: 4096, time: 1, tidFrom: "file", dbsFrom: "file", nrFrom: "file"},
		},
		{
			// A dump of the held snapshot has no nr_data_blocks.
			name: "snapshot-dump-and-size-given", fixture: "s3-bigblock-metasnap",
			file: func(t *testing.T, _ thintest.Image) string {
				return writeFile(t, "snap.xml", thintest.Dump(t, "s3-bigblock-metasnap", "metasnap.thin_dump-0.9.0.xml"))
			},
			opts: repair.Options{NrDataBlocks: ptr(uint64(4096))},
			// Its transaction id, 7, is device 9's: not lower than the
			// details show.
			want: want{tid: 7, dbs: 8192, nr: 4096, time: 1, tidFrom: "file", dbsFrom: "file", nrFrom: "--nr-data-blocks"},
		},
		{
			// A dump older than devices 1 and 9 (created at transaction 7).
			name: "older-dump-transaction-raised", fixture: "s3-bigblock-metasnap",
			file: func(t *testing.T, _ thintest.Image) string {
				doc := string(thintest.Dump(t, "s3-bigblock-metasnap", "thin_dump-0.9.0.xml"))
				doc = strings.Replace(doc, `transaction="8"`, `transaction="3"`, 1)
				return writeFile(t, "old.xml", []byte(doc))
			},
			want: want{tid: 7, dbs: 8192, nr: 4096, time: 1, tidFrom: "device 1's details (--values-from ", dbsFrom: "file", nrFrom: "file"},
			note: "transaction id raised from 3 to 7",
		},
		{
			name: "option-lower-than-details-kept", fixture: "s3-bigblock-metasnap",
			file: func(t *testing.T, orig thintest.Image) string { return writeFile(t, "pool.bak", orig) },
			opts: repair.Options{TransactionID: ptr(uint64(2))},
			want: want{tid: 2, dbs: 8192, nr: 4096, time: 1, tidFrom: "--transaction-id", dbsFrom: "file", nrFrom: "file"},
			note: "--transaction-id 2 is lower than transaction 7 of device 1's details",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			orig := thintest.Image(thintest.Load(t, tc.fixture))
			img := thintest.Image(bytes.Clone(orig))
			img.Zero(0)
			opts := tc.opts
			opts.ValuesFrom = tc.file(t, orig)
			out := make(thintest.Image, len(img))
			res, err := repair.Repair(t.Context(), img.Reader(), writerAt(out), int64(len(out)), opts)
			assert.NilError(t, err)
			assert.Assert(t, is.Equal(res.Action, repair.Rebuild), res.Reason)
			assert.Assert(t, res.After != nil)
			assert.Check(t, is.Equal(res.After.Outcome, check.Clean), res.After.Summary)

			source := func(s string) string {
				if s == "file" {
					return "--values-from " + opts.ValuesFrom
				}
				return s
			}
			assert.Check(t, is.Equal(res.Pool.TransactionID.Value, tc.want.tid))
			assert.Check(t, strings.HasPrefix(res.Pool.TransactionID.Source, source(tc.want.tidFrom)), res.Pool.TransactionID.Source)
			assert.Check(t, is.DeepEqual(res.Pool.DataBlockSize, repair.Value{Value: tc.want.dbs, Source: source(tc.want.dbsFrom)}))
			assert.Check(t, is.DeepEqual(res.Pool.NrDataBlocks, repair.Value{Value: tc.want.nr, Source: source(tc.want.nrFrom)}))
			assert.Check(t, is.Equal(res.Pool.Time.Value, tc.want.time))
			assert.Check(t, strings.HasPrefix(res.Pool.Time.Source, source(tc.want.timeFrom)), res.Pool.Time.Source)
			if tc.note != "" {
				assert.Check(t, is.Contains(strings.Join(res.Notes, "\n"), tc.note))
			}
			// The values are in the superblock written.
			sb := out.Superblock()
			assert.Check(t, is.Equal(sb.TransactionID, tc.want.tid))
			assert.Check(t, is.Equal(uint64(sb.DataBlockSize), tc.want.dbs))
			assert.Check(t, is.Equal(sb.DataSM.NrBlocks, tc.want.nr))
			assert.Check(t, is.Equal(uint64(sb.Time), tc.want.time))
			if tc.lossless {
				assert.Check(t, !res.Lost())
				assert.Check(t, is.Equal(dump(t, out.Reader()), string(thintest.Dump(t, tc.fixture, "thin_dump-0.9.0.xml"))))
			}
			check11 := filepath.Join(tpt11(), "thin_check")
			if _, err := os.Stat(check11); err != nil {
				t.Log("thin_check 1.1.0 not installed: the result is not shown to it")
				return
			}
			msg, err := exec.Command(check11, thintest.WriteTemp(t, out)).CombinedOutput()
			assert.Check(t, err == nil, "thin_check 1.1.0 rejects the repaired metadata: %v\n%s", err, msg)
		})
	}
}

// TestRepairValuesFromRefused: a values file that gives no superblock is
// an error that says what to give instead, a file that gives too little
// leaves the repair undone with the reason, and a readable superblock
// makes the file unneeded.
func TestRepairValuesFromRefused(t *testing.T) {
	s3 := thintest.Image(thintest.Load(t, "s3-bigblock-metasnap"))
	snapCopy := append(bytes.Clone(s3.Block(s3.Superblock().MetadataSnap)), make([]byte, 8*4096)...)
	for _, tc := range []struct {
		name   string
		file   []byte // nil: no file at that path
		wipe   bool   // zero the input's superblock
		err    string // the error, if any
		action repair.Action
		reason string // part of the result's reason or notes
	}{
		{name: "no-such-file", wipe: true, err: "no such file"},
		{name: "not-a-dump", file: []byte("hello\n"), wipe: true, err: "neither a dump"},
		{name: "damaged-metadata", file: make([]byte, 8192), wipe: true, err: "neither a dump"},
		{name: "snapshot-superblock-copy", file: snapCopy, wipe: true, err: "superblock copy of block"},
		{name: "xml-without-superblock", file: []byte("<device dev_id=\"1\"/>\n"), wipe: true, err: "no readable superblock element"},
		{name: "json-without-superblock", file: []byte(`{"devices": []}`), wipe: true, err: `does not open with "superblock"`},
		{name: "text-bad-line", file: []byte("begin superblock: \"\", 1, 2\n"), wipe: true, err: "not a superblock line"},
		{
			name: "snapshot-dump-without-size", wipe: true, action: repair.Cannot,
			file:   thintest.Dump(t, "s3-bigblock-metasnap", "metasnap.thin_dump-0.9.0.xml"),
			reason: "gives no nr_data_blocks (a dump of a held metadata snapshot has none): give --nr-data-blocks",
		},
		{
			name: "superblock-readable", action: repair.Nothing,
			file:   thintest.Dump(t, "s3-bigblock-metasnap", "thin_dump-0.9.0.xml"),
			reason: "ignored: the superblock is readable",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := thintest.Image(bytes.Clone(s3))
			if tc.wipe {
				img.Zero(0)
			}
			path := filepath.Join(t.TempDir(), "values")
			if tc.file != nil {
				assert.NilError(t, os.WriteFile(path, tc.file, 0o600))
			}
			res, err := repair.Repair(t.Context(), img.Reader(), nil, int64(len(img)), repair.Options{ValuesFrom: path})
			if tc.err != "" {
				assert.Check(t, is.ErrorContains(err, tc.err))
				assert.Check(t, is.ErrorContains(err, "--values-from"))
				return
			}
			assert.NilError(t, err)
			assert.Check(t, is.Equal(res.Action, tc.action))
			assert.Check(t, is.Contains(res.Reason+"\n"+strings.Join(res.Notes, "\n"), tc.reason))
		})
	}
}
