package usage_test

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
	"github.com/docker-devmapper/docker-devmapper/metadata/usage"
)

// table prints a result the way `thin_ls -o DEV,MAPPED_BLOCKS,
// EXCLUSIVE_BLOCKS,SHARED_BLOCKS --no-headers` does, whitespace aside.
func table(res *usage.Result) string {
	var b strings.Builder
	for _, d := range res.Devices {
		fmt.Fprintf(&b, "%d %d %d %d\n", d.ID, d.Mapped, d.Exclusive, d.Shared)
	}
	return b.String()
}

func TestFixtures(t *testing.T) {
	for _, tc := range []struct {
		fixture string
		snap    bool
		want    string // what thin_ls 0.9.0 and 1.1.0 print for these images
	}{
		{fixture: "s1-one-empty-thin", want: "0 0 0 0\n"},
		{fixture: "s2-snapshot-tree", want: "1 606 24 582\n2 609 0 609\n3 609 0 609\n4 609 0 609\n5 3 3 0\n"},
		{fixture: "s3-bigblock-metasnap", want: "0 9 9 0\n9 0 0 0\n"},
		{fixture: "s3-bigblock-metasnap", snap: true, want: "0 8 0 8\n1 8 0 8\n"},
	} {
		t.Run(fmt.Sprintf("%s/snap=%v", tc.fixture, tc.snap), func(t *testing.T) {
			img := thintest.Image(thintest.Load(t, tc.fixture))
			res, err := usage.Run(t.Context(), img.Reader(), usage.Options{MetadataSnap: tc.snap})
			assert.NilError(t, err)
			assert.Equal(t, table(res), tc.want)
			// Every allocated data block is mapped by a live device, but in
			// s3 one that only the held snapshot's trees map.
			if !tc.snap {
				held := uint64(0)
				if res.Superblock.MetadataSnap != 0 {
					held = 1
				}
				assert.Equal(t, res.InUse+held, res.Superblock.DataSM.NrAllocated)
			}
			for _, d := range res.Devices {
				assert.Check(t, d.Mapped == d.Details.MappedBlocks || tc.snap, "device %d", d.ID)
			}
			if _, err := exec.LookPath("thin_ls"); err == nil {
				assert.Equal(t, table(res), referenceLs(t, img, tc.snap))
			}
		})
	}
}

// referenceLs runs thin_ls 0.9.0 on img.
func referenceLs(t *testing.T, img thintest.Image, snap bool) string {
	args := []string{"--no-headers", "-o", "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS"}
	if snap {
		args = append(args, "-m")
	}
	out, err := exec.Command("thin_ls", append(args, thintest.WriteTemp(t, img))...).Output()
	assert.NilError(t, err)
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		b.WriteString(strings.Join(strings.Fields(line), " "))
		b.WriteByte('\n')
	}
	return b.String()
}

func TestDamaged(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, img thintest.Image)
	}{
		{"zeroed leaf", func(t *testing.T, img thintest.Image) {
			leaf, _ := img.Mapping(t, 1, 0)
			img.Zero(leaf)
		}},
		{"loop", func(t *testing.T, img thintest.Image) {
			root := img.DevRoot(t, 1)
			img.SetValueU64(t, root, 2, uint64(root))
		}},
		{"mapping past the data device", func(t *testing.T, img thintest.Image) {
			leaf, i := img.Mapping(t, 5, 12)
			img.SetValueU64(t, leaf, i, uint64(thin.MakeBlockTime(70000, 3)))
		}},
		{"lost top level", func(t *testing.T, img thintest.Image) {
			img.Zero(img.Superblock().MappingRoot)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := thintest.Image(thintest.Load(t, "s2-snapshot-tree"))
			tc.damage(t, img)
			_, err := usage.Run(t.Context(), img.Reader(), usage.Options{})
			assert.ErrorIs(t, err, usage.ErrDamaged)
			assert.ErrorContains(t, err, "run 'docker devmapper check'")
		})
	}
	s1 := thintest.Image(thintest.Load(t, "s1-one-empty-thin"))
	_, err := usage.Run(t.Context(), s1.Reader(), usage.Options{MetadataSnap: true})
	assert.ErrorContains(t, err, "snapshot")
}
