package kernelvm

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Meta is the package whose dependency names the distribution's current
// kernel package.
const Meta = "linux-image-amd64"

// Kernel is a prepared kernel: its boot image and the modules to load, in
// an order where each module comes after every module it needs.
type Kernel struct {
	Package string   // the kernel package, e.g. linux-image-6.1.0-56-amd64
	Release string   // what uname -r says inside the machine
	Vmlinuz string   // the boot image, as packaged
	Vmlinux string   // the kernel uncompressed, when it can boot that way (PVH); "" otherwise
	Modules []string // uncompressed .ko files, in load order
}

// wantModules are what the machine needs: the dm-thin target (which pulls
// in dm-mod, dm-bufio, dm-bio-prison, dm-persistent-data and libcrc32c)
// and the virtio disks. crc32c_generic is named, and first, because
// libcrc32c asks the crypto API for "crc32c" when it loads and nothing in
// the machine could load a module on demand. A module the kernel has built
// in is skipped.
var wantModules = []string{"crc32c_generic", "virtio_pci", "virtio_blk", "dm-thin-pool"}

// moduleDirs are the parts of the modules tree unpacked from the package:
// wantModules and everything they depend on live there, and leaving the
// rest out saves writing some 400 MB once.
var moduleDirs = []string{"kernel/drivers/md/", "kernel/drivers/virtio/", "kernel/drivers/block/",
	"kernel/crypto/", "kernel/lib/", "kernel/arch/", "kernel/fs/"}

// manifestName is the file in a prepared kernel directory that lists it;
// it is written last, so a directory without it is unfinished.
const manifestName = "kernel.json"

type manifest struct {
	Package string
	Release string
	Vmlinux bool     // vmlinux is there
	Modules []string // file names beside the manifest, in load order
}

// Prepare returns the kernel that apt would install on this machine now,
// downloading and unpacking it into cacheDir/PACKAGE the first time. Later
// calls find it there and cost one apt-cache query. Several processes may
// prepare the same kernel at once: each works in a directory of its own
// and the first to finish renames it into place. logf reports the slow
// first preparation.
func Prepare(ctx context.Context, cacheDir string, logf func(format string, args ...any)) (*Kernel, error) {
	return PrepareWith(ctx, cacheDir, nil, logf)
}

// PrepareWith is Prepare for a machine that also loads the modules extra
// (for example "ext4" and "loop"), each after the modules it needs. The
// modules are found under the kernel's drivers/md, drivers/virtio,
// drivers/block, crypto, lib, arch and fs trees. A cache directory holds
// one set of modules: give each set a directory of its own.
func PrepareWith(ctx context.Context, cacheDir string, extra []string, logf func(format string, args ...any)) (*Kernel, error) {
	pkg, err := kernelPackage(ctx)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(cacheDir, pkg)
	if k, err := load(dir); err == nil {
		return k, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, err
	}
	logf("kernelvm: preparing %s in %s (first run only)", pkg, dir)
	tmp, err := os.MkdirTemp(cacheDir, "."+pkg+".*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	deb, err := download(ctx, tmp, pkg)
	if err != nil {
		return nil, err
	}
	root := filepath.Join(tmp, "root")
	vmlinuz, modDir, release, err := unpack(ctx, deb, root)
	if err != nil {
		return nil, fmt.Errorf("unpacking %s: %w", filepath.Base(deb), err)
	}
	if err := depmod(ctx, root, release); err != nil {
		return nil, err
	}
	order, err := loadOrder(modDir, append(append([]string(nil), wantModules...), extra...))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", pkg, err)
	}

	out := filepath.Join(tmp, "kernel")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	if err := os.Rename(vmlinuz, filepath.Join(out, "vmlinuz")); err != nil {
		return nil, err
	}
	m := manifest{Package: pkg, Release: release}
	if err := extractVmlinux(ctx, filepath.Join(out, "vmlinuz"), filepath.Join(out, "vmlinux")); err != nil {
		logf("kernelvm: booting the compressed image, which is slower: %v", err)
	} else {
		m.Vmlinux = true
	}
	for i, rel := range order {
		name := fmt.Sprintf("%02d-%s.ko", i, moduleName(rel))
		if err := uncompress(ctx, filepath.Join(modDir, rel), filepath.Join(out, name)); err != nil {
			return nil, err
		}
		m.Modules = append(m.Modules, name)
	}
	b, err := json.MarshalIndent(m, "", "\t")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(out, manifestName), append(b, '\n'), 0o644); err != nil {
		return nil, err
	}
	if err := os.Rename(out, dir); err != nil {
		// Another process finished first; its copy is as good.
		if k, lerr := load(dir); lerr == nil {
			return k, nil
		}
		return nil, err
	}
	return load(dir)
}

