#!/usr/bin/env bash
# bench.sh: time docker-devmapper against the reference thin-provisioning
# tools (0.9.0 on PATH, 1.1.0 under $TPT11_BIN) on two generated Docker-like
# pools of about 4M and 16M mappings.
#
#   scripts/bench.sh                     generate the pools (again only when
#                                        cmd/mkpool or what it uses changed),
#                                        then time
#   BENCH_REGEN=1 scripts/bench.sh       generate the pools again anyway
#   BENCH_POOLS="1M 4M" scripts/bench.sh other sizes (suffix K or M)
#
# The pools live in .cache/bench/ (made by cmd/mkpool, seed 1). Every run
# starts cold: the input file is synced and dropped from the page cache
# first. Each cell shows wall seconds and peak RSS; the ratio columns are
# reference time / our time (above 1: we are faster). A tool that is not
# installed shows "not installed"; a command that fails shows its exit code
# and the table goes on.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=.cache/bench
TPT11_BIN=${TPT11_BIN:-.cache/tpt11/usr/sbin}
POOLS=${BENCH_POOLS:-"4M 16M"}
OURS=bin/docker-devmapper
mkdir -p "$CACHE"

say() { printf '%s\n' "$*" >&2; }

# One run at a time: runs share the cached pools, and two at once would
# also skew each other's timings. Each run keeps its scratch files apart.
exec 9>"$CACHE/lock"
if command -v flock >/dev/null && ! flock -n 9; then
	say "waiting for another bench run to finish"
	flock 9
fi
WORK=$(mktemp -d "$CACHE/run.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- build --------------------------------------------------------------
# Without VCS stamps the binary changes only when its code does; its hash
# keys the cached pools, so a changed generator or Restorer makes new ones.
go build -buildvcs=false -o bin/mkpool ./cmd/mkpool
MKPOOL_KEY=$(sha256sum bin/mkpool | cut -c1-16)
if ! make -s build >/dev/null 2>&1 && ! go build -o "$OURS" ./cmd/docker-devmapper 2>/dev/null; then
	say "note: $OURS does not build yet; only the reference tools are timed"
fi

# --- tools --------------------------------------------------------------
# ref NAME VERSION: path of a reference tool, or "" when not installed.
ref() {
	local name=$1 version=$2 p=""
	if [ "$version" = 0.9.0 ]; then
		p=$(command -v "$name" 2>/dev/null || true)
	elif [ -x "$TPT11_BIN/$name" ]; then
		p=$TPT11_BIN/$name
	fi
	# Only the version asked for counts.
	if [ -n "$p" ] && "$p" --version 2>/dev/null | grep -q "^$version"; then
		echo "$p"
	fi
}

# ours SUBCOMMAND: does our binary have it? (Asking for the help of a
# missing command prints the top-level help, so read the command list.)
ours() { [ -x "$OURS" ] && "$OURS" --help 2>/dev/null | grep -qE "^[[:space:]]+$1[[:space:]]"; }

have_time=false
if [ -x /usr/bin/time ]; then
	have_time=true
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	say "installing GNU time for peak RSS"
	if apt-get install -y -qq time >/dev/null 2>&1; then have_time=true; fi
fi

# --- measuring ----------------------------------------------------------
# cold FILE: drop FILE from the page cache.
cold() {
	sync
	dd if="$1" iflag=nocache count=0 status=none 2>/dev/null || true
}

# measure CMD...: run it, set SECS, RSS (KiB) and RC. Output goes to
# $WORK/last.out and $WORK/last.err.
measure() {
	local t0 t1 out=$WORK/last.out err=$WORK/last.err
	RC=0
	if $have_time; then
		t0=$(date +%s.%N)
		/usr/bin/time -f '%M' -o "$WORK/last.rss" "$@" >"$out" 2>"$err" || RC=$?
		t1=$(date +%s.%N)
		RSS=$(tail -n 1 "$WORK/last.rss")
	else
		# Without GNU time: poll the process's high-water mark.
		t0=$(date +%s.%N)
		"$@" >"$out" 2>"$err" &
		local pid=$! hwm=0 v
		while kill -0 "$pid" 2>/dev/null; do
			v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
			[ -n "$v" ] && hwm=$v
			sleep 0.01
		done
		wait "$pid" || RC=$?
		t1=$(date +%s.%N)
		RSS=$hwm
	fi
	SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
}

# cell: SECS and RSS as a table cell, or the failure.
cell() {
	if [ "$RC" -ne 0 ]; then
		printf 'failed (exit %d)' "$RC"
	else
		printf '%ss %sMiB' "$SECS" "$((RSS / 1024))"
	fi
}

ratio() { # ref-secs our-secs
	if [ -z "$1" ] || [ -z "$2" ]; then echo "-"; return; fi
	awk -v r="$1" -v o="$2" 'BEGIN { if (o > 0) printf "%.1fx", r / o; else print "-" }'
}

ROWS=()
# row POOL OP OURS_CELL OURS_SECS REF09_CELL REF09_SECS REF11_CELL REF11_SECS NOTE
row() {
	ROWS+=("$1|$2|$3|$5|$7|$(ratio "$6" "$4")|$(ratio "$8" "$4")|$9")
}

# time_ref LABEL CMD...: sets C and S for a reference command.
run_cmd() { # FILE CMD...: cold, measure, set C (cell) and S (secs or "")
	local file=$1
	shift
	cold "$file"
	measure "$@"
	C=$(cell)
	S=""
	if [ "$RC" -eq 0 ]; then S=$SECS; fi
}

# --- pools --------------------------------------------------------------
mappings() { # 4M -> 4000000
	local n=${1%[KkMm]}
	case $1 in
	*[Mm]) echo $((n * 1000000)) ;;
	*[Kk]) echo $((n * 1000)) ;;
	*) echo "$1" ;;
	esac
}

