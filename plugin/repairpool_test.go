package plugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/plugin/daemon"
)

// poolHost is a data root laid out by docker's loop-lvm driver whose
// metadata is the shipped damaged sample (s2 with two data counts too low
// and a leak), and a daemon that is stopped or runs under systemd.
type poolHost struct {
	root, meta string
	original   []byte
	sys        *machine
	daemon     *fakeDaemon
}

func newPoolHost(t *testing.T, running bool) *poolHost {
	t.Helper()
	root := fakeRoot(t)
	h := &poolHost{root: root, meta: rootMetadata(root), daemon: newFakeDaemon(running)}
	assert.NilError(t, os.Rename(demoImage(t), h.meta))
	var err error
	h.original, err = os.ReadFile(h.meta)
	assert.NilError(t, err)
	var api engineAPI
	var c *fakeDM
	if running {
		// The kernel names the active pool's metadata by its loop device.
		c = &fakeDM{table: loopTable, status: loopStatus(t, "42 60/1024 0/1024 - rw discard_passdown queue_if_no_space - 1024")}
		h.daemon.state.Service, h.daemon.state.Socket, h.daemon.state.Manager = "active", "active", "systemd"
		pool := offlinePool(t, root)
		h.daemon.active[pool] = true
		info := recordedInfo(t, "info-20.10.24-looplvm-vm.json", root)
		setDriverStatus(&info, "Pool Name", pool)
		api = &fakeEngine{info: info}
	}
	h.sys = testSystem(t, h.daemon, api, c, 0)
	base, n := time.Date(2026, 11, 26, 2, 30, 0, 0, time.UTC), 0
	h.sys.now = func() time.Time { n++; return base.Add(time.Duration(n-1) * time.Second) }
	return h
}

func (h *poolHost) unchanged(t *testing.T) {
	t.Helper()
	now, err := os.ReadFile(h.meta)
	assert.NilError(t, err)
	assert.Check(t, bytes.Equal(now, h.original), "the metadata was changed")
}

func (h *poolHost) backups(t *testing.T) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(h.root, "devicemapper", "repair-*"))
	assert.NilError(t, err)
	return m
}

// repaired asserts the metadata was replaced by a clean repair and the
// original kept in the one backup folder.
func (h *poolHost) repaired(t *testing.T) {
	t.Helper()
	c := run(t, "check", "--metadata", h.meta)
	assert.Check(t, is.Equal(c.code, ExitClean), "check after repair: %s", c.stdout)
	bs := h.backups(t)
	assert.Assert(t, is.Len(bs, 1))
	b, err := os.ReadFile(filepath.Join(bs[0], "metadata"))
	assert.NilError(t, err)
	assert.Check(t, bytes.Equal(b, h.original), "the backup is not the original metadata")
}