// load reads a prepared kernel directory.
func load(dir string) (*Kernel, error) {
	b, err := os.ReadFile(filepath.Join(dir, manifestName))
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, manifestName), err)
	}
	k := &Kernel{Package: m.Package, Release: m.Release, Vmlinuz: filepath.Join(dir, "vmlinuz")}
	for _, name := range append([]string{"vmlinuz"}, m.Modules...) {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return nil, err
		}
	}
	if m.Vmlinux {
		k.Vmlinux = filepath.Join(dir, "vmlinux")
		if _, err := os.Stat(k.Vmlinux); err != nil {
			return nil, err
		}
	}
	for _, name := range m.Modules {
		k.Modules = append(k.Modules, filepath.Join(dir, name))
	}
	return k, nil
}

// kernelPackage asks apt which kernel package Meta depends on. A machine
// that has never fetched package lists gets them first.
func kernelPackage(ctx context.Context) (string, error) {
	var last error
	for attempt := 0; attempt < 2; attempt++ {
		if attempt > 0 {
			if err := aptUpdate(ctx); err != nil {
				return "", err
			}
		}
		out, err := exec.CommandContext(ctx, "apt-cache", "depends", Meta).CombinedOutput()
		if err != nil {
			last = fmt.Errorf("apt-cache depends %s: %v: %s", Meta, err, strings.TrimSpace(string(out)))
			continue
		}
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
				return f[1], nil
			}
		}
		last = fmt.Errorf("apt-cache depends %s names no linux-image package:\n%s", Meta, out)
	}
	return "", last
}

func aptUpdate(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, "apt-get", "update", "-qq").CombinedOutput()
	if err != nil {
		return fmt.Errorf("apt-get update: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// download fetches pkg's .deb into dir with apt-get, updating the package
// lists once if the first try fails.
func download(ctx context.Context, dir, pkg string) (string, error) {
	args := []string{"download", "-qq", pkg}
	if os.Geteuid() == 0 {
		// apt downloads as the _apt user, who cannot write into a
		// private directory; as root, download as root instead of
		// warning about it.
		args = append([]string{"-o", "APT::Sandbox::User=root"}, args...)
	}
	var out []byte
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		if attempt > 0 {
			if uerr := aptUpdate(ctx); uerr != nil {
				return "", uerr
			}
		}
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Dir = dir
		if out, err = cmd.CombinedOutput(); err == nil {
			break
		}
	}
	if err != nil {
		return "", fmt.Errorf("apt-get download %s: %v: %s", pkg, err, strings.TrimSpace(string(out)))
	}
	debs, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s left %d .deb files", pkg, len(debs))
	}
	return debs[0], nil
}

// unpack extracts the boot image and the moduleDirs parts of the modules
// tree of a kernel .deb under root, at the paths the package gives them.
// It returns the boot image, the modules directory (root/lib/modules/REL
// or root/usr/lib/modules/REL) and the release.
func unpack(ctx context.Context, deb, root string) (vmlinuz, modDir, release string, err error) {
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", deb)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		return "", "", "", err
	}
	if err := cmd.Start(); err != nil {
		return "", "", "", err
	}
	err = func() error {
		tr := tar.NewReader(pipe)
		for {
			hdr, err := tr.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			name := strings.TrimPrefix(hdr.Name, "./")
			if hdr.Typeflag != tar.TypeReg || !filepath.IsLocal(name) {
				continue
			}
			keep := false
			if dir, base := filepath.Split(name); dir == "boot/" && strings.HasPrefix(base, "vmlinuz-") {
				keep = true
				vmlinuz = filepath.Join(root, name)
				release = strings.TrimPrefix(base, "vmlinuz-")
			} else if base, rel, rest, ok := splitModulePath(name); ok {
				if rest == "modules.order" || rest == "modules.builtin" || hasAnyPrefix(rest, moduleDirs) {
					keep = true
					modDir = filepath.Join(root, base, rel)
				}
			}
			if keep {
				if err := writeFile(filepath.Join(root, name), tr); err != nil {
					return err
				}
			}
		}
	}()
	// Read to the end so dpkg-deb is not left blocked on a full pipe.
	io.Copy(io.Discard, pipe)
	if werr := cmd.Wait(); werr != nil && err == nil {
		err = fmt.Errorf("dpkg-deb: %v: %s", werr, strings.TrimSpace(stderr.String()))
	}
	if err != nil {
		return "", "", "", err
	}
	if vmlinuz == "" || modDir == "" {
		return "", "", "", errors.New("no boot/vmlinuz-* or no modules in the package")
	}
	if filepath.Base(modDir) != release {
		return "", "", "", fmt.Errorf("modules are for %s, the boot image is %s", filepath.Base(modDir), release)
	}
	return vmlinuz, modDir, release, nil
}

