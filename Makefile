# docker-devmapper: build, install, demo and test.
#
#   make demo    build, install as a docker CLI plugin, check a damaged sample
#   make test    install test dependencies, vet, run every test (e2e included)
#
# Both work on a fresh Debian machine as root with Go installed.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

GO ?= go
BIN := bin/docker-devmapper
MODULE := github.com/docker-devmapper/docker-devmapper
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X $(MODULE)/plugin.Version=$(VERSION)

# Where "make install" puts the plugin: the per-user plugin directory the
# docker CLI searches first.
PLUGIN_DIR ?= $(or $(DOCKER_CONFIG),$(HOME)/.docker)/cli-plugins

# The reference thin-provisioning-tools 1.1.0, unpacked by "make deps";
# oracle tests find thin_check 1.1.0 here (0.9.0 is on PATH).
TPT11_BIN := $(shell scripts/reference-tools.sh --bin)
export TPT11_BIN

TEST_TIMEOUT ?= 45m
FUZZTIME ?= 30s
FUZZSHORT ?= 3s
DEMO_SAMPLE := testdata/demo/s2-refcount.img.gz

.PHONY: all deps build install demo test e2e fuzz fuzz-short bench clean distclean

all: build

deps:
	@scripts/reference-tools.sh
	@# qemu, busybox and dmsetup for the kernel test (e2e/kernel_test.go),
	@# which skips without root; it fetches the kernel into .cache/kernelvm.
	@# The docker daemon test (e2e/dockervm_test.go) also copies e2fsprogs
	@# and the libraries dockerd and runc load into its machine; it fetches
	@# docker.io, containerd, runc and tini with apt-get download into
	@# .cache/dockervm and never installs them.
	@need=; for p in qemu-system-x86 busybox-static cpio kmod dmsetup e2fsprogs libdevmapper1.02.1 libseccomp2 xz-utils; do \
		dpkg -s $$p >/dev/null 2>&1 || need="$$need $$p"; done; \
	if [ -n "$$need" ] && [ "$$(id -u)" -eq 0 ]; then echo "deps: installing$$need with apt"; \
		export DEBIAN_FRONTEND=noninteractive; inst() { apt-get install -y -qq --no-install-recommends $$need >/dev/null; }; \
		inst || { apt-get update -qq && inst; }; fi
	@# docker.io (dockerd 20.10) for the e2e tests of status, check and
	@# reset (e2e/daemon_test.go), which start their own dockerd on a
	@# private socket and data root, and skip without root or dockerd.
	@if ! command -v dockerd >/dev/null && [ "$$(id -u)" -eq 0 ]; then echo "deps: installing docker.io with apt"; \
		export DEBIAN_FRONTEND=noninteractive; inst() { apt-get install -y -qq docker.io >/dev/null; }; \
		inst || { apt-get update -qq && inst; }; fi

build:
	CGO_ENABLED=0 $(GO) build -buildvcs=false -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/docker-devmapper

install: build
	install -D -m 0755 $(BIN) $(PLUGIN_DIR)/docker-devmapper
	@echo "installed $(PLUGIN_DIR)/docker-devmapper: run 'docker devmapper --help'"

# The demo runs through the docker CLI when there is one, and runs the
# binary directly otherwise: both behave the same. It checks the damaged
# sample (exit 4: damage found), repairs it in place (exit 1: repaired,
# backup beside it), and checks it again (exit 0: clean). Each step shows
# its exit code; the demo fails only when a code is not the one expected.
demo: install
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	gunzip -c $(DEMO_SAMPLE) >"$$tmp/metadata.img"; \
	if command -v docker >/dev/null; then dm=(docker devmapper); \
	else dm=($(BIN)); echo "(no docker CLI here: running $(BIN) directly, which behaves the same)"; fi; \
	run() { want=$$1; shift; echo; echo "\$$ $${dm[*]} $$*"; rc=0; "$${dm[@]}" "$$@" || rc=$$?; \
		case "$$1:$$rc" in check:0) m="clean";; check:4) m="damage found";; repair:0) m="nothing to repair";; \
		repair:1) m="repaired";; *:4) m="damage left";; *) m="see the exit codes in --help";; esac; \
		echo "[exit code $$rc: $$m]"; \
		if [ "$$rc" -ne "$$want" ]; then echo "make demo: expected exit code $$want" >&2; exit 1; fi; }; \
	run 4 check --metadata "$$tmp/metadata.img"; \
	run 1 repair --in-place --metadata "$$tmp/metadata.img"; \
	run 0 check --metadata "$$tmp/metadata.img"

