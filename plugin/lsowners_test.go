package plugin

import (
	"context"
	"errors"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/storage"
	"github.com/docker/docker/client"
	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/plugin/dockerroot"
)

// fakeOwners answers as a devicemapper daemon does: GraphDriver data with
// DeviceId for each image and container.
type fakeOwners struct {
	failInspect bool
}

func (fakeOwners) ImageList(context.Context, image.ListOptions) ([]image.Summary, error) {
	return []image.Summary{{ID: "sha256:aaaa"}, {ID: "sha256:bbbbbbbbbbbbbbbbbbbb"}}, nil
}

func (f fakeOwners) ImageInspect(_ context.Context, id string, _ ...client.ImageInspectOption) (image.InspectResponse, error) {
	if f.failInspect {
		return image.InspectResponse{}, errors.New("daemon gone")
	}
	r := image.InspectResponse{ID: id, GraphDriver: storage.DriverData{Name: "devicemapper", Data: map[string]string{}}}
	switch id {
	case "sha256:aaaa":
		r.RepoTags = []string{"tiny:latest"}
		r.GraphDriver.Data["DeviceId"] = "2"
	default:
		r.GraphDriver.Data["DeviceId"] = "7"
	}
	return r, nil
}

func (fakeOwners) ContainerList(context.Context, container.ListOptions) ([]container.Summary, error) {
	return []container.Summary{{ID: "cccc"}, {ID: "garbled"}}, nil
}

func (fakeOwners) ContainerInspect(_ context.Context, id string) (container.InspectResponse, error) {
	var r container.InspectResponse
	if id == "garbled" {
		return r, nil // no ContainerJSONBase at all
	}
	r.ContainerJSONBase = &container.ContainerJSONBase{ID: id, Name: "/c1",
		GraphDriver: storage.DriverData{Name: "devicemapper", Data: map[string]string{"DeviceId": "4", "DeviceName": "docker-pool-cccc"}}}
	return r, nil
}

func TestEngineOwners(t *testing.T) {
	got, err := engineOwners(t.Context(), fakeOwners{})
	assert.NilError(t, err)
	assert.DeepEqual(t, got, map[uint32]dockerroot.Owner{
		2: {Kind: "image layer", ID: "sha256:aaaa", Name: "tiny:latest"},
		7: {Kind: "image layer", ID: "sha256:bbbbbbbbbbbbbbbbbbbb", Name: "bbbbbbbbbbbb"},
		4: {Kind: "container", ID: "cccc", Name: "c1"},
	})
	_, err = engineOwners(t.Context(), fakeOwners{failInspect: true})
	assert.ErrorContains(t, err, "daemon gone")
}
