package repair

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/check"
)

// writeMem writes what w makes of the input into memory and checks it:
// ErrNotClean when it does not check clean.
func writeMem(ctx context.Context, w outputWriter, size int64) (*memImage, error) {
	mem := newMemImage(size)
	if err := w.Write(ctx, mem, size); err != nil {
		return nil, err
	}
	clean, err := w.verify(ctx, mem, size)
	if err != nil {
		return nil, err
	}
	if !clean {
		return nil, ErrNotClean
	}
	return mem, nil
}

// deviceDelta lists, ascending, the blocks other than the superblock that
// writing mem over the device in would change: those mem writes whose
// content differs from the device's. A block mem leaves unwritten is
// unused by the repaired metadata, and is left as it is. It returns
// ErrInPlaceUnsafe unless every one of them is unused by the metadata on
// the device now, as check recounts it from the superblock: the trees, the
// held metadata snapshot's and the space maps' own blocks. Only then does
// the old superblock describe intact metadata until the new one is
// written.
func deviceDelta(ctx context.Context, path string, in *os.File, size int64, mem *memImage) ([]block.Nr, error) {
	cur := make([]byte, block.Size)
	var changed []block.Nr
	for n, b := range mem.blocks {
		if n == 0 || (n+1)*block.Size > size {
			continue
		}
		if _, err := in.ReadAt(cur, n*block.Size); err != nil {
			return nil, fmt.Errorf("%s: reading block %d: %w", path, n, err)
		}
		if !bytes.Equal(cur, b) {
			changed = append(changed, block.Nr(n))
		}
	}
	slices.Sort(changed)
	if len(changed) == 0 {
		return nil, nil
	}
	rep, err := check.Run(ctx, block.NewReader(in, size), check.Options{KeepCounts: true})
	if err != nil {
		return nil, err
	}
	rc := rep.Recount()
	if rc == nil {
		return nil, fmt.Errorf("%s: %w (the current metadata could not be counted in full, so which blocks it uses is unknown)", path, ErrInPlaceUnsafe)
	}
	var used []block.Nr
	for _, n := range changed {
		if int(n) < len(rc.Meta) && (rc.Meta[n] != 0 || rc.SpaceMap[n]) {
			used = append(used, n)
		}
	}
	if len(used) > 0 {
		return nil, fmt.Errorf("%s: %w (%d of the %d blocks it changes are in use, the first block %d); nothing was written to the device",
			path, ErrInPlaceUnsafe, len(used), len(changed), used[0])
	}
	return changed, nil
}

// installDevice repairs the block device in in place, crash-safe: it
// writes w's output into memory and checks it, works out the blocks that
// change and refuses (ErrInPlaceUnsafe) unless the old metadata uses none
// of them but the superblock, all before writing anything. Then it writes
// the backup, the changed blocks, in ascending runs, and fsyncs, then the
// superblock, and fsyncs, and checks what the device holds.
func installDevice(ctx context.Context, o FileOptions, in *os.File, size int64, w outputWriter, backup string) error {
	mem, err := writeMem(ctx, w, size)
	if err != nil {
		return err
	}
	changed, err := deviceDelta(ctx, o.Input, in, size, mem)
	if err != nil {
		return err
	}
	if err := writeBackup(in, size, o.Input, backup); err != nil {
		return err
	}
	if err := o.hook(StepBackupWritten); err != nil {
		return err
	}
	if err := writeRuns(in, mem, changed); err != nil {
		return fmt.Errorf("%s: %w; the superblock was not written, so the device still holds the old metadata (the backup is %s)", o.Input, err, backup)
	}
	if err := in.Sync(); err != nil {
		return fmt.Errorf("%s: %w; the superblock was not written, so the device still holds the old metadata (the backup is %s)", o.Input, err, backup)
	}
	if err := o.hook(StepDeviceWritten); err != nil {
		return err
	}
	sb := make([]byte, block.Size)
	if _, err := mem.ReadAt(sb, 0); err != nil {
		return err
	}
	if _, err := in.WriteAt(sb, 0); err != nil {
		return fmt.Errorf("%s: %w: writing the superblock: %v; check the device, and if it does not check clean write the backup %s back to it", o.Input, ErrDeviceWritten, err, backup)
	}
	if err := in.Sync(); err != nil {
		return fmt.Errorf("%s: %w: syncing the superblock: %v; check the device, and if it does not check clean write the backup %s back to it", o.Input, ErrDeviceWritten, err, backup)
	}
	if err := o.hook(StepSuperblockWritten); err != nil {
		return err
	}
	clean, err := w.verify(ctx, in, size)
	if err != nil {
		return fmt.Errorf("%s: %w: reading it back: %v; check the device, and if it does not check clean write the backup %s back to it", o.Input, ErrDeviceWritten, err, backup)
	}
	if !clean {
		return fmt.Errorf("%s: %w: it does not check clean, though it did in memory; write the backup %s back to the device (dd if=BACKUP of=DEVICE bs=1M conv=fsync) and report this", o.Input, ErrDeviceWritten, backup)
	}
	return nil
}

// writeRuns writes mem's blocks changed, ascending, to out, each run of
// consecutive blocks (up to copyRun) in one write.
func writeRuns(out *os.File, mem *memImage, changed []block.Nr) error {
	buf := make([]byte, copyRun*block.Size)
	for i := 0; i < len(changed); {
		j := i + 1
		for j < len(changed) && j-i < copyRun && changed[j] == changed[j-1]+1 {
			j++
		}
		for k := i; k < j; k++ {
			copy(buf[(k-i)*block.Size:], mem.blocks[int64(changed[k])])
		}
		off := int64(changed[i]) * block.Size
		if _, err := out.WriteAt(buf[:(j-i)*block.Size], off); err != nil {
			return fmt.Errorf("writing blocks %d..%d: %w", changed[i], changed[j-1], err)
		}
		i = j
	}
	return nil
}
