# Run inside the kernel test's second machine (e2e/kernel_test.go): the
# data device of the first run is /dev/vda; each metadata image of IMAGES
# ("NAME:DISK ...") is activated on it in turn. For each: print the pool's
# status and what each device of DEVS ("ID:SECTORS ...") reads, then make
# the kernel allocate (a new thin device 9, and writes to snapshot 3 where
# it shares blocks with device 2), and read devices 1, 2 and 4 again from
# the disk. Data put where the space maps say a block is free, or written
# in place into a block they say is not shared, shows as a changed sum.
DATA=$(cat /sys/block/vda/size)

verify() {
	set -e
	name=$1
	dmsetup create pool --table "0 $DATA thin-pool /dev/$2 /dev/vda 128 0"
	echo "status $name pool $(dmsetup status pool)"
	for d in $DEVS; do
		id=${d%%:*}
		dmsetup create "thin$id" --table "0 ${d#*:} thin /dev/mapper/pool $id"
		echo "sum $name $id $(md5sum /dev/mapper/thin$id | cut -d' ' -f1)"
		echo "status $name thin$id $(dmsetup status thin$id)"
	done

	dmsetup message pool 0 "create_thin 9"
	dmsetup create thin9 --table "0 131072 thin /dev/mapper/pool 9"
	dd if=/dev/urandom of=/dev/mapper/thin9 bs=64k count=160 conv=notrunc 2>/dev/null
	dd if=/dev/urandom of=/dev/mapper/thin3 bs=64k seek=10 count=16 conv=notrunc 2>/dev/null
	dd if=/dev/urandom of=/dev/mapper/thin3 bs=64k seek=1000 count=4 conv=notrunc 2>/dev/null
	sync
	for d in $DEVS 9:0; do
		dmsetup remove "thin${d%%:*}"
	done
	echo 3 >/proc/sys/vm/drop_caches
	for d in $DEVS; do
		id=${d%%:*}
		[ "$id" = 3 ] && continue
		dmsetup create "thin$id" --table "0 ${d#*:} thin /dev/mapper/pool $id"
		echo "after $name $id $(md5sum /dev/mapper/thin$id | cut -d' ' -f1)"
		dmsetup remove "thin$id"
	done
	echo "status $name after $(dmsetup status pool)"
	dmsetup remove pool
}

for image in $IMAGES; do
	(verify ${image%%:*} ${image#*:})
	echo "result ${image%%:*} $?"
	dmsetup remove_all 2>/dev/null || true
done
dmesg | grep -E 'device-mapper|thin' | grep -v -E 'uevent|ioctl: |IMA' || true
