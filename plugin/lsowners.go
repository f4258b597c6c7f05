package plugin

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/docker-devmapper/docker-devmapper/plugin/dockerroot"
	"github.com/docker-devmapper/docker-devmapper/plugin/engine"
)

// ownerAPI is what ls asks a running daemon: each image's and container's
// GraphDriver data, which with devicemapper names its thin device id.
type ownerAPI interface {
	ImageList(ctx context.Context, options image.ListOptions) ([]image.Summary, error)
	ImageInspect(ctx context.Context, id string, opts ...client.ImageInspectOption) (image.InspectResponse, error)
	ContainerList(ctx context.Context, options container.ListOptions) ([]container.Summary, error)
	ContainerInspect(ctx context.Context, id string) (container.InspectResponse, error)
}

// engineOwners maps thin device ids to what owns them, from the daemon's
// GraphDriver data (DeviceId). Every call has engine.Timeout.
func engineOwners(ctx context.Context, api ownerAPI) (map[uint32]dockerroot.Owner, error) {
	call := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, engine.Timeout) }
	owners := map[uint32]dockerroot.Owner{}
	add := func(data map[string]string, o dockerroot.Owner) {
		id, err := strconv.ParseUint(data["DeviceId"], 10, 32)
		if err == nil {
			owners[uint32(id)] = o
		}
	}
	c, cancel := call()
	imgs, err := api.ImageList(c, image.ListOptions{All: true})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("listing images: %w", err)
	}
	for _, im := range imgs {
		c, cancel := call()
		in, err := api.ImageInspect(c, im.ID)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("inspecting image %s: %w", im.ID, err)
		}
		name := strings.Join(in.RepoTags, ", ")
		if name == "" {
			name = strings.TrimPrefix(im.ID, "sha256:")[:min(12, len(strings.TrimPrefix(im.ID, "sha256:")))]
		}
		add(in.GraphDriver.Data, dockerroot.Owner{Kind: "image layer", ID: im.ID, Name: name})
	}
	c, cancel = call()
	ctrs, err := api.ContainerList(c, container.ListOptions{All: true})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("listing containers: %w", err)
	}
	for _, ct := range ctrs {
		c, cancel := call()
		in, err := api.ContainerInspect(c, ct.ID)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("inspecting container %s: %w", ct.ID, err)
		}
		if in.ContainerJSONBase != nil && in.GraphDriver.Data != nil { // a garbled answer may lack both
			add(in.GraphDriver.Data, dockerroot.Owner{Kind: "container", ID: ct.ID, Name: strings.TrimPrefix(in.Name, "/")})
		}
	}
	return owners, nil
}

// askOwners fills in the owners a running daemon knows, over what the
// data root said, when the metadata listed is that daemon's own pool's
// (a copy from elsewhere shares its device ids with nothing here). It
// never talks to a daemon that is not running: a request could start a
// socket-activated one.
// loc is where the pool was found already, or nil to find it.
func askOwners(ctx context.Context, sys *machine, loc *located, root, metadata string, rows []lsRow) error {
	if loc == nil {
		loc = locate(ctx, sys, root)
	}
	if loc.Engine == nil || loc.Pool == nil || !sameFile(loc.Pool.Metadata, metadata) {
		return nil
	}
	api, ok := sys.api().(ownerAPI)
	if !ok {
		return nil
	}
	owners, err := engineOwners(ctx, api)
	if err != nil {
		return err
	}
	for i := range rows {
		if o, ok := owners[rows[i].DeviceID]; ok {
			rows[i].Owner = &o
		}
	}
	return nil
}

// sameFile reports whether two paths name the same file or device.
func sameFile(a, b string) bool {
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	return err == nil && os.SameFile(sa, sb)
}
