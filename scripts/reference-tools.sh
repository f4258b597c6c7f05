#!/usr/bin/env bash
# reference-tools.sh installs the two reference thin-provisioning-tools that
# the oracle tests compare against, side by side:
#
#   0.9.0 (C++, Debian bookworm)  installed with apt; thin_* on PATH
#   1.1.0 (Rust, Debian trixie)   unpacked, not installed, under .cache/tpt11/
#
# The 1.1.0 package is fetched with apt from the same mirror the machine
# already uses, through a private apt state directory, so the machine's own
# package lists and installed packages are left alone. Running it again is
# cheap: each step is skipped when its result is already there.
#
# Usage: scripts/reference-tools.sh         install what is missing
#        scripts/reference-tools.sh --bin   print the 1.1.0 tools directory
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=${TPT11_DIR:-$root/.cache/tpt11}
bin=$dest/usr/sbin

if [[ ${1-} == --bin ]]; then
	echo "$bin"
	exit 0
fi

say() { echo "reference-tools: $*" >&2; }

as_root() {
	if [[ $(id -u) -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		say "need root to run: $*"
		say "run this script as root, or install sudo"
		exit 1
	fi
}

# 0.9.0: the distribution's own package.
if ! command -v thin_check >/dev/null; then
	say "installing thin-provisioning-tools with apt"
	export DEBIAN_FRONTEND=noninteractive
	# A fresh machine may have no package lists at all; skip the update
	# when the caller has just done one.
	[[ ${APT_UPDATED-} == 1 ]] || as_root apt-get update -qq
	as_root apt-get install -y -qq thin-provisioning-tools >/dev/null
fi

# mirror prints the Debian mirror this machine uses, so the download works
# behind the same proxy or local mirror as everything else.
mirror() {
	local uri
	uri=$(apt-get indextargets --format '$(REPO_URI)' 'Identifier: Packages' 2>/dev/null |
		grep -E '/debian/?$' | head -n1 || true)
	echo "${uri:-http://deb.debian.org/debian/}"
}

# 1.1.0: unpacked from trixie's package.
if [[ ! -x $bin/pdata_tools ]]; then
	command -v dpkg-deb >/dev/null || { say "dpkg-deb is missing: this needs a Debian-based machine"; exit 1; }
	work=$(mktemp -d)
	trap 'rm -rf "$work"' EXIT
	mkdir -p "$work/lists/partial" "$work/archives/partial"
	uri=$(mirror)
	echo "deb ${uri%/} trixie main" >"$work/sources.list"
	apt_opts=(
		-o "Dir::Etc::sourcelist=$work/sources.list"
		-o "Dir::Etc::sourceparts=-"
		-o "Dir::State::Lists=$work/lists"
		-o "Dir::Cache::archives=$work/archives"
		-o "APT::Get::List-Cleanup=0"
	)
	# apt drops to the _apt user to download, which cannot write into a
	# private directory of another user; as root, download as root instead
	# of warning about it.
	[[ $(id -u) -ne 0 ]] || apt_opts+=(-o "APT::Sandbox::User=root")
	say "fetching thin-provisioning-tools from trixie (${uri%/})"
	apt-get "${apt_opts[@]}" update -qq
	(cd "$work" && apt-get "${apt_opts[@]}" download -qq thin-provisioning-tools)
	rm -rf "$dest"
	mkdir -p "$dest"
	dpkg-deb -x "$work"/thin-provisioning-tools_*.deb "$dest"
fi

v09=$(thin_check -V 2>&1 || true)
v11=$("$bin/thin_check" -V 2>&1 || true)
if [[ $v11 != 1.* ]]; then
	say "the unpacked 1.1.0 thin_check does not run: $v11"
	say "remove $dest and run this script again"
	exit 1
fi
say "thin_check $v09 on PATH, thin_check $v11 in $bin"
