# Run inside the kernel test's first machine (e2e/kernel_test.go): make a
# pool on fresh metadata (/dev/vda) and data (/dev/vdb), give it thin
# devices and snapshots holding known data, print what each device reads
# back, and take everything down so that the kernel commits.
#
# Data block 128 sectors (64 KiB); dd counts in those blocks. Devices:
#   1  64 MiB  random blocks 0-63, a pattern at 600-615, then (after
#              snapshot 2) new random blocks 30-33
#   2  64 MiB  snapshot of 1; new random blocks 10-25 and 1000-1003
#   3  64 MiB  snapshot of 2, never written: it shares everything
#   4  16 MiB  4 KiB pieces at three places (partly written blocks)
#   5          written, then deleted: its blocks are free again
# Transaction id 7 at the end.
set -e
DATA=$(cat /sys/block/vdb/size)
dmsetup create pool --table "0 $DATA thin-pool /dev/vda /dev/vdb 128 0"

# thin ID SECTORS: create device ID in the pool and activate it as thinID.
thin() {
	dmsetup message pool 0 "create_thin $1"
	dmsetup create "thin$1" --table "0 $2 thin /dev/mapper/pool $1"
}
# put ID FIRST COUNT: random data over COUNT blocks from block FIRST.
put() { dd if=/dev/urandom of="/dev/mapper/thin$1" bs=64k seek="$2" count="$3" conv=notrunc 2>/dev/null; }
# snap NEW ORIGIN: snapshot active thinORIGIN as device NEW.
snap() {
	dmsetup suspend "thin$2"
	dmsetup message pool 0 "create_snap $1 $2"
	dmsetup resume "thin$2"
}

thin 1 131072
put 1 0 64
yes "pattern written by the kernel test" | dd of=/dev/mapper/thin1 bs=64k seek=600 count=16 iflag=fullblock conv=notrunc 2>/dev/null
dmsetup message pool 0 "set_transaction_id 0 1"

snap 2 1
dmsetup create thin2 --table "0 131072 thin /dev/mapper/pool 2"
put 2 10 16
put 2 1000 4
put 1 30 4

snap 3 2
dmsetup create thin3 --table "0 131072 thin /dev/mapper/pool 3"

thin 4 32768
dd if=/dev/urandom of=/dev/mapper/thin4 bs=4k seek=3 count=1 conv=notrunc 2>/dev/null
dd if=/dev/urandom of=/dev/mapper/thin4 bs=4k seek=1000 count=2 conv=notrunc 2>/dev/null
dd if=/dev/urandom of=/dev/mapper/thin4 bs=4k seek=4095 count=1 conv=notrunc 2>/dev/null

thin 5 32768
put 5 0 32
dmsetup remove thin5
dmsetup message pool 0 "delete 5"

dmsetup message pool 0 "set_transaction_id 1 7"
sync
for id in 1 2 3 4; do
	echo "sum written $id $(md5sum /dev/mapper/thin$id | cut -d' ' -f1)"
	echo "status written thin$id $(dmsetup status thin$id)"
done
echo "status written pool $(dmsetup status pool)"
for id in 1 2 3 4; do
	dmsetup remove "thin$id"
done
dmsetup remove pool
dmesg | grep -E 'device-mapper|thin' | grep -v -E 'uevent|ioctl: |IMA' || true
