package kernelvm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/icmd"
	"gotest.tools/v3/skip"
)

func TestLoadOrder(t *testing.T) {
	dir := t.TempDir()
	dep := `kernel/drivers/md/dm-thin-pool.ko.xz: kernel/drivers/md/persistent-data/dm-persistent-data.ko.xz kernel/drivers/md/dm-bio-prison.ko.xz kernel/drivers/md/dm-bufio.ko.xz kernel/drivers/md/dm-mod.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/drivers/md/persistent-data/dm-persistent-data.ko.xz: kernel/drivers/md/dm-bufio.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/drivers/md/dm-bio-prison.ko.xz:
kernel/drivers/md/dm-bufio.ko.xz:
kernel/drivers/md/dm-mod.ko.xz:
kernel/lib/libcrc32c.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
`
	assert.NilError(t, os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644))
	assert.NilError(t, os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/drivers/virtio/virtio_blk.ko\n"), 0o644))

	order, err := loadOrder(dir, []string{"crc32c_generic", "virtio_blk", "dm_thin_pool"})
	assert.NilError(t, err)
	assert.DeepEqual(t, order, []string{
		"kernel/crypto/crc32c_generic.ko.xz",
		"kernel/drivers/md/dm-bufio.ko.xz",
		"kernel/lib/libcrc32c.ko.xz",
		"kernel/drivers/md/persistent-data/dm-persistent-data.ko.xz",
		"kernel/drivers/md/dm-bio-prison.ko.xz",
		"kernel/drivers/md/dm-mod.ko.xz",
		"kernel/drivers/md/dm-thin-pool.ko.xz",
	})

	_, err = loadOrder(dir, []string{"dm-cache"})
	assert.ErrorContains(t, err, "module dm-cache is neither in modules.dep nor built in")
}

func TestSplitModulePath(t *testing.T) {
	for _, tc := range []struct{ name, base, rel, rest string }{
		{"lib/modules/6.1.0-56-amd64/kernel/drivers/md/dm-mod.ko", "lib/modules", "6.1.0-56-amd64", "kernel/drivers/md/dm-mod.ko"},
		{"usr/lib/modules/6.12.9-amd64/modules.order", "usr/lib/modules", "6.12.9-amd64", "modules.order"},
	} {
		base, rel, rest, ok := splitModulePath(tc.name)
		assert.Check(t, ok, tc.name)
		assert.Check(t, is.Equal(base, tc.base))
		assert.Check(t, is.Equal(rel, tc.rel))
		assert.Check(t, is.Equal(rest, tc.rest))
	}
	for _, name := range []string{"boot/vmlinuz-6.1.0-56-amd64", "lib/modules/", "usr/share/doc/x"} {
		_, _, _, ok := splitModulePath(name)
		assert.Check(t, !ok, name)
	}
}

// TestCPIO reads an archive back with the cpio tool.
func TestCPIO(t *testing.T) {
	_, err := exec.LookPath("cpio")
	skip.If(t, err != nil, "cpio not installed")
	var buf bytes.Buffer
	c := newCPIO(&buf)
	c.file("/lib/x86_64-linux-gnu/libc.so.6", []byte("five!"), 0o755)
	c.symlink("/bin/sh", "busybox")
	c.charDev("/dev/console", 5, 1)
	c.file("/init", []byte("#!/bin/sh\n"), 0o755)
	assert.NilError(t, c.close())
	assert.Check(t, is.Equal(buf.Len()%4, 0))

	list := func(flags string) []string {
		res := icmd.RunCmd(icmd.Command("cpio", flags, "--quiet"), icmd.WithStdin(bytes.NewReader(buf.Bytes())))
		res.Assert(t, icmd.Success)
		return strings.Split(strings.TrimSpace(res.Stdout()), "\n")
	}
	var modes []string
	for _, line := range list("-itv") {
		modes = append(modes, strings.Fields(line)[0])
	}
	assert.DeepEqual(t, list("-it"), []string{
		"lib", "lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu/libc.so.6", "bin", "bin/sh", "dev", "dev/console", "init",
	})
	assert.DeepEqual(t, modes, []string{
		"drwxr-xr-x", "drwxr-xr-x", "-rwxr-xr-x", "drwxr-xr-x", "lrwxrwxrwx", "drwxr-xr-x", "crw-------", "-rwxr-xr-x",
	})
}

func TestCheckPVH(t *testing.T) {
	exe, err := os.Executable()
	assert.NilError(t, err)
	b, err := os.ReadFile(exe)
	assert.NilError(t, err)
	assert.ErrorContains(t, checkPVH(b), "no PVH entry note")
	assert.ErrorContains(t, checkPVH([]byte("MZ not an ELF file")), "bad magic")
}
