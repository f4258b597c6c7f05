// Package kernelvm boots a distribution kernel under qemu, with software
// emulation only, and runs a shell script as the machine's init, so that
// tests can hand the real dm-thin target metadata this project wrote and
// see whether the kernel accepts it, or take home what the kernel wrote.
//
// Three steps, each usable alone:
//
//	Prepare   find the kernel package the machine's apt would install
//	          (the one linux-image-amd64 depends on), download it once,
//	          and keep its vmlinuz (and the uncompressed kernel inside,
//	          which boots faster) and the device-mapper modules, with
//	          every module they need, in a cache directory
//	Initramfs pack busybox, dmsetup with its shared libraries, those
//	          modules and the script into a cpio archive (uncompressed:
//	          the machine would spend seconds inflating it)
//	Boot      start qemu (-accel tcg, no network) with raw disk images as
//	          virtio disks /dev/vda, /dev/vdb, ..., wait for the script's
//	          end marker and return the console output; the images keep
//	          whatever the kernel wrote
//
// Inside the machine the script runs under busybox sh as PID 1, after
// proc, sys and devtmpfs are mounted, the modules are loaded and every
// disk has appeared. Every busybox applet is on PATH, and dmsetup, with
// DM_DISABLE_UDEV=1 so that it makes the /dev/mapper nodes itself. When
// the script ends, the machine syncs, prints the end marker with the
// script's exit status and powers off.
//
// Everything runs on the host's own tools: apt-get, apt-cache, dpkg-deb
// and depmod (kmod) to prepare the kernel; busybox (a static build), dmsetup
// and ldd for the archive; qemu-system-x86_64 to boot. Missing reports the
// ones that are absent. Only x86-64 hosts are supported.
//
// This package knows nothing of thin pools: the scripts that tests pass to
// Boot do the dm-thin work.
package kernelvm
