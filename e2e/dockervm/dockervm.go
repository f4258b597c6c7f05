package dockervm

import (
	"archive/tar"
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/docker-devmapper/docker-devmapper/e2e/kernelvm"
)

//go:embed guest
var guest embed.FS

// Packages are the Debian packages whose programs run in the machine.
var Packages = []string{"docker.io", "containerd", "runc", "tini"}

// DefaultDockerdOpts are dockerd's options unless Config says otherwise:
// devicemapper on docker's own loop files, a 1 GB base device and 128 MB
// of metadata (each stays small under emulation), no udev in the machine,
// cgroups managed by runc (there is no systemd to ask, though systemctl
// answers for docker.service), and no networking.
const DefaultDockerdOpts = "--storage-driver devicemapper" +
	" --storage-opt dm.basesize=1G --storage-opt dm.loopmetadatasize=128M" +
	" --storage-opt dm.override_udev_sync_check=true --exec-opt native.cgroupdriver=cgroupfs" +
	" --bridge=none --iptables=false --ip-masq=false --ip-forward=false --userland-proxy=false"

// hostPrograms are the host's programs copied into the machine: what
// dockerd runs to make and inspect the base device's file system.
var hostPrograms = map[string]string{
	"mke2fs":    "/usr/sbin/mke2fs",
	"e2fsck":    "/usr/sbin/e2fsck",
	"tune2fs":   "/usr/sbin/tune2fs",
	"resize2fs": "/usr/sbin/resize2fs",
	"blkid":     "/usr/sbin/blkid",
}

// Tools lists the host programs Prepare and Boot run or copy, with their
// Debian packages: kernelvm's, and e2fsprogs and blkid.
var Tools = func() map[string]string {
	t := map[string]string{"mkfs.ext4": "e2fsprogs", "blkid": "util-linux"}
	for _, p := range []string{"e2fsck", "tune2fs", "resize2fs"} {
		t[p] = "e2fsprogs"
	}
	for k, v := range kernelvm.Tools {
		t[k] = v
	}
	return t
}()

// Missing returns the Tools that are not on PATH (nor in /usr/sbin or
// /sbin, which a user's PATH may lack).
func Missing() []string {
	var missing []string
	for tool := range Tools {
		if lookPath(tool) == "" {
			missing = append(missing, tool)
		}
	}
	return missing
}

func lookPath(tool string) string {
	if p, err := exec.LookPath(tool); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if p := filepath.Join(dir, tool); isExec(p) {
			return p
		}
	}
	return ""
}