func TestRepairPool(t *testing.T) {
	yes := repairOptions{yes: true}
	for _, tc := range []struct {
		name    string
		running bool
		setup   func(t *testing.T, h *poolHost)
		opts    repairOptions
		answer  string // typed on a terminal; "" plays no terminal
		code    int
		calls   []string // the daemon's Stop and Start calls
		stdout  []string // substrings
		stderr  []string // substrings
		verify  func(h *poolHost, t *testing.T)
	}{
		{
			name: "stopped-yes", opts: yes, code: ExitRepaired,
			stdout: []string{"data space map", "check of the result: clean"},
			stderr: []string{"backed up", "replaced"},
			verify: (*poolHost).repaired,
		},
		{
			name: "stopped-confirmed", opts: repairOptions{}, answer: "yes\n", code: ExitRepaired,
			stderr: []string{"type 'yes' to replace", "after the repair: clean"},
			verify: (*poolHost).repaired,
		},
		{
			name: "stopped-declined", opts: repairOptions{}, answer: "no\n", code: ExitCancelled,
			stderr: []string{"not confirmed: nothing was changed"},
			verify: func(h *poolHost, t *testing.T) { h.unchanged(t); assert.Check(t, is.Len(h.backups(t), 0)) },
		},
		{
			name: "no-terminal-no-yes", opts: repairOptions{}, code: ExitUsage,
			stderr: []string{"no terminal to ask on and no --yes"},
			verify: (*poolHost).unchanged,
		},
		{
			name: "clean", opts: yes, code: ExitClean,
			setup: func(t *testing.T, h *poolHost) {
				assert.NilError(t, os.Rename(kernelImage(t, "s2-snapshot-tree"), h.meta))
				h.original, _ = os.ReadFile(h.meta)
			},
			stderr: []string{"nothing to repair"},
			verify: func(h *poolHost, t *testing.T) { h.unchanged(t); assert.Check(t, is.Len(h.backups(t), 0)) },
		},
		{
			name: "dry-run", opts: repairOptions{dryRun: true}, code: ExitRepaired,
			stdout: []string{"dry run"},
			verify: func(h *poolHost, t *testing.T) { h.unchanged(t); assert.Check(t, is.Len(h.backups(t), 0)) },
		},
		{
			name: "running-without-stop-daemon", running: true, opts: yes, code: ExitError,
			stderr: []string{"dockerd is running", "add --stop-daemon"},
			verify: (*poolHost).unchanged,
		},
		{
			name: "running-dry-run", running: true, opts: repairOptions{dryRun: true}, code: ExitError,
			stderr: []string{"'docker devmapper check' checks the live pool"},
			verify: (*poolHost).unchanged,
		},
		{
			name: "stop-daemon", running: true, opts: repairOptions{yes: true, stopDaemon: true}, code: ExitRepaired,
			calls:  []string{"stop", "start"},
			stderr: []string{"stopping docker", "backed up", "starting docker", "docker runs again on the pool"},
			verify: (*poolHost).repaired,
		},
		{
			name: "stop-daemon-confirmed-twice", running: true, opts: repairOptions{stopDaemon: true}, answer: "yes\nyes\n", code: ExitRepaired,
			calls:  []string{"stop", "start"},
			stderr: []string{"type 'yes' to stop docker", "type 'yes' to replace"},
			verify: (*poolHost).repaired,
		},
		{
			name: "stop-daemon-declined", running: true, opts: repairOptions{stopDaemon: true}, answer: "no\n", code: ExitCancelled,
			verify: (*poolHost).unchanged,
		},
		{
			name: "stop-daemon-replace-declined", running: true, opts: repairOptions{stopDaemon: true}, answer: "yes\nno\n", code: ExitCancelled,
			calls:  []string{"stop", "start"},
			verify: (*poolHost).unchanged,
		},
		{
			name: "stop-daemon-without-systemd", running: true, opts: repairOptions{yes: true, stopDaemon: true}, code: ExitError,
			setup:  func(t *testing.T, h *poolHost) { h.daemon.state.Service, h.daemon.state.Manager = "", "" },
			stderr: []string{"neither manages this dockerd (systemd is not running, and docker's init script is not installed)"},
			verify: (*poolHost).unchanged,
		},
		{
			name: "pool-stays-active", running: true, opts: repairOptions{yes: true, stopDaemon: true}, code: ExitError,
			setup:  func(t *testing.T, h *poolHost) { h.daemon.keepPool = true },
			calls:  []string{"stop", "start"},
			stderr: []string{"is still active", "dmsetup remove docker-"},
			verify: (*poolHost).unchanged,
		},
		{
			name: "daemon-keeps-running", running: true, opts: repairOptions{yes: true, stopDaemon: true}, code: ExitError,
			setup:  func(t *testing.T, h *poolHost) { h.daemon.keepAlive = true },
			calls:  []string{"stop", "start"},
			stderr: []string{"dockerd still runs after it was stopped"},
			verify: (*poolHost).unchanged,
		},
		{
			name: "docker-does-not-start", running: true, opts: repairOptions{yes: true, stopDaemon: true}, code: ExitError,
			setup:  func(t *testing.T, h *poolHost) { h.daemon.startErr = errors.New("unit failed") },
			calls:  []string{"stop", "start"},
			stderr: []string{"docker did not start again: unit failed (the metadata was repaired)", "journalctl -u docker"},
			verify: (*poolHost).repaired,
		},
		{
			name: "socket-activated", opts: repairOptions{yes: true, stopDaemon: true}, code: ExitError,
			setup: func(t *testing.T, h *poolHost) {
				h.daemon.state = daemon.State{Service: "inactive", Socket: "active"}
			},
			stderr: []string{"docker.socket listens", "systemctl stop docker.socket"},
			verify: (*poolHost).unchanged,
		},
		{
			name: "loop-attached", opts: yes, code: ExitError,
			setup: func(t *testing.T, h *poolHost) {
				dir := filepath.Join(h.sys.sysDevBlock, "7:3", "loop")
				assert.NilError(t, os.MkdirAll(dir, 0o755))
				assert.NilError(t, os.WriteFile(filepath.Join(dir, "backing_file"), []byte(h.meta+"\n"), 0o644))
			},
			stderr: []string{"is attached to", "losetup -d"},
			verify: (*poolHost).unchanged,
		},
		{
			name: "no-space-for-backup", opts: yes, code: ExitError,
			setup: func(t *testing.T, h *poolHost) {
				h.sys.freeSpace = func(string) (uint64, error) { return 4096, nil }
			},
			stderr: []string{"not enough space for the backup"},
			verify: (*poolHost).unchanged,
		},
		{
			name: "superblock-lost", opts: yes, code: ExitRepaired,
			setup: func(t *testing.T, h *poolHost) { zeroBlock(t, h.meta, 0) },
			stdout: []string{
				"transaction id 42 (docker's transaction record " + "ROOT/devicemapper/metadata/transaction-metadata)",
				"data block size 128 sectors (docker's default data block size, 64 KiB",
				"65536 data blocks (the size of the data file ROOT/devicemapper/devicemapper/data (4294967296 bytes) in blocks of 128 sectors)",
			},
			verify: func(h *poolHost, t *testing.T) {
				c := run(t, "check", "--metadata", h.meta)
				assert.Check(t, is.Equal(c.code, ExitClean), "check after repair: %s", c.stdout)
				assert.Check(t, is.Contains(c.stdout, "transaction id 42"))
			},
		},
		{
			name: "superblock-lost-daemon-blocksize", running: true, opts: repairOptions{yes: true, stopDaemon: true}, code: ExitRepaired,
			setup: func(t *testing.T, h *poolHost) {
				zeroBlock(t, h.meta, 0)
				// The daemon's answer wins over the configuration.
				assert.NilError(t, os.WriteFile(h.sys.daemonConfig, []byte(`{"storage-opts":["dm.blocksize=512K"]}`), 0o644))
			},
			calls:  []string{"stop", "start"},
			stdout: []string{"data block size 128 sectors (the daemon's Pool Blocksize, asked before it was stopped)"},
		},
		{
			// Docker builds the pool's table with the configured block
			// size, so that is the one the repaired superblock must hold.
			name: "superblock-lost-configured-blocksize", opts: yes, code: ExitRepaired,
			setup: func(t *testing.T, h *poolHost) {
				zeroBlock(t, h.meta, 0)
				assert.NilError(t, os.WriteFile(h.sys.daemonConfig, []byte(`{"storage-opts":["dm.blocksize=512K"]}`), 0o644))
			},
			stdout: []string{"data block size 1024 sectors (dm.blocksize=512K in ", "8192 data blocks (the size of the data file"},
		},
		{
			name: "not-root", opts: yes, code: ExitError,
			setup:  func(t *testing.T, h *poolHost) { h.sys.euid = func() int { return 1000 } },
			stderr: []string{"needs root"},
			verify: (*poolHost).unchanged,
		},
		{
			name: "direct-lvm", opts: yes, code: ExitError,
			setup: func(t *testing.T, h *poolHost) {
				assert.NilError(t, os.WriteFile(h.sys.daemonConfig, []byte(`{"storage-driver":"devicemapper","storage-opts":["dm.thinpooldev=/dev/mapper/vg-thinpool","dm.metadatadev=`+h.meta+`"]}`), 0o644))
			},
			stderr: []string{"was given to docker", "lvconvert --repair"},
			verify: (*poolHost).unchanged,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newPoolHost(t, tc.running)
			if tc.setup != nil {
				tc.setup(t, h)
			}
			opts := tc.opts
			opts.root = h.root
			dockerCLI, out, errb := resetCLI(t, tc.answer, tc.answer != "")
			err := runRepairPool(t.Context(), dockerCLI, h.sys, opts)
			stderr := errb.String() + message(err)
			assert.Check(t, is.Equal(exitStatus(err), tc.code), "stdout:\n%s\nstderr:\n%s", out, stderr)
			assert.Check(t, is.DeepEqual(h.daemon.calls, tc.calls))
			for _, s := range tc.stdout {
				assert.Check(t, is.Contains(strings.ReplaceAll(out.String(), h.root, "ROOT"), s))
			}
			for _, s := range tc.stderr {
				assert.Check(t, is.Contains(stderr, s))
			}
			if tc.verify != nil {
				tc.verify(h, t)
			}
		})
	}
}

