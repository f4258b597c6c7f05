package repair

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/check"
)

// Errors of the file protocol; each message says what to do next.
var (
	// ErrLocked: another repair holds the input.
	ErrLocked = errors.New("another repair is running on this metadata (it holds an exclusive lock); wait for it to finish")
	// ErrBusy: the kernel has the block device open.
	ErrBusy = errors.New("the device is in use by the kernel (an active pool or a mount): stop docker and deactivate the pool with 'dmsetup remove' first")
	// ErrOutputHasMetadata: -o names thin metadata that would be lost.
	ErrOutputHasMetadata = errors.New("the output already holds thin-pool metadata (its superblock checksum is valid); give --force to overwrite it")
	// ErrBackupExists: the backup path is taken.
	ErrBackupExists = errors.New("the backup file already exists; remove it or give another path with --backup")
	// ErrSameFile: -o names the input.
	ErrSameFile = errors.New("the output is the input; use --in-place to replace it safely")
	// ErrDeviceBackup: --in-place on a block device needs a backup path:
	// the default, beside the input, would be in /dev.
	ErrDeviceBackup = errors.New("--in-place on a device needs --backup FILE, a file outside /dev for the copy of the device taken first")
	// ErrInPlaceUnsafe: repairing the device in place would rewrite blocks
	// the current metadata uses, so a crash could leave a mix of both.
	ErrInPlaceUnsafe = errors.New("this repair rewrites blocks the current metadata uses, so a crash could leave a mix; repair to a spare device or file with -o and swap it in")
	// ErrDeviceWritten: writing the superblock of a device repaired in
	// place failed, or the device did not check clean afterwards: what
	// it holds is uncertain, and the error names the backup to restore.
	ErrDeviceWritten = errors.New("the device was written but its repaired metadata is not confirmed")
	// ErrNotClean: the repaired metadata did not check clean, so it was
	// not installed.
	ErrNotClean = errors.New("the repaired metadata does not check clean; the original is left as it was")
)

// Step names a point of the in-place protocol, for FileOptions.Hook.
type Step string

const (
	StepBackupWritten Step = "backup-written" // backup complete, fsynced, renamed into place
	StepTempWritten   Step = "temp-written"   // repaired metadata in the temporary file, fsynced
	StepTempChecked   Step = "temp-checked"   // and checked clean
	StepRenamed       Step = "renamed"        // renamed over the target, directory fsynced

	// A device repaired in place passes StepBackupWritten, then these two.
	StepDeviceWritten     Step = "device-written"     // changed blocks but the superblock written, fsynced
	StepSuperblockWritten Step = "superblock-written" // and the new superblock, fsynced
)

// FileOptions say what RepairFile reads and where it writes.
type FileOptions struct {
	Options
	Input   string
	Output  string // -o: a new file or device; "" with InPlace
	InPlace bool   // replace Input
	Backup  string // where the in-place backup goes; "" for Input+".bak"
	Force   bool   // overwrite an Output that holds thin metadata
	DryRun  bool   // write nothing
	// Hook, when set, is called after each Step; an error from it stops
	// the repair there, as a crash would, and is returned.
	Hook func(Step) error

	// device: Input is a block device. openFile sets it; tests set it to
	// treat a regular file as one.
	device bool
}

func (o FileOptions) hook(s Step) error {
	if o.Hook == nil {
		return nil
	}
	return o.Hook(s)
}

// RepairFile repairs the metadata file or device o.Input.
//
// It never writes the input unless o.InPlace. It takes an exclusive flock
// on the input for the whole run (ErrLocked if another holds it) and opens
// block devices with O_EXCL (ErrBusy while the kernel uses them). Writing
// goes to a temporary file beside the target, which is fsynced, checked
// with check.Run and only then renamed over the target, and the directory
// fsynced; with o.InPlace a backup of the input is written, fsynced and
// renamed into place before anything else. Killed at any moment it leaves
// the original or the complete repaired file. An -o block device is
// written directly, superblock last.
//
// A block device cannot be renamed over, so in place it is written as the
// kernel writes it: o.Backup must name the backup (ErrDeviceBackup), and
// the repair is made in memory and checked first. Only when every block it
// changes apart from the superblock is one the current metadata does not
// use are those blocks written, fsynced, and then the superblock, whose
// one 4 KiB write switches from the old metadata to the new; otherwise
// nothing is written (ErrInPlaceUnsafe). Killed at any moment it leaves
// the old superblock over intact old metadata, or the repaired metadata.
//
// The Result is returned whenever the input could be analysed, also with
// an error (for example ErrNotClean).
func RepairFile(ctx context.Context, o FileOptions) (*Result, error) {
	o, in, size, unlock, err := openFile(o)
	if err != nil {
		return nil, err
	}
	defer unlock()
	p, err := Analyze(ctx, block.NewReader(in, size), o.Options)
	if err != nil {
		return nil, err
	}
	res := p.res
	res.Input = o.Input
	if res.Action == Nothing || res.Action == Cannot {
		return res, nil
	}
	res.DryRun = o.DryRun
	res.Output, res.Backup = o.targets()
	err = install(ctx, o, in, size, p)
	if o.DryRun && errors.Is(err, ErrNotClean) {
		// A dry run's report says how the result checks.
		err = nil
	}
	return res, err
}