func isExec(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// Machine is a prepared kernel and the unpacked packages.
type Machine struct {
	Kernel *kernelvm.Kernel
	Root   string // Packages unpacked together
}

// Prepare readies the kernel (kernelvm.PrepareWith, with ext4 and loop)
// and the Packages, downloading and unpacking them into cacheDir the
// first time.
func Prepare(ctx context.Context, cacheDir string, logf func(format string, args ...any)) (*Machine, error) {
	k, err := kernelvm.PrepareWith(ctx, filepath.Join(cacheDir, "kernel"), []string{"ext4", "loop"}, logf)
	if err != nil {
		return nil, err
	}
	root := filepath.Join(cacheDir, "packages")
	if _, err := os.Stat(filepath.Join(root, "usr", "sbin", "dockerd")); err != nil {
		logf("dockervm: downloading %s into %s (first run only)", strings.Join(Packages, ", "), root)
		if err := unpackPackages(ctx, cacheDir, root); err != nil {
			return nil, err
		}
	}
	return &Machine{Kernel: k, Root: root}, nil
}

// unpackPackages downloads Packages with apt-get and unpacks them into
// root, working in a directory of its own that is renamed into place.
func unpackPackages(ctx context.Context, cacheDir, root string) error {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(cacheDir, ".packages.*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	args := []string{"download", "-qq"}
	if os.Geteuid() == 0 {
		// apt downloads as _apt, who cannot write into a private
		// directory; as root, download as root.
		args = append([]string{"-o", "APT::Sandbox::User=root"}, args...)
	}
	args = append(args, Packages...)
	var out []byte
	for attempt := 0; attempt < 2; attempt++ {
		if attempt > 0 {
			if uout, uerr := exec.CommandContext(ctx, "apt-get", "update", "-qq").CombinedOutput(); uerr != nil {
				return fmt.Errorf("apt-get update: %v: %s", uerr, strings.TrimSpace(string(uout)))
			}
		}
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Dir = tmp
		if out, err = cmd.CombinedOutput(); err == nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("apt-get download %s: %v: %s", strings.Join(Packages, " "), err, strings.TrimSpace(string(out)))
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != len(Packages) {
		return fmt.Errorf("apt-get download %s left %d .deb files", strings.Join(Packages, " "), len(debs))
	}
	dst := filepath.Join(tmp, "root")
	for _, deb := range debs {
		if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, dst).CombinedOutput(); err != nil {
			return fmt.Errorf("dpkg-deb -x %s: %v: %s", filepath.Base(deb), err, strings.TrimSpace(string(out)))
		}
	}
	if err := os.Rename(dst, root); err != nil {
		if _, serr := os.Stat(filepath.Join(root, "usr", "sbin", "dockerd")); serr == nil {
			return nil // another process finished first
		}
		return err
	}
	return nil
}

// Config says what one boot does.
type Config struct {
	Script  string          // the test's script (busybox sh); see the package doc
	Files   []kernelvm.File // more files for the machine: a plugin, helpers
	WorkDir string          // disks, the initramfs and the console log go here
	Dockerd string          // dockerd's options; "" means DefaultDockerdOpts
	Disk    int64           // size of the docker disk; 0 means 4 GiB
	Timeout time.Duration   // the whole boot; 0 means 15 minutes
	Memory  int             // MiB; 0 means 2048
	CPUs    int             // 0 means 2
}

// Result is what one boot left.
type Result struct {
	Console string            // the serial console
	Status  int               // the machine's exit status: 0 when docker started and the script exited 0
	Elapsed time.Duration     // qemu's run
	Files   map[string][]byte // what the script left in $RESULTS, by name
}

// Boot starts a machine with a fresh docker disk, runs cfg.Script in it
// and returns what it left. An error means the machine did not reach the
// end (see kernelvm.ErrNoEnd) or its results could not be read.
func (m *Machine) Boot(ctx context.Context, cfg Config) (*Result, error) {
	w := cfg.WorkDir
	disk := filepath.Join(w, "docker.img")
	results := filepath.Join(w, "results.img")
	size := cfg.Disk
	if size == 0 {
		size = 4 << 30
	}
	if err := truncate(disk, size); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, lookPath("mkfs.ext4"), "-q", "-F", "-L", "docker", disk).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mkfs.ext4: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if err := truncate(results, 256<<20); err != nil {
		return nil, err
	}

	files, err := m.files(w, cfg)
	if err != nil {
		return nil, err
	}
	boot, err := guest.ReadFile("guest/boot.sh")
	if err != nil {
		return nil, err
	}
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = 15 * time.Minute
	}
	mem, cpus := cfg.Memory, cfg.CPUs
	if mem == 0 {
		mem = 2048
	}
	if cpus == 0 {
		cpus = 2
	}
	res, err := m.Kernel.Boot(ctx, kernelvm.Config{
		Script:    string(boot),
		Disks:     []string{disk, results},
		WorkDir:   w,
		Timeout:   timeout,
		MemoryMiB: mem,
		CPUs:      cpus,
		Files:     files,
	})
	if err != nil {
		return nil, err
	}
	r := &Result{Console: res.Console, Status: res.Status, Elapsed: res.Elapsed, Files: map[string][]byte{}}
	if err := readResults(results, r.Files); err != nil {
		return r, fmt.Errorf("reading the results: %w", err)
	}
	return r, nil
}

