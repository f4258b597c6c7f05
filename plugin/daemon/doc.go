// Package daemon finds out whether dockerd runs, and stops and starts it,
// without ever talking to its API: a request to the API socket can start
// the daemon by socket activation, which is the last thing a repair wants.
//
// It looks, in order, at /proc (a process whose executable is dockerd),
// the pidfile (/var/run/docker.pid by default), and systemd's view of
// docker.service and docker.socket. It also finds whether a device-mapper
// device of a given name (the thin pool) is active, from /sys.
//
// It does not read or write pool metadata.
package daemon
