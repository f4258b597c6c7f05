package kernelvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Qemu is the emulator Boot runs.
const Qemu = "qemu-system-x86_64"

// Tools lists the host programs Prepare, Initramfs and Boot run, each with
// the Debian package that has it.
var Tools = map[string]string{
	Qemu:        "qemu-system-x86",
	"busybox":   "busybox-static",
	"dmsetup":   "dmsetup",
	"depmod":    "kmod",
	"ldd":       "libc-bin",
	"apt-get":   "apt",
	"apt-cache": "apt",
	"dpkg-deb":  "dpkg",
}

// Missing returns the Tools that are not on PATH.
func Missing() []string {
	var missing []string
	for tool := range Tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	return missing
}

// Config says what one boot does.
type Config struct {
	Script  string   // busybox sh script the machine runs (see the package doc)
	Disks   []string // raw images, attached as /dev/vda, /dev/vdb, ... in this order
	WorkDir string   // where the initramfs and the console log (console.log) are written

	Timeout   time.Duration // the whole boot; 0 means 10 minutes
	MemoryMiB int           // 0 means 1024
	CPUs      int           // 0 means 1
	Files     []File        // more files for the archive
}

// Result is what one boot printed.
type Result struct {
	Console string        // everything on the serial console: kernel messages and the script's output
	Status  int           // the script's exit status
	Elapsed time.Duration // from starting qemu to its exit
}

var endLine = regexp.MustCompile(EndMarker + ` status=(\d+)`)

// ErrNoEnd means the machine stopped, or was stopped at the timeout,
// without printing the end marker: the kernel panicked, init died or the
// script hung.
var ErrNoEnd = errors.New("the machine stopped before the script ended")

// Boot builds the initramfs for cfg.Script, boots k with cfg.Disks and
// waits for the machine to power off. Networking is off. It returns the
// console output once the end marker has been printed, whatever the
// script's status; otherwise an error wrapping ErrNoEnd that quotes the
// end of the console. The disk images keep what the machine wrote.
func (k *Kernel) Boot(ctx context.Context, cfg Config) (*Result, error) {
	if len(cfg.Disks) > 26 {
		return nil, fmt.Errorf("%d disks: at most 26", len(cfg.Disks))
	}
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = 10 * time.Minute
	}
	mem := cfg.MemoryMiB
	if mem == 0 {
		mem = 1024
	}
	initrd := filepath.Join(cfg.WorkDir, "initramfs.cpio")
	f, err := os.Create(initrd)
	if err != nil {
		return nil, err
	}
	err = k.Initramfs(f, cfg.Script, len(cfg.Disks), cfg.Files...)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}

	kernel := k.Vmlinuz
	if k.Vmlinux != "" {
		kernel = k.Vmlinux
	}
	args := []string{
		"-accel", "tcg",
		"-m", strconv.Itoa(mem),
		"-nographic",
		"-no-reboot",
		"-nic", "none",
		"-kernel", kernel,
		"-initrd", initrd,
		// panic=-1 reboots at once on a panic, which -no-reboot turns
		// into qemu exiting. The crypto self-tests take seconds under
		// emulation and test nothing of ours.
		"-append", "console=ttyS0 panic=-1 quiet cryptomgr.notests",
	}
	if cfg.CPUs > 1 {
		args = append(args, "-smp", strconv.Itoa(cfg.CPUs))
	}
	for _, d := range cfg.Disks {
		abs, err := filepath.Abs(d)
		if err != nil {
			return nil, err
		}
		// qemu splits -drive at commas and doubles them to escape.
		args = append(args, "-drive", "file="+strings.ReplaceAll(abs, ",", ",,")+",format=raw,if=virtio")
	}
	logPath := filepath.Join(cfg.WorkDir, "console.log")
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer log.Close()

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, Qemu, args...)
	cmd.Stdout = log
	cmd.Stderr = log
	start := time.Now()
	runErr := cmd.Run()
	elapsed := time.Since(start)
	console, err := os.ReadFile(logPath)
	if err != nil {
		return nil, err
	}
	res := &Result{Console: string(console), Elapsed: elapsed}
	m := endLine.FindSubmatch(console)
	if m == nil {
		why := "qemu exited"
		switch {
		case ctx.Err() != nil:
			why = fmt.Sprintf("stopped after %v", timeout)
		case runErr != nil:
			why = fmt.Sprintf("qemu: %v", runErr)
		}
		return res, fmt.Errorf("%w (%s); console log %s ends:\n%s", ErrNoEnd, why, logPath, tail(console, 4000))
	}
	res.Status, _ = strconv.Atoi(string(m[1]))
	return res, nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
