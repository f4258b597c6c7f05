# A pool given to docker with dm.thinpooldev, the "direct-lvm" layout of
# production hosts (see TestDockerVMDirect). Runs in the dockervm machine
# with lib.sh sourced and docker running on its own loop-lvm pool; every
# step leaves NAME.out and NAME.rc in $RESULTS for the test to judge.
#
# The thin pool is made by hand on two loop devices, as an administrator
# makes one on block devices, before docker starts on it: the loop-lvm
# state of the boot's first start is moved aside, and dockerd's storage
# options move from its command line to /etc/docker/daemon.json, where the
# plugin reads them while docker is stopped.
POOL=dvm-thinpool
PDIR=/var/lib/docker/dvm-pool
ASIDE=/var/lib/docker/.boot-loop-lvm
# c1 writes a file and prints its checksum on its first run; on every
# later start it checks the file against that checksum.
C1='if [ -e /blob.md5 ]; then md5sum -c /blob.md5 && cat /hello /blob.md5; else echo hello-from-c1 >/hello; head -c 1048576 /dev/urandom >/blob; md5sum /blob | tee /blob.md5; fi'

# Docker's start leaves no storage option on its command line: dockerd
# refuses an option given both there and in daemon.json.
strip_storage_opts() {
	opts=
	set -- $DOCKERD_OPTS
	while [ $# -gt 0 ]; do
		case $1 in
		--storage-driver | --storage-opt) shift ;;
		--storage-driver=* | --storage-opt=*) ;;
		*) opts="$opts $1" ;;
		esac
		[ $# -gt 0 ] && shift
	done
	echo "${opts# }"
}

# setup_direct moves the loop-lvm state aside, makes the pool's two
# sparse files and their loop devices, and prints "meta DEV" and "data DEV".
setup_direct() {
	mkdir "$ASIDE" || return 1
	for f in /var/lib/docker/*; do
		case ${f##*/} in lost+found) continue ;; esac
		mv "$f" "$ASIDE/" || return 1
	done
	mkdir -p "$PDIR" || return 1
	truncate -s 64M "$PDIR/tmeta" && truncate -s 2G "$PDIR/tdata" || return 1
	# A new pool formats its metadata only over a zeroed superblock.
	dd if=/dev/zero of="$PDIR/tmeta" bs=4096 count=1 conv=notrunc 2>/dev/null || return 1
	meta=$(losetup -f) && losetup "$meta" "$PDIR/tmeta" || return 1
	data=$(losetup -f) && losetup "$data" "$PDIR/tdata" || return 1
	echo "meta $meta"
	echo "data $data"
}

pool_create() {
	table="0 $(blockdev --getsz "$DATA") thin-pool $META $DATA 128 32768 1 skip_block_zeroing"
	echo "$table"
	dmsetup create "$POOL" --table "$table"
}

configure_docker() {
	mkdir -p /etc/docker || return 1
	cat >/etc/docker/daemon.json <<EOF || return 1
{
  "storage-driver": "devicemapper",
  "storage-opts": [
    "dm.thinpooldev=/dev/mapper/$POOL",
    "dm.basesize=1G",
    "dm.override_udev_sync_check=true"
  ]
}
EOF
	cat /etc/docker/daemon.json
	DOCKERD_OPTS=$(strip_storage_opts)
	# systemctl, which the plugin may run, reads the options from here.
	printf 'DOCKERD_OPTS="%s"\n' "$DOCKERD_OPTS" >/etc/dockervm.conf || return 1
	echo "dockerd options: $DOCKERD_OPTS"
}

# Setup: docker stops (and removes its loop-lvm pool); the thin pool is
# made; docker starts on it; an image and a container that wrote a file.
step setup-stop-loop systemctl stop docker.socket docker.service
step setup-loop-gone dmsetup ls
step setup-files setup_direct
META=$(sed -n 's/^meta //p' "$RESULTS/setup-files.out")
DATA=$(sed -n 's/^data //p' "$RESULTS/setup-files.out")
step setup-pool pool_create
step setup-meta-dev cat "/sys/block/${META#/dev/}/dev"
step setup-config configure_docker
. /etc/dockervm.conf
step setup-start dockerd_start
step setup-import docker import /usr/share/dockervm/rootfs.tar tiny:latest
step setup-c1 docker run --name c1 --network none tiny:latest sh -c "$C1"

# 1. The live pool, found through the daemon; the kernel's table names its
# metadata device.
step live-table dmsetup table "$POOL"
step live-status docker devmapper status
step live-status-json docker devmapper status --json
step live-check docker devmapper check
step live-check-pool dmsetup status
step live-ls docker devmapper ls --format json
step live-ls-pool dmsetup status

# 2. Docker stops; the pool it was given stays. Status finds it from
# daemon.json and the kernel; check reads it through a snapshot.
step stop systemctl stop docker.socket docker.service
step stopped-dmsetup dmsetup status
step stopped-status docker devmapper status
step stopped-status-json docker devmapper status --json
step stopped-check docker devmapper check
step stopped-check-pool dmsetup status

# 3. Repair refuses a pool given to docker, and changes nothing: not the
# metadata, the pool, nor docker's records (a repair would leave a backup
# folder beside them). The kernel commits the snapshot's release within a
# second: wait for it before the first checksum.
sleep 3
sync
step before-repair sh -c "md5sum $PDIR/tmeta; dmsetup table $POOL; dmsetup status $POOL; ls -a /var/lib/docker/devicemapper"
step repair docker devmapper repair --yes
step after-repair sh -c "md5sum $PDIR/tmeta; dmsetup table $POOL; dmsetup status $POOL; ls -a /var/lib/docker/devicemapper"

# 4. The pool removed, its metadata device is read directly.
step remove dmsetup remove "$POOL"
step removed-dmsetup dmsetup ls
step offline-check docker devmapper check --metadata "$META"
step offline-repair docker devmapper repair --metadata "$META" --dry-run

# 5. The pool again, with the same table; docker starts on it and c1 finds
# its file.
step again-pool pool_create
step again-table dmsetup table "$POOL"
step again-start dockerd_start
step again-c1 docker start -a c1

# Leave the docker disk free to unmount.
systemctl stop docker.socket docker.service
dmsetup remove "$POOL" || log "cannot remove $POOL"
losetup -d "$META" || log "cannot detach $META"
losetup -d "$DATA" || log "cannot detach $DATA"
exit 0
