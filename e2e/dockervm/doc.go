// Package dockervm boots a virtual machine that runs a real docker daemon
// on the devicemapper storage driver, and runs a test's script in it, so
// that tests can put "docker devmapper" through what users do: look at a
// live pool, stop docker, check and repair its metadata, start docker
// again, reset the pool.
//
// It builds on kernelvm: the same Debian kernel under qemu with software
// emulation, also loading ext4 and loop, and an initramfs that holds,
// besides busybox and dmsetup, the docker.io, containerd, runc and tini
// packages of the machine's apt (downloaded with apt-get download and
// unpacked, never installed), e2fsprogs and blkid from the host, and a
// busybox root file system for "docker import" (/usr/share/dockervm/rootfs.tar).
//
// Inside the machine:
//
//   - /dev/vda is a fresh ext4 disk mounted on /var/lib/docker; docker
//     makes its loop-lvm pool there on its first start
//   - docker runs as a service: "systemctl start docker.service" and
//     "systemctl stop docker.socket docker.service" start and stop dockerd
//     (with containerd beside it), and "systemctl show" reports its state,
//     so the plugin manages it as on a systemd host (start returns once
//     dockerd runs, without waiting for its API); dockerd runs with
//     DOCKER_RAMDISK=1, since the root is the initramfs, and with
//     DefaultDockerdOpts unless Config.Dockerd says otherwise
//   - no udev runs: libdevmapper makes the /dev/mapper nodes itself, and a
//     loop keeps a /dev/block/MAJOR:MINOR link per block device, as udev
//     would
//   - the test's script runs with /usr/lib/dockervm/lib.sh sourced, after
//     docker has started, in $RESULTS: every file it leaves there comes back
//     in Result.Files. lib.sh gives step NAME CMD... (runs CMD, keeps its
//     output in NAME.out and its exit status in NAME.rc), dockerd_start and
//     dockerd_stop
//
// Boot reads the results back from a second disk, where the machine
// writes them as a tar archive before it powers off.
package dockervm