// TestRepairPoolJSON: --json prints one document: where the pool is, the
// backup, and the repair's own report.
func TestRepairPoolJSON(t *testing.T) {
	h := newPoolHost(t, false)
	dockerCLI, out, errb := resetCLI(t, "", false)
	// Docker has lost its record of device 3: an orphan, dropped.
	assert.NilError(t, os.Remove(filepath.Join(h.root, "devicemapper", "metadata", "9c2d1e0f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d-init")))
	err := runRepairPool(t.Context(), dockerCLI, h.sys, repairOptions{yes: true, json: true, root: h.root, reconcile: true, removeOrphans: true})
	assert.Equal(t, exitStatus(err), ExitRepaired, "stderr: %s", errb)
	var doc struct {
		Pool     string `json:"pool"`
		Metadata string `json:"metadata"`
		Backup   string `json:"backup"`
		Repair   struct {
			Action string `json:"action"`
		} `json:"repair"`
		Records *struct {
			Orphans []uint32 `json:"orphans"`
			Left    []struct {
				Kind string `json:"kind"`
			} `json:"left"`
		} `json:"records"`
		Dropped *struct {
			DataBlocksFreed uint64 `json:"data_blocks_freed"`
			Devices         []struct {
				ID uint32 `json:"dev_id"`
			} `json:"devices"`
		} `json:"dropped_orphans"`
	}
	assert.NilError(t, json.Unmarshal(out.Bytes(), &doc), "%s", out)
	assert.Check(t, is.Equal(doc.Pool, offlinePool(t, h.root)))
	assert.Check(t, is.Equal(doc.Metadata, h.meta))
	assert.Check(t, is.DeepEqual([]string{doc.Backup}, h.backups(t)))
	assert.Check(t, doc.Repair.Action != "" && doc.Repair.Action != "nothing", "action %q", doc.Repair.Action)
	assert.Assert(t, doc.Records != nil, "%s", out)
	assert.Check(t, is.DeepEqual(doc.Records.Orphans, []uint32{3}))
	assert.Check(t, is.Len(doc.Records.Left, 1), "device 5, deleted but present")
	assert.Assert(t, doc.Dropped != nil, "%s", out)
	assert.Check(t, len(doc.Dropped.Devices) == 1 && doc.Dropped.Devices[0].ID == 3, "%s", out)
	h.repaired(t)
}