check09=$(ref thin_check 0.9.0)
check11=$(ref thin_check 1.1.0)
dump09=$(ref thin_dump 0.9.0)
dump11=$(ref thin_dump 1.1.0)
restore09=$(ref thin_restore 0.9.0)
restore11=$(ref thin_restore 1.1.0)
repair09=$(ref thin_repair 0.9.0)
repair11=$(ref thin_repair 1.1.0)
ls09=$(ref thin_ls 0.9.0)
ls11=$(ref thin_ls 1.1.0)

for size in $POOLS; do
	n=$(mappings "$size")
	pool=$CACHE/pool-$size.meta
	if [ ! -s "$pool" ] || [ -n "${BENCH_REGEN:-}" ] || [ "$(cat "$pool.key" 2>/dev/null)" != "$MKPOOL_KEY" ]; then
		say "generating $pool ($n mappings)"
		rm -f "$pool.key" # valid again only once complete
		measure bin/mkpool -o "$pool" -mappings "$n" -seed 1
		if [ "$RC" -ne 0 ]; then
			cat "$WORK/last.err" >&2
			exit 1
		fi
		cat "$WORK/last.out" >"$pool.info"
		echo "$MKPOOL_KEY" >"$pool.key"
		say "  $(cat "$pool.info")"
		say "  mkpool: ${SECS}s, peak RSS $((RSS / 1024))MiB"
	fi
	say "pool $size: $(cat "$pool.info" 2>/dev/null || echo "$pool")"

	# check
	oc="not built" os=""
	if ours check; then
		run_cmd "$pool" "$OURS" check --metadata "$pool"
		oc=$C os=$S
	fi
	c09="not installed" s09="" c11="not installed" s11=""
	if [ -n "$check09" ]; then run_cmd "$pool" "$check09" "$pool"; c09=$C s09=$S; fi
	if [ -n "$check11" ]; then run_cmd "$pool" "$check11" "$pool"; c11=$C s11=$S; fi
	row "$size" check "$oc" "$os" "$c09" "$s09" "$c11" "$s11" ""

	# dump: ours must print what thin_dump 0.9.0 prints.
	xml=$WORK/pool-$size.xml
	ourxml=$WORK/pool-$size.ours.xml
	rm -f "$xml" "$ourxml"
	c09="not installed" s09="" c11="not installed" s11=""
	if [ -n "$dump09" ]; then
		run_cmd "$pool" "$dump09" "$pool" -o "$xml"
		c09=$C s09=$S
	fi
	if [ -n "$dump11" ]; then
		run_cmd "$pool" "$dump11" "$pool" -o "$WORK/pool-$size.1.1.0.xml"
		c11=$C s11=$S
		rm -f "$WORK/pool-$size.1.1.0.xml"
	fi
	oc="not built" os="" note=""
	if ours dump; then
		run_cmd "$pool" "$OURS" dump --metadata "$pool" -o "$ourxml"
		oc=$C os=$S
		if [ "$RC" -ne 0 ]; then
			rm -f "$ourxml"
		elif [ -s "$xml" ]; then
			if cmp -s "$xml" "$ourxml"; then note="same XML as 0.9.0"; else note="XML DIFFERS from 0.9.0"; fi
		fi
	fi
	# Restore reads 0.9.0's XML, or ours when 0.9.0 is not installed.
	if [ ! -s "$xml" ] && [ -s "$ourxml" ]; then
		mv "$ourxml" "$xml"
	fi
	rm -f "$ourxml"
	row "$size" dump "$oc" "$os" "$c09" "$s09" "$c11" "$s11" "$note"

	# restore from the 0.9.0 XML (flat: every device gets its own leaves,
	# so the output needs room for all mappings unshared).
	if [ -s "$xml" ]; then
		out=$WORK/restored.meta
		bytes=$(((n / 100 + 65536) * 4096))
		fresh() { rm -f "$out"; truncate -s "$bytes" "$out"; }
		c09="not installed" s09="" c11="not installed" s11=""
		if [ -n "$restore09" ]; then fresh; run_cmd "$xml" "$restore09" -i "$xml" -o "$out"; c09=$C s09=$S; fi
		if [ -n "$restore11" ]; then fresh; run_cmd "$xml" "$restore11" -i "$xml" -o "$out"; c11=$C s11=$S; fi
		oc="not built" os="" note=""
		if ours restore; then
			help=$("$OURS" restore --help 2>&1 || true)
			in_flag=--input
			grep -q -- '--input' <<<"$help" || in_flag=-i
			out_flag=-o
			if grep -q -- '--output' <<<"$help"; then
				out_flag=--output
			elif grep -q -- '--metadata' <<<"$help"; then
				out_flag=--metadata
			fi
			fresh
			run_cmd "$xml" "$OURS" restore "$in_flag" "$xml" "$out_flag" "$out"
			oc=$C os=$S
			if [ "$RC" -eq 0 ] && [ -n "$check11" ]; then
				if "$check11" -q "$out"; then note="thin_check 1.1.0 passes it"; else note="thin_check 1.1.0 FAILS it"; fi
			fi
		fi
		row "$size" restore "$oc" "$os" "$c09" "$s09" "$c11" "$s11" "$note"
		rm -f "$out"
	else
		row "$size" restore "no XML to restore" "" "-" "" "-" "" "neither thin_dump 0.9.0 nor our dump ran"
	fi
	rm -f "$xml"

	# repair: the same pool with the classic damage, one shared data block
	# whose stored count is 1 instead of 2. Ours rebuilds the space maps and
	# keeps the trees; thin_repair rebuilds everything.
	damaged=$WORK/damaged.meta
	out=$WORK/repaired.meta
	if bin/mkpool -q -o "$damaged" -mappings "$n" -seed 1 -lower-count; then
		dbytes=$(stat -c %s "$damaged")
		fresh() { rm -f "$out"; truncate -s "$dbytes" "$out"; }
		c09="not installed" s09="" c11="not installed" s11=""
		if [ -n "$repair09" ]; then fresh; run_cmd "$damaged" "$repair09" -i "$damaged" -o "$out"; c09=$C s09=$S; fi
		if [ -n "$repair11" ]; then fresh; run_cmd "$damaged" "$repair11" -i "$damaged" -o "$out"; c11=$C s11=$S; fi
		oc="not built" os="" note=""
		if ours repair; then
			rm -f "$out"
			cold "$damaged"
			measure "$OURS" repair --metadata "$damaged" -o "$out"
			if [ "$RC" -eq 1 ]; then # 1: repaired
				RC=0
				oc=$(cell) os=$SECS
				if [ -n "$check11" ]; then
					if "$check11" -q "$out"; then note="thin_check 1.1.0 passes it"; else note="thin_check 1.1.0 FAILS it"; fi
				fi
			else
				oc=$(cell)
			fi
		fi
		row "$size" repair "$oc" "$os" "$c09" "$s09" "$c11" "$s11" "$note"
	fi
	rm -f "$damaged" "$out"

	# ls: mapped, exclusive and shared blocks per device.
	c09="not installed" s09="" c11="not installed" s11=""
	if [ -n "$ls09" ]; then run_cmd "$pool" "$ls09" -o DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS "$pool"; c09=$C s09=$S; fi
	if [ -n "$ls11" ]; then run_cmd "$pool" "$ls11" -o DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS "$pool"; c11=$C s11=$S; fi
	oc="not built" os=""
	if ours ls; then run_cmd "$pool" "$OURS" ls --metadata "$pool" --root= ; oc=$C os=$S; fi
	row "$size" ls "$oc" "$os" "$c09" "$s09" "$c11" "$s11" ""
done

# --- table --------------------------------------------------------------
echo
echo "cold runs on $(nproc) CPUs; cells: wall seconds, peak RSS; ratio = reference time / ours"
table() {
	echo "pool|op|docker-devmapper|0.9.0|1.1.0|0.9.0/ours|1.1.0/ours|note"
	printf '%s\n' "${ROWS[@]}"
}
if command -v column >/dev/null; then table | column -t -s '|'; else table | tr '|' '\t'; fi
