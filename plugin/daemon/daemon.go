package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Host is where to look. The zero value looks at the real system; tests
// point the roots at fake trees.
type Host struct {
	Proc    string // default /proc
	Sys     string // default /sys
	PidFile string // default /var/run/docker.pid
	// Systemctl runs systemctl; nil runs the real one if it is installed.
	Systemctl func(ctx context.Context, args ...string) (string, error)
	// InitScript is docker's SysV or upstart init script, used where
	// systemd does not run (default /etc/init.d/docker).
	InitScript string
	// RunInit runs the init script with an action ("stop", "start"); nil
	// runs it for real.
	RunInit func(ctx context.Context, action string) (string, error)
}

func (h *Host) proc() string       { return or(h.Proc, "/proc") }
func (h *Host) sys() string        { return or(h.Sys, "/sys") }
func (h *Host) initScript() string { return or(h.InitScript, "/etc/init.d/docker") }
func (h *Host) pidFile() string {
	return or(h.PidFile, "/var/run/docker.pid")
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// State is what Host.State found.
type State struct {
	Running bool
	PIDs    []int  // dockerd processes
	Why     string // how it was found running, for messages
	// Service and Socket are systemd's ActiveState of docker.service and
	// docker.socket ("" without systemd).
	Service, Socket string
	// Manager is what stops and starts this daemon: "systemd" when
	// docker.service is active, "init script PATH" without systemd when
	// docker's init script is installed, "" when neither is known.
	Manager string
}

// SocketActivated reports whether a request to the API socket would start
// the daemon: the socket unit listens while the service is down.
func (s State) SocketActivated() bool { return !s.Running && s.Socket == "active" }

// State looks for a running dockerd.
func (h *Host) State(ctx context.Context) (State, error) {
	var st State
	pids, err := h.dockerdPIDs()
	if err != nil {
		return st, err
	}
	if len(pids) > 0 {
		st.Running, st.PIDs = true, pids
		st.Why = fmt.Sprintf("dockerd runs as process %s", joinInts(pids))
	}
	if pid, ok := h.pidFromFile(); ok && !st.Running {
		// A pidfile alone is stale unless the process exists.
		if _, err := os.Stat(filepath.Join(h.proc(), strconv.Itoa(pid))); err == nil {
			st.Running, st.PIDs = true, []int{pid}
			st.Why = fmt.Sprintf("%s names live process %d", h.pidFile(), pid)
		}
	}
	st.Service = h.unitState(ctx, "docker.service")
	st.Socket = h.unitState(ctx, "docker.socket")
	if !st.Running && (st.Service == "active" || st.Service == "activating" || st.Service == "reloading") {
		st.Running = true
		st.Why = "systemd says docker.service is " + st.Service
	}
	switch {
	case st.Service == "active":
		st.Manager = "systemd"
	case st.Service == "" && st.Running && isFile(h.initScript()):
		st.Manager = "init script " + h.initScript()
	}
	return st, nil
}

// dockerdPIDs lists processes whose command name is dockerd.
func (h *Host) dockerdPIDs() ([]int, error) {
	ents, err := os.ReadDir(h.proc())
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join(h.proc(), e.Name(), "comm"))
		if err != nil {
			continue // gone, or not ours to read
		}
		if strings.TrimSpace(string(comm)) == "dockerd" {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

func (h *Host) pidFromFile() (int, bool) {
	b, err := os.ReadFile(h.pidFile())
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid, err == nil && pid > 0
}

func (h *Host) systemctl(ctx context.Context, args ...string) (string, error) {
	if h.Systemctl != nil {
		return h.Systemctl(ctx, args...)
	}
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		return "", ErrNoSystemd
	}
	path, err := exec.LookPath("systemctl")
	if err != nil {
		return "", ErrNoSystemd
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// ErrNoSystemd: systemctl is not there to ask; a Host.Systemctl stand-in
// returns it to play a machine without systemd.
var ErrNoSystemd = errors.New("systemd is not running")

// unitState is systemd's ActiveState of unit, or "" without systemd.
func (h *Host) unitState(ctx context.Context, unit string) string {
	out, err := h.systemctl(ctx, "show", "--property=ActiveState", "--value", unit)
	if err != nil && out == "" {
		return ""
	}
	return out
}

// PoolActive reports whether a device-mapper device named pool exists: a
// pool that is still active has its metadata open in the kernel.
func (h *Host) PoolActive(pool string) (bool, error) {
	ms, err := filepath.Glob(filepath.Join(h.sys(), "block", "dm-*", "dm", "name"))
	if err != nil {
		return false, err
	}
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err == nil && strings.TrimSpace(string(b)) == pool {
			return true, nil
		}
	}
	return false, nil
}

// Stop stops dockerd through systemd (the socket first, so nothing starts
// it again), or without systemd through docker's init script, and waits
// until no dockerd process is left.
func (h *Host) Stop(ctx context.Context) error {
	if _, err := h.systemctl(ctx, "stop", "docker.socket", "docker.service"); err != nil {
		if !errors.Is(err, ErrNoSystemd) {
			return fmt.Errorf("systemctl stop docker.socket docker.service: %w", err)
		}
		if err := h.runInit(ctx, "stop"); err != nil {
			return err
		}
	}
	return h.waitGone(ctx, 60*time.Second)
}

// Start starts docker.service through systemd, or without systemd through
// docker's init script.
func (h *Host) Start(ctx context.Context) error {
	if _, err := h.systemctl(ctx, "start", "docker.service"); err != nil {
		if !errors.Is(err, ErrNoSystemd) {
			return fmt.Errorf("systemctl start docker.service: %w", err)
		}
		return h.runInit(ctx, "start")
	}
	return nil
}

// runInit runs docker's init script with action, where systemd does not
// run.
func (h *Host) runInit(ctx context.Context, action string) error {
	script := h.initScript()
	if !isFile(script) {
		return fmt.Errorf("docker runs without systemd here and %s is not installed: %s it the way it is usually done, then run this again", script, action)
	}
	run := h.RunInit
	if run == nil {
		run = func(ctx context.Context, action string) (string, error) {
			ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, script, action).CombinedOutput()
			return strings.TrimSpace(string(out)), err
		}
	}
	if out, err := run(ctx, action); err != nil {
		if out != "" {
			return fmt.Errorf("%s %s: %w: %s", script, action, err, out)
		}
		return fmt.Errorf("%s %s: %w", script, action, err)
	}
	return nil
}

func isFile(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

func (h *Host) waitGone(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		pids, err := h.dockerdPIDs()
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dockerd (process %s) is still running %v after it was asked to stop", joinInts(pids), limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}