// splitModulePath splits "lib/modules/REL/REST" (or the same under usr/)
// into "lib/modules", REL and REST.
func splitModulePath(name string) (base, rel, rest string, ok bool) {
	for _, base := range []string{"lib/modules/", "usr/lib/modules/"} {
		if after, found := strings.CutPrefix(name, base); found {
			rel, rest, ok = strings.Cut(after, "/")
			return strings.TrimSuffix(base, "/"), rel, rest, ok && rel != ""
		}
	}
	return "", "", "", false
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

func writeFile(path string, r io.Reader) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// depmod writes modules.dep for the unpacked tree. depmod looks under
// lib/modules or usr/lib/modules depending on its version, and the
// package may use either, so both are made to lead to the tree.
func depmod(ctx context.Context, root, release string) error {
	lib, usrLib := filepath.Join(root, "lib"), filepath.Join(root, "usr", "lib")
	if _, err := os.Stat(filepath.Join(lib, "modules")); err != nil {
		if err := os.Symlink(filepath.Join("usr", "lib"), lib); err != nil {
			return err
		}
	} else if _, err := os.Stat(filepath.Join(usrLib, "modules")); err != nil {
		if err := os.MkdirAll(filepath.Join(root, "usr"), 0o755); err != nil {
			return err
		}
		if err := os.Symlink(filepath.Join("..", "lib"), usrLib); err != nil {
			return err
		}
	}
	out, err := exec.CommandContext(ctx, "depmod", "-b", root, release).CombinedOutput()
	if err != nil {
		return fmt.Errorf("depmod: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// moduleName is a module's name from its path: "kernel/drivers/md/dm-mod.ko.xz"
// gives "dm-mod".
func moduleName(path string) string {
	base := filepath.Base(path)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return base
}

// normalize makes "dm-thin-pool" and "dm_thin_pool" the same name, as the
// kernel does.
func normalize(name string) string { return strings.ReplaceAll(name, "-", "_") }

// loadOrder reads modDir's modules.dep and modules.builtin and returns the
// paths (relative to modDir) of the wanted modules and of everything they
// depend on, each after its dependencies, wanted modules in the order
// given. A wanted module built into the kernel is left out; one that is
// neither built in nor in modules.dep is an error.
func loadOrder(modDir string, want []string) ([]string, error) {
	deps := map[string][]string{} // path -> the paths it needs
	byName := map[string]string{} // normalized name -> path
	err := eachLine(filepath.Join(modDir, "modules.dep"), func(line string) {
		mod, needs, ok := strings.Cut(line, ":")
		if !ok {
			return
		}
		deps[mod] = strings.Fields(needs)
		byName[normalize(moduleName(mod))] = mod
	})
	if err != nil {
		return nil, err
	}
	builtin := map[string]bool{}
	if err := eachLine(filepath.Join(modDir, "modules.builtin"), func(line string) {
		builtin[normalize(moduleName(line))] = true
	}); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}

	var order []string
	seen := map[string]bool{}
	var visit func(mod string)
	visit = func(mod string) {
		if seen[mod] {
			return
		}
		seen[mod] = true
		for _, d := range deps[mod] {
			visit(d)
		}
		order = append(order, mod)
	}
	for _, name := range want {
		mod, ok := byName[normalize(name)]
		switch {
		case ok:
			visit(mod)
		case builtin[normalize(name)]:
		default:
			return nil, fmt.Errorf("module %s is neither in modules.dep nor built in", name)
		}
	}
	return order, nil
}

func eachLine(path string, fn func(string)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			fn(line)
		}
	}
	return sc.Err()
}

// uncompress copies a module, undoing the compression its name says.
// insmod inside the machine then needs no decompressor.
func uncompress(ctx context.Context, src, dst string) error {
	var tool string
	switch {
	case strings.HasSuffix(src, ".ko"):
	case strings.HasSuffix(src, ".ko.gz"):
	case strings.HasSuffix(src, ".ko.xz"):
		tool = "xz"
	case strings.HasSuffix(src, ".ko.zst"):
		tool = "zstd"
	default:
		return fmt.Errorf("%s: unknown module compression", src)
	}
	if tool != "" {
		out, err := os.Create(dst)
		if err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, tool, "-dc", src)
		cmd.Stdout = out
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err = cmd.Run()
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%s -dc %s: %v: %s", tool, src, err, strings.TrimSpace(stderr.String()))
		}
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	var r io.Reader = in
	if strings.HasSuffix(src, ".gz") {
		zr, err := gzip.NewReader(in)
		if err != nil {
			return fmt.Errorf("%s: %w", src, err)
		}
		r = zr
	}
	return writeFile(dst, r)
}