// TestRepairPoolBackupFolder: --backup names the folder that receives the
// original metadata; an existing one is refused.
func TestRepairPoolBackupFolder(t *testing.T) {
	h := newPoolHost(t, false)
	dir := filepath.Join(t.TempDir(), "before")
	dockerCLI, _, errb := resetCLI(t, "", false)
	err := runRepairPool(t.Context(), dockerCLI, h.sys, repairOptions{yes: true, root: h.root, backup: dir})
	assert.Equal(t, exitStatus(err), ExitRepaired, "stderr: %s", errb)
	b, rerr := os.ReadFile(filepath.Join(dir, "metadata"))
	assert.NilError(t, rerr)
	assert.Check(t, bytes.Equal(b, h.original))

	h2 := newPoolHost(t, false)
	dockerCLI, _, _ = resetCLI(t, "", false)
	err = runRepairPool(t.Context(), dockerCLI, h2.sys, repairOptions{yes: true, root: h2.root, backup: dir})
	assert.Equal(t, exitStatus(err), ExitError)
	assert.Check(t, is.Contains(message(err), "already exists"))
	h2.unchanged(t)
}

// TestRepairPoolRecords: after the metadata, repair fixes docker's
// records against the pool: a transaction docker would roll back at
// start-up, deleting a device the pool holds, is set back to the pool's
// transaction id; orphan devices are listed, and dropped only with
// --remove-orphans. The pool here checks clean (kernel-written s2,
// transaction 42), so every change comes from the records.
func TestRepairPoolRecords(t *testing.T) {
	const rollback = `{"open_transaction_id":43,"device_hash":"9c2d1e0f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d","device_id":4}`
	const fixed = `{"open_transaction_id":42,"device_hash":"9c2d1e0f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d","device_id":4}`
	const initRecord = "9c2d1e0f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d-init"
	for _, tc := range []struct {
		name     string
		rollback bool // docker's open transaction is 43, for device 4
		orphan   bool // docker lost its record of device 3
		missing  bool // docker records a device 900 the pool never had
		ahead    bool // docker recorded device 4 at transaction 50
		opts     repairOptions
		answer   string
		code     int
		stdout   []string
		stderr   []string
		trans    string // transaction-metadata afterwards
		devices  []uint32
	}{
		{name: "consistent", opts: repairOptions{yes: true, reconcile: true}, code: ExitClean,
			stdout: []string{"left: device 5 (hash 5e6f7a8b9c0d) is marked deleted but still in the pool"},
			trans:  `{"open_transaction_id":42,"device_hash":"","device_id":5}`, devices: []uint32{1, 2, 3, 4, 5}},
		{name: "rollback", rollback: true, opts: repairOptions{yes: true, reconcile: true}, code: ExitRepaired,
			stdout: []string{"fix: devicemapper/metadata/transaction-metadata: open_transaction_id 43 -> 42"},
			stderr: []string{"fixed docker's records; the originals are in "},
			trans:  fixed, devices: []uint32{1, 2, 3, 4, 5}},
		{name: "rollback-confirmed", rollback: true, opts: repairOptions{reconcile: true}, answer: "yes\n", code: ExitRepaired,
			stderr: []string{"type 'yes' to change docker's records as shown"},
			trans:  fixed, devices: []uint32{1, 2, 3, 4, 5}},
		{name: "rollback-declined", rollback: true, opts: repairOptions{reconcile: true}, answer: "no\n", code: ExitCancelled,
			trans: rollback, devices: []uint32{1, 2, 3, 4, 5}},
		{name: "rollback-dry-run", rollback: true, opts: repairOptions{dryRun: true, reconcile: true}, code: ExitRepaired,
			stdout: []string{"open_transaction_id 43 -> 42"},
			trans:  rollback, devices: []uint32{1, 2, 3, 4, 5}},
		{name: "reconcile-off", rollback: true, opts: repairOptions{yes: true}, code: ExitClean,
			trans: rollback, devices: []uint32{1, 2, 3, 4, 5}},
		{name: "orphan-listed", orphan: true, opts: repairOptions{yes: true, reconcile: true}, code: ExitClean,
			stdout: []string{"orphan: thin device 3 is in the pool but docker has no record of it"},
			stderr: []string{"1 thin device in the pool docker has no record of", "'docker devmapper repair --remove-orphans' drops them"},
			trans:  `{"open_transaction_id":42,"device_hash":"","device_id":5}`, devices: []uint32{1, 2, 3, 4, 5}},
		{name: "orphan-removed", orphan: true, opts: repairOptions{yes: true, reconcile: true, removeOrphans: true}, code: ExitRepaired,
			stderr: []string{"dropped 1 orphan device, freeing"},
			trans:  `{"open_transaction_id":42,"device_hash":"","device_id":5}`, devices: []uint32{1, 2, 4, 5}},
		{name: "orphan-removal-declined", orphan: true, opts: repairOptions{reconcile: true, removeOrphans: true}, answer: "no\n", code: ExitCancelled,
			stderr: []string{"type 'yes' to drop 1 orphan device from the pool (their data is lost)"},
			trans:  `{"open_transaction_id":42,"device_hash":"","device_id":5}`, devices: []uint32{1, 2, 3, 4, 5}},
		// A record of a device the pool lacks that nothing uses is
		// reported and harms nothing.
		{name: "missing-unused-device", missing: true, opts: repairOptions{yes: true, reconcile: true}, code: ExitClean,
			stdout: []string{"left: docker's device 900 (hash 5f0c3e9d8a7b) is not in the pool: docker cannot activate it"},
			trans:  `{"open_transaction_id":42,"device_hash":"","device_id":5}`, devices: []uint32{1, 2, 3, 4, 5}},
		// Docker recorded a device at a later transaction than the pool
		// holds: the pool is older than docker's records, loudly.
		{name: "record-ahead", ahead: true, opts: repairOptions{yes: true, reconcile: true}, code: ExitDamage,
			stdout: []string{"left: docker recorded device 4 (hash 9c2d1e0f3a4b) at transaction 50, after the pool's 42"},
			stderr: []string{"docker's records still disagree with the pool in 1 place that repair may not change"},
			trans:  `{"open_transaction_id":42,"device_hash":"","device_id":5}`, devices: []uint32{1, 2, 3, 4, 5}},
		{name: "both", rollback: true, orphan: true, opts: repairOptions{yes: true, reconcile: true, removeOrphans: true}, code: ExitRepaired,
			trans: fixed, devices: []uint32{1, 2, 4, 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newPoolHost(t, false)
			assert.NilError(t, os.Rename(kernelImage(t, "s2-snapshot-tree"), h.meta))
			records := filepath.Join(h.root, "devicemapper", "metadata")
			trans := filepath.Join(records, "transaction-metadata")
			if tc.rollback {
				assert.NilError(t, os.WriteFile(trans, []byte(rollback), 0o600))
			}
			if tc.orphan {
				assert.NilError(t, os.Remove(filepath.Join(records, initRecord)))
			}
			if tc.ahead {
				assert.NilError(t, os.WriteFile(filepath.Join(records, "9c2d1e0f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d"),
					[]byte(`{"device_id":4,"size":10737418240,"transaction_id":50,"initialized":false,"deleted":false}`), 0o600))
			}
			if tc.missing {
				assert.NilError(t, os.WriteFile(filepath.Join(records, "5f0c3e9d8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d"),
					[]byte(`{"device_id":900,"size":10737418240,"transaction_id":40,"initialized":false,"deleted":false}`), 0o600))
			}
			before, err := os.ReadFile(trans)
			assert.NilError(t, err)
			metaBefore, err := os.ReadFile(h.meta)
			assert.NilError(t, err)

			opts := tc.opts
			opts.root = h.root
			dockerCLI, out, errb := resetCLI(t, tc.answer, tc.answer != "")
			err = runRepairPool(t.Context(), dockerCLI, h.sys, opts)
			stderr := errb.String() + message(err)
			assert.Check(t, is.Equal(exitStatus(err), tc.code), "stdout:\n%s\nstderr:\n%s", out, stderr)
			for _, s := range tc.stdout {
				assert.Check(t, is.Contains(out.String(), s))
			}
			for _, s := range tc.stderr {
				assert.Check(t, is.Contains(stderr, s))
			}
			after, err := os.ReadFile(trans)
			assert.NilError(t, err)
			assert.Check(t, is.Equal(string(after), tc.trans))
			if string(after) != string(before) {
				bs := h.backups(t)
				assert.Assert(t, is.Len(bs, 1))
				kept, err := os.ReadFile(filepath.Join(bs[0], "records", "devicemapper", "metadata", "transaction-metadata"))
				assert.NilError(t, err)
				assert.Check(t, is.Equal(string(kept), string(before)), "the backup of the transaction record")
			}
			assert.Check(t, is.DeepEqual(poolIDs(t, h.meta), tc.devices))
			if len(tc.devices) < 5 {
				c := run(t, "check", "--metadata", h.meta)
				assert.Check(t, is.Equal(c.code, ExitClean), "check after dropping orphans: %s", c.stdout)
				bs := h.backups(t)
				assert.Assert(t, is.Len(bs, 1))
				kept, err := os.ReadFile(filepath.Join(bs[0], "metadata"))
				assert.NilError(t, err)
				assert.Check(t, bytes.Equal(kept, metaBefore), "the backup of the metadata before the orphans went")
			} else {
				now, err := os.ReadFile(h.meta)
				assert.NilError(t, err)
				assert.Check(t, bytes.Equal(now, metaBefore), "the metadata changed")
			}
		})
	}
}