// openFile opens o.Input as RepairFile and DropFile read it: locked, a
// block device exclusively, and with o.InPlace the file a symbolic link
// names. It refuses an o.Output that would lose thin metadata (see
// checkOutput). o comes back with the input's real path.
func openFile(o FileOptions) (FileOptions, *os.File, int64, func(), error) {
	if o.InPlace {
		// Replace the file a symbolic link points at, not the link.
		real, err := filepath.EvalSymlinks(o.Input)
		if err != nil {
			return o, nil, 0, nil, err
		}
		o.Input = real
	}
	in, size, dev, unlock, err := openInput(o.Input, o.InPlace && !o.DryRun, o.device)
	if err != nil {
		return o, nil, 0, nil, err
	}
	o.device = dev
	if o.InPlace && dev && !o.DryRun && o.Backup == "" {
		unlock()
		return o, nil, 0, nil, fmt.Errorf("%s: %w", o.Input, ErrDeviceBackup)
	}
	if !o.DryRun && !o.InPlace {
		if err := checkOutput(o.Input, o.Output, o.Force); err != nil {
			unlock()
			return o, nil, 0, nil, err
		}
	}
	return o, in, size, unlock, nil
}

// targets names where o writes, and where its backup goes: "" for each
// when there is none.
func (o FileOptions) targets() (target, backup string) {
	switch {
	case o.DryRun:
		return "", ""
	case o.InPlace:
		if o.Backup == "" {
			return o.Input, o.Input + ".bak"
		}
		return o.Input, o.Backup
	}
	return o.Output, ""
}

// install writes what w makes of the input in (size bytes) as o says: a
// dry run into memory, checked (ErrNotClean when the result does not
// check clean), and for a device in place also whether it could be
// written safely (ErrInPlaceUnsafe); a device in place as installDevice
// writes it; otherwise, with o.InPlace, the backup first, then the output
// as writeDevice or writeFile write it.
func install(ctx context.Context, o FileOptions, in *os.File, size int64, w outputWriter) error {
	if o.DryRun {
		mem, err := writeMem(ctx, w, size)
		if err == nil && o.InPlace && o.device {
			_, err = deviceDelta(ctx, o.Input, in, size, mem)
		}
		return err
	}
	target, backup := o.targets()
	if o.InPlace && o.device {
		return installDevice(ctx, o, in, size, w, backup)
	}
	if o.InPlace {
		if err := writeBackup(in, size, o.Input, backup); err != nil {
			return err
		}
		if err := o.hook(StepBackupWritten); err != nil {
			return err
		}
	}
	if isDevice(target) {
		return writeDevice(ctx, w, target, size)
	}
	return writeFile(ctx, w, o, target, size)
}

// openInput opens path for reading, a block device (or, with asDevice,
// any file taken for one) exclusively, so that a device the kernel holds
// is refused, and for writing as well when writeDevice: a device repaired
// in place. It takes an exclusive lock; unlock releases it and closes the
// file. dev says whether path was opened as a device.
func openInput(path string, writeDevice, asDevice bool) (f *os.File, size int64, dev bool, unlock func(), err error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, 0, false, nil, err
	}
	dev = asDevice || st.Mode()&os.ModeDevice != 0
	flags := os.O_RDONLY
	if dev {
		flags |= syscall.O_EXCL
		if writeDevice {
			flags = os.O_RDWR | syscall.O_EXCL
		}
	}
	f, err = os.OpenFile(path, flags, 0)
	if err != nil {
		if errors.Is(err, syscall.EBUSY) {
			return nil, 0, false, nil, fmt.Errorf("%s: %w", path, ErrBusy)
		}
		return nil, 0, false, nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, 0, false, nil, fmt.Errorf("%s: %w", path, ErrLocked)
		}
		return nil, 0, false, nil, fmt.Errorf("%s: cannot lock: %w", path, err)
	}
	size, err = f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, 0, false, nil, fmt.Errorf("%s: cannot find its size: %w", path, err)
	}
	return f, size, dev, func() { f.Close() }, nil
}

func isDevice(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode()&os.ModeDevice != 0
}

