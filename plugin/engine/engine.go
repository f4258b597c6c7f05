package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/docker/docker/api/types/system"
)

// InfoClient is the one Engine API call this package makes.
type InfoClient interface {
	Info(ctx context.Context) (system.Info, error)
}

// Timeout bounds every Engine API call: a daemon that hangs must not hang
// the plugin.
const Timeout = 15 * time.Second

// Facts is what the plugin needs to know about the engine.
type Facts struct {
	ServerVersion string
	Driver        string
	RootDir       string
	Pool          *DeviceMapper // nil when Driver is not devicemapper
}

// Ask reads the engine's facts with one GET /info. The client negotiates
// the API version down to what the engine speaks (API 1.24 on engine 1.12);
// that is the docker CLI's job, so pass the CLI's client.
func Ask(ctx context.Context, c InfoClient) (*Facts, error) {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	info, err := c.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("asking the docker daemon for its storage driver: %w", err)
	}
	return FromInfo(info.ServerVersion, info.Driver, info.DockerRootDir, info.DriverStatus)
}

// FromInfo builds Facts from the fields of an /info answer (or of a parsed
// `docker info` text, see ParseInfoText).
func FromInfo(version, driver, rootDir string, status [][2]string) (*Facts, error) {
	f := &Facts{ServerVersion: version, Driver: driver, RootDir: rootDir}
	if driver != "devicemapper" {
		return f, nil
	}
	pool, err := ParseDriverStatus(status)
	if err != nil {
		return nil, err
	}
	f.Pool = pool
	return f, nil
}