// files is everything the machine gets besides kernelvm's own.
func (m *Machine) files(w string, cfg Config) ([]kernelvm.File, error) {
	var files []kernelvm.File
	prog := func(path, src string) { files = append(files, kernelvm.File{Path: path, Src: src, Program: true}) }
	pkg := func(rel string) string { return filepath.Join(m.Root, rel) }
	prog("/usr/sbin/dockerd", pkg("usr/sbin/dockerd"))
	prog("/usr/sbin/runc", pkg("usr/sbin/runc"))
	prog("/usr/bin/docker", pkg("usr/bin/docker"))
	prog("/usr/bin/containerd", pkg("usr/bin/containerd"))
	prog("/usr/bin/containerd-shim-runc-v2", pkg("usr/bin/containerd-shim-runc-v2"))
	prog("/usr/bin/docker-init", pkg("usr/bin/tini-static"))
	for name, dflt := range hostPrograms {
		src := lookPath(name)
		if src == "" {
			src = dflt
		}
		prog("/usr/sbin/"+name, src)
	}
	prog("/usr/sbin/mkfs.ext4", lookPath("mke2fs"))
	files = append(files, kernelvm.File{Path: "/etc/mke2fs.conf", Src: "/etc/mke2fs.conf"})
	if _, err := os.Stat("/usr/lib/os-release"); err == nil {
		// What docker info reports as the operating system.
		files = append(files, kernelvm.File{Path: "/usr/lib/os-release", Src: "/usr/lib/os-release"})
	}

	dockerd := cfg.Dockerd
	if dockerd == "" {
		dockerd = DefaultDockerdOpts
	}
	etc := map[string]string{
		"/etc/passwd":               "root:x:0:0:root:/root:/bin/sh\n",
		"/etc/group":                "root:x:0:\ndocker:x:999:\n",
		"/etc/hosts":                "127.0.0.1 localhost dockervm\n::1 localhost\n",
		"/etc/resolv.conf":          "nameserver 127.0.0.1\n",
		"/etc/nsswitch.conf":        "hosts: files\n",
		"/etc/dockervm.conf":        fmt.Sprintf("DOCKERD_OPTS=%q\n", dockerd),
		"/usr/lib/dockervm/test.sh": cfg.Script,
	}
	for _, name := range []string{"lib.sh", "systemctl"} {
		b, err := guest.ReadFile("guest/" + name)
		if err != nil {
			return nil, err
		}
		etc["/usr/lib/dockervm/"+name] = string(b)
	}
	stage := filepath.Join(w, "stage")
	for path, body := range etc {
		src := filepath.Join(stage, path)
		if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(src, []byte(body), 0o644); err != nil {
			return nil, err
		}
		files = append(files, kernelvm.File{Path: path, Src: src})
	}
	files = append(files, kernelvm.File{Path: "/usr/bin/systemctl", Src: filepath.Join(stage, "/usr/lib/dockervm/systemctl"), Mode: 0o755})

	rootfs := filepath.Join(stage, "rootfs.tar")
	if err := BusyboxRootfs(rootfs); err != nil {
		return nil, err
	}
	files = append(files, kernelvm.File{Path: "/usr/share/dockervm/rootfs.tar", Src: rootfs})
	return append(files, cfg.Files...), nil
}

// BusyboxRootfs writes a tar archive of a minimal root file system, the
// host's static busybox with a link per applet, for "docker import".
func BusyboxRootfs(dst string) error {
	busybox := lookPath("busybox")
	if busybox == "" {
		return errors.New("no busybox on the host")
	}
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	applets, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o755, ModTime: mtime})
	}
	file := func(name string, mode int64, body []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body)), ModTime: mtime}); err != nil {
			return err
		}
		_, err := tw.Write(body)
		return err
	}
	for _, d := range []string{"bin", "etc", "tmp", "root", "proc", "sys", "dev"} {
		if err := dir(d); err != nil {
			return err
		}
	}
	if err := file("bin/busybox", 0o755, bin); err != nil {
		return err
	}
	for _, a := range strings.Fields(string(applets)) {
		if a == "busybox" || strings.Contains(a, "/") {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: mtime}); err != nil {
			return err
		}
	}
	if err := file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n")); err != nil {
		return err
	}
	if err := file("etc/group", 0o644, []byte("root:x:0:\n")); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return os.WriteFile(dst, buf.Bytes(), 0o644)
}

// readResults reads the tar archive the machine wrote at the start of the
// results disk.
func readResults(img string, into map[string][]byte) error {
	f, err := os.Open(img)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return err
		}
		into[strings.TrimPrefix(hdr.Name, "./")] = b
	}
	if len(into) == 0 {
		return errors.New("the machine wrote no results")
	}
	return nil
}

func truncate(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
