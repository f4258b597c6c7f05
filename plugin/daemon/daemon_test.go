package daemon_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/plugin/daemon"
)

// fakeHost lays out a /proc, /sys and pidfile in a temp dir.
type fakeHost struct {
	root  string
	units map[string]string
}

func newFake(t *testing.T) *fakeHost {
	f := &fakeHost{root: t.TempDir(), units: map[string]string{}}
	assert.NilError(t, os.MkdirAll(filepath.Join(f.root, "proc"), 0o755))
	assert.NilError(t, os.MkdirAll(filepath.Join(f.root, "sys", "block"), 0o755))
	return f
}

func (f *fakeHost) process(t *testing.T, pid int, comm string) {
	d := filepath.Join(f.root, "proc", strconv.Itoa(pid))
	assert.NilError(t, os.MkdirAll(d, 0o755))
	assert.NilError(t, os.WriteFile(filepath.Join(d, "comm"), []byte(comm+"\n"), 0o644))
}

func (f *fakeHost) dm(t *testing.T, minor int, name string) {
	d := filepath.Join(f.root, "sys", "block", "dm-"+strconv.Itoa(minor), "dm")
	assert.NilError(t, os.MkdirAll(d, 0o755))
	assert.NilError(t, os.WriteFile(filepath.Join(d, "name"), []byte(name+"\n"), 0o644))
}

func (f *fakeHost) host(systemd bool) *daemon.Host {
	h := &daemon.Host{Proc: filepath.Join(f.root, "proc"), Sys: filepath.Join(f.root, "sys"), PidFile: filepath.Join(f.root, "docker.pid")}
	h.Systemctl = func(_ context.Context, args ...string) (string, error) {
		if !systemd {
			return "", daemon.ErrNoSystemd
		}
		return f.units[args[len(args)-1]], nil
	}
	return h
}

func TestState(t *testing.T) {
	for _, tc := range []struct {
		name      string
		setup     func(t *testing.T, f *fakeHost)
		systemd   bool
		running   bool
		socketAct bool
		why       string
	}{
		{name: "nothing", setup: func(t *testing.T, f *fakeHost) { f.process(t, 1, "init") }},
		{name: "dockerd process", setup: func(t *testing.T, f *fakeHost) {
			f.process(t, 1, "init")
			f.process(t, 812, "dockerd")
		}, running: true, why: "dockerd runs as process 812"},
		{name: "stale pidfile", setup: func(t *testing.T, f *fakeHost) {
			assert.NilError(t, os.WriteFile(filepath.Join(f.root, "docker.pid"), []byte("4242"), 0o644))
		}},
		{name: "live pidfile, renamed binary", setup: func(t *testing.T, f *fakeHost) {
			f.process(t, 4242, "docker-1.12")
			assert.NilError(t, os.WriteFile(filepath.Join(f.root, "docker.pid"), []byte("4242\n"), 0o644))
		}, running: true, why: "names live process 4242"},
		{name: "systemd activating", systemd: true, setup: func(t *testing.T, f *fakeHost) {
			f.units["docker.service"] = "activating"
		}, running: true, why: "docker.service is activating"},
		{name: "socket activation", systemd: true, setup: func(t *testing.T, f *fakeHost) {
			f.units["docker.service"] = "inactive"
			f.units["docker.socket"] = "active"
		}, socketAct: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t)
			tc.setup(t, f)
			st, err := f.host(tc.systemd).State(t.Context())
			assert.NilError(t, err)
			assert.Equal(t, st.Running, tc.running)
			assert.Equal(t, st.SocketActivated(), tc.socketAct)
			if tc.why != "" {
				assert.ErrorContains(t, errors.New(st.Why), tc.why)
			}
		})
	}
}

func TestPoolActive(t *testing.T) {
	f := newFake(t)
	f.dm(t, 0, "docker-254:16-393219-pool")
	f.dm(t, 3, "vg-lv")
	h := f.host(false)
	on, err := h.PoolActive("docker-254:16-393219-pool")
	assert.NilError(t, err)
	assert.Check(t, on)
	on, err = h.PoolActive("docker-thinpool")
	assert.NilError(t, err)
	assert.Check(t, !on)
}

func TestStopWithoutSystemd(t *testing.T) {
	f := newFake(t)
	h := f.host(false)
	h.InitScript = filepath.Join(f.root, "init.d", "docker")
	err := h.Stop(t.Context())
	assert.ErrorContains(t, err, "docker runs without systemd here and "+h.InitScript+" is not installed: stop it")
	assert.ErrorContains(t, h.Start(t.Context()), "start it the way it is usually done")
}

// TestInitScript: without systemd, a daemon docker's init script can
// manage is stopped and started through it.
func TestInitScript(t *testing.T) {
	f := newFake(t)
	f.process(t, 4242, "dockerd")
	h := f.host(false)
	h.InitScript = filepath.Join(f.root, "init.d", "docker")
	var ran []string
	h.RunInit = func(_ context.Context, action string) (string, error) {
		ran = append(ran, action)
		if action == "stop" {
			assert.NilError(t, os.RemoveAll(filepath.Join(f.root, "proc", "4242")))
		}
		return "", nil
	}
	st, err := h.State(t.Context())
	assert.NilError(t, err)
	assert.Check(t, st.Running)
	assert.Equal(t, st.Manager, "", "no init script installed: nothing known manages dockerd")

	assert.NilError(t, os.MkdirAll(filepath.Dir(h.InitScript), 0o755))
	assert.NilError(t, os.WriteFile(h.InitScript, []byte("#!/bin/sh\n"), 0o755))
	st, err = h.State(t.Context())
	assert.NilError(t, err)
	assert.Equal(t, st.Manager, "init script "+h.InitScript)

	assert.NilError(t, h.Stop(t.Context()))
	st, err = h.State(t.Context())
	assert.NilError(t, err)
	assert.Check(t, !st.Running)
	assert.NilError(t, h.Start(t.Context()))
	assert.DeepEqual(t, ran, []string{"stop", "start"})

	h.RunInit = func(context.Context, string) (string, error) {
		return "docker is not running", errors.New("exit status 1")
	}
	assert.ErrorContains(t, h.Start(t.Context()), h.InitScript+" start: exit status 1: docker is not running")
}

// TestRealHost looks at this machine: whatever it finds, it must not fail.
func TestRealHost(t *testing.T) {
	var h daemon.Host
	st, err := h.State(t.Context())
	assert.NilError(t, err)
	if st.Running {
		assert.Check(t, st.Why != "")
	}
}
