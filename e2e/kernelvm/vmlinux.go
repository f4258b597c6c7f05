package kernelvm

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
)

// Why vmlinux: under software emulation, a bzImage spends a good part of
// every boot decompressing itself (an xz payload of about 8 MB in
// Debian's). qemu also boots an uncompressed ELF kernel directly through
// its PVH entry point, so Prepare unpacks the payload once and Boot uses
// it when the kernel has that entry point.

// payloadMagic are the starts of the compressed payloads a bzImage may
// carry, with the program that decompresses each ("" for gzip, done here).
var payloadMagic = []struct {
	magic []byte
	tool  []string
}{
	{[]byte{0xfd, '7', 'z', 'X', 'Z', 0}, []string{"xz", "-dc", "--single-stream"}},
	{[]byte{0x28, 0xb5, 0x2f, 0xfd}, []string{"zstd", "-dc"}},
	{[]byte{0x1f, 0x8b, 0x08}, nil},
}

// xenNotePVH is XEN_ELFNOTE_PHYS32_ENTRY: the note that gives a PVH entry.
const xenNotePVH = 18

// extractVmlinux writes the ELF kernel inside the bzImage src to dst, if
// it has a PVH entry point.
func extractVmlinux(ctx context.Context, src, dst string) error {
	img, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range payloadMagic {
		at := bytes.Index(img, p.magic)
		if at < 0 {
			continue
		}
		var out bytes.Buffer
		if p.tool == nil {
			err = gunzipOne(&out, img[at:])
		} else {
			cmd := exec.CommandContext(ctx, p.tool[0], p.tool[1:]...)
			cmd.Stdin = bytes.NewReader(img[at:])
			cmd.Stdout = &out
			// The payload is followed by other data, which some
			// decompressors complain about after doing their job: the
			// ELF check below judges the result.
			err = cmd.Run()
		}
		if perr := checkPVH(out.Bytes()); perr != nil {
			errs = append(errs, fmt.Errorf("payload at %d: %w", at, errors.Join(perr, err)))
			continue
		}
		return os.WriteFile(dst, out.Bytes(), 0o644)
	}
	if errs == nil {
		return errors.New("no compressed payload found in the boot image")
	}
	return errors.Join(errs...)
}

func gunzipOne(w io.Writer, b []byte) error {
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return err
	}
	zr.Multistream(false)
	_, err = io.Copy(w, zr)
	return err
}

// checkPVH says whether b is an x86-64 ELF kernel with a PVH entry note.
func checkPVH(b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return err
	}
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("ELF for %v", f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		notes, err := io.ReadAll(p.Open())
		if err != nil {
			return err
		}
		// Each note: namesz, descsz, type (4 bytes each, this file's
		// byte order), then name and desc, each padded to 4 bytes.
		for len(notes) >= 12 {
			namesz := int(f.ByteOrder.Uint32(notes[0:]))
			descsz := int(f.ByteOrder.Uint32(notes[4:]))
			typ := f.ByteOrder.Uint32(notes[8:])
			end := 12 + align4(namesz) + align4(descsz)
			if namesz < 0 || descsz < 0 || end > len(notes) {
				break
			}
			name := strings.TrimRight(string(notes[12:12+namesz]), "\x00")
			if name == "Xen" && typ == xenNotePVH {
				return nil
			}
			notes = notes[end:]
		}
	}
	return errors.New("no PVH entry note")
}

func align4(n int) int { return (n + 3) &^ 3 }
