# The user's story against a real devicemapper daemon (see TestDockerVM).
# Runs in the dockervm machine with lib.sh sourced and docker running; every
# step leaves NAME.out and NAME.rc in $RESULTS for the test to judge.
META=/var/lib/docker/devicemapper/devicemapper/metadata
PROBE='md5sum -c /blob.md5 && cat /hello'

# Setup: an image, a container that wrote files, its commit, and a
# container made from the commit that has never run.
step setup-import docker import /usr/share/dockervm/rootfs.tar tiny:latest
step setup-c1 docker run --name c1 --network none tiny:latest sh -c \
	'echo hello-from-c1 >/hello; head -c 1048576 /dev/urandom >/blob; md5sum /blob >/blob.md5; cat /blob.md5'
step setup-commit docker commit c1 tiny:c1
step setup-c2 docker create --name c2 --network none tiny:c1 sh -c "$PROBE"
step setup-ps docker ps -a --format '{{.Names}} {{.Image}} {{.Status}}'

# 1. The live pool.
step live-status docker devmapper status
step live-status-json docker devmapper status --json
step live-check docker devmapper check
step live-pool-after-check dmsetup status
step live-ls docker devmapper ls --format json
step live-pool-after-ls dmsetup status

# 2. Stop docker; the pool goes inactive; lower one data block's count.
step stop systemctl stop docker.socket docker.service
step stopped-dmsetup dmsetup ls
step damage env DAMAGE_METADATA=$META /usr/local/bin/damage.test -test.run TestLowerDataCount -test.v

# 3. Check finds the damage. Docker runs on the damaged pool, as on a
# user's host; repair refuses to touch it while docker runs, and with
# --stop-daemon stops docker, repairs the pool and starts docker again.
# Check is clean, live and with docker stopped.
step stopped-status docker devmapper status
step damaged-check docker devmapper check
step damaged-start dockerd_start
step repair-running docker devmapper repair --yes
step repair docker devmapper repair --stop-daemon --yes
step repaired-live-check docker devmapper check
step repaired-stop systemctl stop docker.socket docker.service
step repaired-check docker devmapper check
step repaired-backup sh -c 'ls /var/lib/docker/devicemapper/repair-*/metadata'

# 4. Docker starts again and the containers have their files.
step start dockerd_start
step after-c2 docker start -a c2
step after-run docker run --rm --network none tiny:c1 sh -c "$PROBE"
step after-cp-c1 sh -c 'docker cp c1:/hello /tmp/hello.c1 && cat /tmp/hello.c1'
step after-c1 docker start -a c1
step after-ps docker ps -a --format '{{.Names}} {{.Image}} {{.Status}}'
step after-check docker devmapper check
step after-check-pool dmsetup status

# 4b. Docker's records: a transaction record above the pool's transaction
# id makes docker roll it back at start-up, deleting the thin device it
# names, here c2's. Check reports it; repair sets the record back to the
# pool's transaction id; docker starts and c2 still has its files.
step rec-info sh -c "docker inspect c2 --format '{{.GraphDriver.Data.DeviceId}} {{.GraphDriver.Data.DeviceName}}' && dmsetup status | awk '\$4 == \"thin-pool\" {print \$5}'"
step rec-stop systemctl stop docker.socket docker.service
step rec-damage sh -c 'set -e; set -- $(cat rec-info.out); printf "{\"open_transaction_id\":%d,\"device_hash\":\"%s\",\"device_id\":%d}" $(($3 + 1)) "${2##*-}" "$1" >/var/lib/docker/devicemapper/metadata/transaction-metadata; cat /var/lib/docker/devicemapper/metadata/transaction-metadata'
step rec-check docker devmapper check
step rec-repair docker devmapper repair --yes
step rec-start dockerd_start
step rec-c2 docker start -a c2

# 5. Reset gives docker a new, empty pool that works.
step reset docker devmapper reset --remove-images --yes
step reset-info docker info --format '{{.Driver}} {{range .DriverStatus}}{{if eq (index . 0) "Pool Name"}}{{index . 1}}{{end}}{{end}}'
step reset-images docker images -q
step reset-ps docker ps -aq
step reset-import docker import /usr/share/dockervm/rootfs.tar tiny:new
step reset-run docker run --rm --network none tiny:new sh -c 'echo fresh >/f && cat /f'
step reset-status docker devmapper status
step reset-aside sh -c 'ls -d /var/lib/docker/devicemapper.reset-*'
step reset-stop systemctl stop docker.socket docker.service
step reset-check docker devmapper check
exit 0
