# Functions for scripts in the dockervm machine (busybox sh). The machine
# sources this file before the test's script, and systemctl sources it too.

RESULTS=${RESULTS:-/results}
DOCKERD_LOG=$RESULTS/dockerd.log
CONTAINERD_LOG=$RESULTS/containerd.log
. /etc/dockervm.conf

log() { echo "dockervm[$(cut -d' ' -f1 /proc/uptime)s]: $*"; }

# step NAME CMD...: run CMD, show and keep its output (NAME.out) and its
# exit status (NAME.rc) in $RESULTS.
step() {
	name=$1
	shift
	log "step $name: $*"
	"$@" >"$RESULTS/$name.out" 2>&1
	rc=$?
	echo "$rc" >"$RESULTS/$name.rc"
	sed "s/^/  $name| /" "$RESULTS/$name.out"
	log "step $name: exit status $rc"
	return 0
}

wait_gone() { # PID SECONDS
	i=0
	while [ -d "/proc/$1" ] && [ $i -lt $(($2 * 5)) ]; do
		sleep 0.2
		i=$((i + 1))
	done
	[ ! -d "/proc/$1" ]
}

containerd_start() {
	if [ -S /run/containerd/containerd.sock ] && [ -n "$(pidof containerd)" ]; then
		return 0
	fi
	mkdir -p /etc/containerd
	printf 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n' >/etc/containerd/config.toml
	setsid containerd </dev/null >>"$CONTAINERD_LOG" 2>&1 &
	i=0
	while [ ! -S /run/containerd/containerd.sock ]; do
		i=$((i + 1))
		[ $i -gt 600 ] && { log "containerd did not come up"; return 1; }
		sleep 0.2
	done
}

containerd_stop() {
	p=$(pidof containerd)
	[ -n "$p" ] || return 0
	kill -TERM $p
	wait_gone "$p" 60 || kill -KILL $p
}

dockerd_running() { [ -n "$(pidof dockerd)" ]; }

# dockerd_launch starts dockerd, detached, and returns once it runs.
dockerd_launch() {
	dockerd_running && return 0
	containerd_start || return 1
	log "starting dockerd $DOCKERD_OPTS"
	DOCKER_RAMDISK=1 setsid dockerd --containerd /run/containerd/containerd.sock $DOCKERD_OPTS </dev/null >>"$DOCKERD_LOG" 2>&1 &
	i=0
	while ! dockerd_running; do
		i=$((i + 1))
		[ $i -gt 50 ] && { log "dockerd did not start:"; tail -n 30 "$DOCKERD_LOG"; return 1; }
		sleep 0.2
	done
}

# dockerd_start starts dockerd and waits until its API answers.
dockerd_start() {
	dockerd_launch || return 1
	i=0
	while ! docker version >/dev/null 2>&1; do
		if [ $i -gt 2 ] && ! dockerd_running; then
			log "dockerd exited:"
			tail -n 30 "$DOCKERD_LOG"
			return 1
		fi
		i=$((i + 1))
		[ $i -gt 600 ] && { log "dockerd did not answer in 600s"; tail -n 30 "$DOCKERD_LOG"; return 1; }
		sleep 1
	done
	log "dockerd up"
}

# dockerd_stop stops dockerd cleanly: devicemapper deactivates the pool and
# detaches its loop devices.
dockerd_stop() {
	p=$(pidof dockerd)
	[ -n "$p" ] || return 0
	log "stopping dockerd"
	kill -TERM $p
	wait_gone "$p" 300 || { log "dockerd still runs after 300s, killing it"; kill -KILL $p; wait_gone "$p" 10; }
	log "dockerd stopped"
}