// poolIDs lists the thin devices in the metadata at path.
func poolIDs(t *testing.T, path string) []uint32 {
	t.Helper()
	f, err := block.Open(path)
	assert.NilError(t, err)
	defer f.Close()
	_, devs, err := poolDevices(f.Reader)
	assert.NilError(t, err)
	var ids []uint32
	for _, d := range devs {
		ids = append(ids, d.ID)
	}
	return ids
}

// TestRepairPoolSameSecond: a repair run again within the same second, as
// a script checking that nothing is left does, finds nothing to do (exit
// 0) instead of tripping over the first run's backup folder; a second one
// that has work takes a folder of its own.
func TestRepairPoolSameSecond(t *testing.T) {
	h := newPoolHost(t, false)
	at := time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)
	h.sys.now = func() time.Time { return at }
	opts := repairOptions{yes: true, reconcile: true, root: h.root}
	dockerCLI, _, errb := resetCLI(t, "", false)
	err := runRepairPool(t.Context(), dockerCLI, h.sys, opts)
	assert.Equal(t, exitStatus(err), ExitRepaired, "stderr: %s", errb)
	dockerCLI, _, errb = resetCLI(t, "", false)
	err = runRepairPool(t.Context(), dockerCLI, h.sys, opts)
	assert.Equal(t, exitStatus(err), ExitClean, "stderr: %s%s", errb, message(err))
	assert.Check(t, is.Len(h.backups(t), 1))

	// Damage it again: the next repair backs up beside the first.
	assert.NilError(t, os.Rename(demoImage(t), h.meta))
	dockerCLI, _, errb = resetCLI(t, "", false)
	err = runRepairPool(t.Context(), dockerCLI, h.sys, opts)
	assert.Equal(t, exitStatus(err), ExitRepaired, "stderr: %s", errb)
	assert.Check(t, is.DeepEqual(h.backups(t), []string{
		filepath.Join(h.root, "devicemapper", "repair-20261126T030000Z"),
		filepath.Join(h.root, "devicemapper", "repair-20261126T030000Z-2"),
	}))
}

func TestBlockSizeSectors(t *testing.T) {
	for _, tc := range []struct {
		in      string
		sectors uint32
		ok      bool
	}{
		{"64K", 128, true}, {"64k", 128, true}, {"512K", 1024, true}, {"1M", 2048, true}, {"1MiB", 2048, true},
		{"65536", 128, true}, {"1G", 2097152, true}, {" 128k ", 256, true},
		{"", 0, false}, {"32K", 0, false}, {"100K", 0, false}, {"2G", 0, false}, {"64X", 0, false}, {"-64K", 0, false}, {"K", 0, false},
		{"99999999999999999999K", 0, false},
	} {
		n, ok := blockSizeSectors(tc.in)
		assert.Check(t, is.Equal(ok, tc.ok), "%q", tc.in)
		assert.Check(t, is.Equal(n, tc.sectors), "%q", tc.in)
	}
}