# test runs every package verbosely into a log, prints the package lines,
# the skipped tests with their reasons, the whole log on failure, and ends
# with a count, so the last line says what ran.
test: deps
	$(GO) vet ./...
	@mkdir -p .cache; log=.cache/test.log; rc=0; \
	echo "go test -count=1 -timeout $(TEST_TIMEOUT) ./... (unit, oracle and e2e tests; log in $$log)"; \
	$(GO) test -count=1 -v -timeout $(TEST_TIMEOUT) ./... >"$$log" 2>&1 || rc=$$?; \
	if [ $$rc -ne 0 ]; then grep -v -E '^\s*(=== (RUN|PAUSE|CONT|NAME)|--- PASS)' "$$log" || true; \
	else grep -E '^(ok|FAIL|\?)\s' "$$log" || true; fi; \
	skips=$$(grep -c -E '^\s*--- SKIP' "$$log" || true); \
	if [ "$$skips" -gt 0 ]; then echo "skipped, by reason:"; \
		grep -B1 -A1 -E '^\s*--- SKIP' "$$log" | grep -E '^\s+\S+\.go:[0-9]+: ' | \
		sed -E 's/^\s+\S+\.go:[0-9]+: /  /' | sort -u; fi; \
	pass=$$(grep -c -E '^\s*--- PASS' "$$log" || true); fail=$$(grep -c -E '^\s*--- FAIL' "$$log" || true); \
	pkgs=$$(grep -c -E '^ok\s' "$$log" || true); badpkgs=$$(grep -c -E '^FAIL\s' "$$log" || true); \
	echo "make test: $$pass tests and subtests passed, $$fail failed, $$skips skipped; $$pkgs packages ok, $$badpkgs failed"; \
	exit $$rc
	@$(MAKE) --no-print-directory fuzz-short

# e2e runs only the black-box tests, against the binary "make build" made.
e2e: build
	DEVMAPPER_E2E_BINARY=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./e2e/

# fuzz runs every Fuzz* function in the tree for FUZZTIME each. They are
# found with grep, so a new fuzzer joins without editing this file.
fuzz:
	@found=0; failed=""; \
	for f in $$(grep -rlE --include='*_test.go' --exclude-dir=.cache --exclude-dir=bin '^func Fuzz[A-Za-z0-9_]*\(' . | sort); do \
		pkg=./$$(dirname "$${f#./}"); \
		for fn in $$(grep -oE '^func Fuzz[A-Za-z0-9_]*' "$$f" | cut -d' ' -f2); do \
			found=$$((found+1)); echo "== $$pkg $$fn ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) "$$pkg" || failed="$$failed $$pkg:$$fn"; \
		done; \
	done; \
	echo "make fuzz: $$found fuzz targets ran for $(FUZZTIME) each"; \
	if [ -n "$$failed" ]; then echo "make fuzz: failed:$$failed"; exit 1; fi

# fuzz-short is the quick pass "make test" ends with: every fuzzer for
# FUZZSHORT (about a minute and a half in all on two cores).
fuzz-short:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(FUZZSHORT)

bench:
	@if [ -f scripts/bench.sh ]; then bash scripts/bench.sh; \
	else echo "scripts/bench.sh is not written yet: no benchmarks to run"; fi

clean:
	rm -rf bin e2e/.tmp
	$(GO) clean -testcache

# distclean also drops .cache: the unpacked reference tools and test logs.
distclean: clean
	rm -rf .cache