// checkOutput refuses an output that is the input, or that holds thin
// metadata unless force. A missing or all-zero output is fine.
func checkOutput(input, output string, force bool) error {
	if output == "" {
		return errors.New("no output given: use -o FILE, or --in-place")
	}
	ost, err := os.Stat(output)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if ist, err := os.Stat(input); err == nil && os.SameFile(ist, ost) {
		return fmt.Errorf("%s: %w", output, ErrSameFile)
	}
	f, err := os.Open(output)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, block.Size)
	if _, err := io.ReadFull(f, b); err != nil {
		return nil // shorter than a block: holds no metadata
	}
	if !force && block.Verify(b, 0, block.Superblock) == nil {
		return fmt.Errorf("%s: %w", output, ErrOutputHasMetadata)
	}
	return nil
}

// writeBackup copies the input to a temporary file beside backup, fsyncs
// it and renames it into place, so that backup is either absent or whole.
func writeBackup(in *os.File, size int64, input, backup string) error {
	if _, err := os.Lstat(backup); err == nil {
		return fmt.Errorf("%s: %w", backup, ErrBackupExists)
	}
	dir := filepath.Dir(backup)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(backup)+".tmp-*")
	if err != nil {
		return fmt.Errorf("cannot write the backup: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := copySparse(tmp, in, size); err != nil {
		return fmt.Errorf("cannot write the backup: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("cannot write the backup: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("cannot write the backup: %w", err)
	}
	if err := os.Link(tmp.Name(), backup); err != nil {
		// Link, not rename, so that a backup made meanwhile is never
		// replaced.
		return fmt.Errorf("cannot write the backup: %w", err)
	}
	os.Remove(tmp.Name())
	ok = true
	return block.SyncDir(dir)
}

// copySparse copies size bytes of in to out, leaving holes where in reads
// as zeros: docker's loop metadata file is 2 GB of which a few MB are
// used, and its backup should cost what it holds. Where the file system
// tells where data lies (SEEK_DATA), holes are not even read.
func copySparse(out, in *os.File, size int64) error {
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		start, end := dataExtent(in, off, size)
		if start >= size {
			break
		}
		for start < end {
			n := int(min(int64(len(buf)), end-start))
			if _, err := in.ReadAt(buf[:n], start); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			if !allZero(buf[:n]) {
				if _, err := out.WriteAt(buf[:n], start); err != nil {
					return err
				}
			}
			start += int64(n)
		}
		off = end
	}
	return out.Truncate(size)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// outputWriter is what the file protocol writes: a repair Plan, or a drop
// of devices. Write writes the output; verify checks it and says whether
// it checks clean.
type outputWriter interface {
	Write(ctx context.Context, out Output, size int64) error
	verify(ctx context.Context, out Output, size int64) (clean bool, err error)
}

func (p *Plan) verify(ctx context.Context, out Output, size int64) (bool, error) {
	if err := p.Verify(ctx, out, size); err != nil {
		return false, err
	}
	return p.res.After.Outcome == check.Clean, nil
}

// writeFile writes p to a temporary file beside target, checks it, and
// renames it over target.
func writeFile(ctx context.Context, p outputWriter, o FileOptions, target string, size int64) error {
	dir := filepath.Dir(target)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(target)+".repair-*")
	if err != nil {
		return fmt.Errorf("cannot create the output: %w", err)
	}
	installed := false
	defer func() {
		if !installed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if st, err := os.Stat(o.Input); err == nil && o.InPlace {
		tmp.Chmod(st.Mode().Perm())
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			tmp.Chown(int(sys.Uid), int(sys.Gid)) // best effort: only root may
		}
	}
	if err := tmp.Truncate(size); err != nil {
		return fmt.Errorf("cannot size the output: %w", err)
	}
	if err := p.Write(ctx, tmp, size); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := o.hook(StepTempWritten); err != nil {
		return err
	}
	if clean, err := p.verify(ctx, tmp, size); err != nil {
		return err
	} else if !clean {
		return ErrNotClean
	}
	if err := o.hook(StepTempChecked); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), target); err != nil {
		return fmt.Errorf("cannot install the repaired metadata: %w", err)
	}
	installed = true
	if err := block.SyncDir(dir); err != nil {
		return err
	}
	return o.hook(StepRenamed)
}

// writeDevice writes p straight to a block device, which it opens with
// O_EXCL. Block 0 is zeroed first and the superblock written last, so the
// device holds no pool until the output is complete.
func writeDevice(ctx context.Context, p outputWriter, target string, size int64) error {
	f, err := os.OpenFile(target, os.O_RDWR|syscall.O_EXCL, 0)
	if err != nil {
		if errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("%s: %w", target, ErrBusy)
		}
		return err
	}
	defer f.Close()
	devSize, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	if devSize < size {
		return fmt.Errorf("%s: %d bytes, smaller than the input's %d; give a device at least as large", target, devSize, size)
	}
	if err := p.Write(ctx, f, size); err != nil {
		return err
	}
	if clean, err := p.verify(ctx, f, size); err != nil {
		return err
	} else if !clean {
		return ErrNotClean
	}
	return nil
}
