# The dockervm machine's start (run by kernelvm's init, busybox sh): mount
# what docker needs, start it, run the test's script, stop docker, and
# write $RESULTS to /dev/vdb as a tar archive.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root RESULTS=/results
mkdir -p /run /var /var/lib/docker /results /root
mount -t tmpfs -o mode=755 run /run
ln -s /run /var/run
mkdir -p /dev/pts /dev/shm /run/lock /run/systemd/system /sys/fs/cgroup
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs shm /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
hostname dockervm
ip link set lo up
. /usr/lib/dockervm/lib.sh
# As udev would, keep a /dev/block/MAJOR:MINOR link per block device, for
# the loop and device-mapper devices docker adds too.
mkdir -p /dev/block
(
	while :; do
		for d in /sys/class/block/*; do
			n=$(cat "$d/dev" 2>/dev/null) || continue
			[ -n "$n" ] && [ ! -e "/dev/block/$n" ] && ln -sf "../${d##*/}" "/dev/block/$n"
		done
		sleep 0.5
	done
) &
log "kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpu"
status=1
if ! mount -t ext4 /dev/vda /var/lib/docker; then
	log "cannot mount the docker disk"
elif ! dockerd_start; then
	log "docker did not start"
	tail -n 50 "$DOCKERD_LOG"
else
	cd "$RESULTS"
	sh -c '. /usr/lib/dockervm/lib.sh; . /usr/lib/dockervm/test.sh'
	status=$?
	echo "$status" >"$RESULTS/test.rc"
	log "the test's script exited $status"
fi
systemctl stop docker.service
containerd_stop
{ echo "== dmsetup ls"; dmsetup ls; } >"$RESULTS/after.txt" 2>&1
sync
umount /var/lib/docker || log "cannot unmount /var/lib/docker"
tar -cf /dev/vdb -C "$RESULTS" . || log "cannot write the results"
sync
exit $status
