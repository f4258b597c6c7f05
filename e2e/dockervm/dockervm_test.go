package dockervm

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/skip"
)

func TestBusyboxRootfs(t *testing.T) {
	skip.If(t, lookPath("busybox") == "", "busybox not installed")
	dst := filepath.Join(t.TempDir(), "rootfs.tar")
	assert.NilError(t, BusyboxRootfs(dst))
	f, err := os.Open(dst)
	assert.NilError(t, err)
	defer f.Close()
	got := map[string]*tar.Header{}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err != nil {
			break
		}
		got[hdr.Name] = hdr
	}
	assert.Assert(t, got["bin/busybox"] != nil, "no bin/busybox")
	assert.Check(t, is.Equal(got["bin/busybox"].Mode, int64(0o755)))
	assert.Assert(t, got["bin/sh"] != nil, "no bin/sh")
	assert.Check(t, is.Equal(got["bin/sh"].Linkname, "busybox"))
	assert.Check(t, got["etc/passwd"] != nil, "no etc/passwd")
	assert.Check(t, got["tmp/"] != nil, "no tmp/")
}

// TestReadResults reads an archive as the machine leaves it: at the start
// of a disk, followed by zeros.
func TestReadResults(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	assert.NilError(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "./", Mode: 0o755}))
	for name, body := range map[string]string{"./check.out": "clean\n", "./check.rc": "0\n"} {
		assert.NilError(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body))}))
		_, err := tw.Write([]byte(body))
		assert.NilError(t, err)
	}
	assert.NilError(t, tw.Close())
	img := filepath.Join(t.TempDir(), "results.img")
	assert.NilError(t, os.WriteFile(img, append(buf.Bytes(), make([]byte, 1<<20)...), 0o644))

	got := map[string][]byte{}
	assert.NilError(t, readResults(img, got))
	assert.DeepEqual(t, got, map[string][]byte{"check.out": []byte("clean\n"), "check.rc": []byte("0\n")})

	empty := filepath.Join(t.TempDir(), "empty.img")
	assert.NilError(t, truncate(empty, 1<<20))
	assert.ErrorContains(t, readResults(empty, map[string][]byte{}), "the machine wrote no results")
}
