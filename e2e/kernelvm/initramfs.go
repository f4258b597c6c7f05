package kernelvm

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
)

// EndMarker starts the line the machine prints when the script has ended,
// followed by " status=N".
const EndMarker = "KERNELVM-END"

// moduleDir is where the modules sit in the archive.
const moduleDir = "/lib/kernelvm"

// initScript is the machine's /init. %s are the modules directory and the
// last disk's device name.
const initScript = `#!/bin/sh
export PATH=/bin:/sbin DM_DISABLE_UDEV=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in %[1]s/*.ko; do
	insmod "$m" || echo "kernelvm: cannot load $m"
done
i=0
while [ -n "%[2]s" ] && [ ! -b "/dev/%[2]s" ] && [ $i -lt 300 ]; do
	sleep 0.1
	i=$((i + 1))
done
# The firmware leaves the console mid-line.
echo
sh /script.sh
status=$?
sync
echo "` + EndMarker + ` status=$status"
poweroff -f
`

// File is one more file for the machine's archive.
type File struct {
	Path string // where it is in the machine
	Src  string // the host file it is copied from (symbolic links followed)
	// Program adds the shared libraries ldd says Src loads, at the
	// paths they have on the host.
	Program bool
	Mode    uint32 // permission bits; 0 means 0755 for a program, 0644 otherwise
}

// Initramfs writes to w a cpio archive that boots k, waits for disks
// virtio disks and runs script, with files added. See the package doc for
// what the script finds.
func (k *Kernel) Initramfs(w io.Writer, script string, disks int, files ...File) error {
	c := newCPIO(w)
	for _, dir := range []string{"/bin", "/sbin", "/dev", "/proc", "/sys", "/tmp", "/run", "/etc", moduleDir} {
		c.dir(dir)
	}
	// The kernel opens /dev/console for init before anything is mounted.
	c.charDev("/dev/console", 5, 1)

	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return err
	}
	if err := c.binary("/bin/busybox", busybox); err != nil {
		return err
	}
	applets, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, a := range strings.Fields(string(applets)) {
		if a != "busybox" && !strings.Contains(a, "/") {
			c.symlink("/bin/"+a, "busybox")
		}
	}
	dmsetup, err := exec.LookPath("dmsetup")
	if err != nil {
		return err
	}
	if err := c.binary("/sbin/dmsetup", dmsetup); err != nil {
		return err
	}
	for _, m := range k.Modules {
		if err := c.fileFrom(path.Join(moduleDir, filepath.Base(m)), m, 0o644); err != nil {
			return err
		}
	}
	last := ""
	if disks > 0 {
		last = "vd" + string(rune('a'+disks-1))
	}
	for _, f := range files {
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
			if f.Program {
				mode = 0o755
			}
		}
		var err error
		if f.Program {
			err = c.binaryMode(f.Path, f.Src, mode)
		} else {
			err = c.fileFrom(f.Path, f.Src, mode)
		}
		if err != nil {
			return err
		}
	}
	c.file("/init", []byte(fmt.Sprintf(initScript, moduleDir, last)), 0o755)
	c.file("/script.sh", []byte(script), 0o755)
	return c.close()
}

// lddLine matches the lines of ldd that name a library file:
// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and
// "/lib64/ld-linux-x86-64.so.2 (0x...)".
var lddLine = regexp.MustCompile(`(?:=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)`)

// binary adds the program at src as name, with the shared libraries ldd
// says it loads, at the same paths as on the host.
func (c *cpio) binary(name, src string) error { return c.binaryMode(name, src, 0o755) }

func (c *cpio) binaryMode(name, src string, perm uint32) error {
	if err := c.fileFrom(name, src, perm); err != nil {
		return err
	}
	out, err := exec.Command("ldd", src).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "not a dynamic executable") {
			return nil // static
		}
		return fmt.Errorf("ldd %s: %v: %s", src, err, strings.TrimSpace(string(out)))
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "=> not found") {
			return fmt.Errorf("%s needs a library the host lacks: %s", src, strings.TrimSpace(line))
		}
		if m := lddLine.FindStringSubmatch(line); m != nil {
			if err := c.fileFrom(m[1], m[1], 0o755); err != nil {
				return err
			}
		}
	}
	return nil
}

// cpio writes the "newc" format the kernel unpacks an initramfs from
// (Documentation/driver-api/early-userspace/buffer-format.rst). Parent
// directories are added before their first entry. The first error sticks
// and is returned by close.
type cpio struct {
	w    *bufio.Writer
	ino  uint32
	seen map[string]bool
	off  int64
	err  error
}

func newCPIO(w io.Writer) *cpio {
	return &cpio{w: bufio.NewWriter(w), ino: 1, seen: map[string]bool{"/": true}}
}

const (
	modeDir  = 0o040000
	modeReg  = 0o100000
	modeLink = 0o120000
	modeChr  = 0o020000
)

func (c *cpio) dir(name string) { c.entry(name, modeDir|0o755, 0, 0, nil) }

func (c *cpio) file(name string, data []byte, perm uint32) {
	c.entry(name, modeReg|perm, 0, 0, data)
}

func (c *cpio) fileFrom(name, src string, perm uint32) error {
	b, err := os.ReadFile(src) // follows symbolic links, as the archive wants the file
	if err != nil {
		return err
	}
	c.file(name, b, perm)
	return nil
}

func (c *cpio) symlink(name, target string) {
	c.entry(name, modeLink|0o777, 0, 0, []byte(target))
}

func (c *cpio) charDev(name string, major, minor uint32) {
	c.entry(name, modeChr|0o600, major, minor, nil)
}

func (c *cpio) entry(name string, mode, rdevMajor, rdevMinor uint32, data []byte) {
	name = path.Clean("/" + name)
	if c.seen[name] {
		return // a library ldd names for two programs
	}
	if parent := path.Dir(name); !c.seen[parent] {
		c.dir(parent)
	}
	c.seen[name] = true
	c.header(strings.TrimPrefix(name, "/"), mode, rdevMajor, rdevMinor, data)
}

func (c *cpio) header(name string, mode, rdevMajor, rdevMinor uint32, data []byte) {
	nlink := uint32(1)
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	c.ino++
	// magic, then 13 eight-digit hex fields: ino, mode, uid, gid, nlink,
	// mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize
	// (with its NUL), check.
	c.write([]byte(fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)))
	c.write(append([]byte(name), 0))
	c.pad()
	c.write(data)
	c.pad()
}

func (c *cpio) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.off += int64(n)
	c.err = err
}

// pad aligns to 4 bytes, as every header and every file body must be.
func (c *cpio) pad() {
	if r := c.off % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *cpio) close() error {
	c.header("TRAILER!!!", 0, 0, 0, nil)
	if c.err != nil {
		return c.err
	}
	return c.w.Flush()
}
