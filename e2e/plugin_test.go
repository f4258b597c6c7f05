package e2e

import (
	"encoding/json"
	"regexp"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/icmd"
)

// TestPluginHelp: the help lists the commands and the exit codes, the same
// through docker and standalone. Help wraps by terminal width, so only key
// lines are matched.
func TestPluginHelp(t *testing.T) {
	c := NewCLI(t, binary)
	for _, tc := range []struct {
		name string
		cmd  func(t *testing.T) icmd.Cmd
	}{
		{name: "docker", cmd: func(t *testing.T) icmd.Cmd { return c.DockerCmd(t, "devmapper", "--help") }},
		{name: "docker-no-args", cmd: func(t *testing.T) icmd.Cmd { return c.DockerCmd(t, "devmapper") }},
		{name: "standalone", cmd: func(t *testing.T) icmd.Cmd { return c.StandaloneCmd("--help") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := icmd.RunCmd(tc.cmd(t))
			res.Assert(t, icmd.Success)
			for _, re := range []string{
				`(?m)^Usage:\s+docker devmapper COMMAND$`,
				`(?m)^\s+check\s+Verify the thin-pool metadata`,
				`(?m)^\s+4\s+damage found`,
				`(?m)^\s+16\s+usage error`,
			} {
				assert.Check(t, is.Regexp(regexp.MustCompile(re), res.Stdout()))
			}
		})
	}
}

// TestDockerListsPlugin: the docker CLI finds the plugin in DOCKER_CONFIG.
// Neither check needs a daemon.
func TestDockerListsPlugin(t *testing.T) {
	c := NewCLI(t, binary)
	res := c.RunDocker(t, "--help")
	res.Assert(t, icmd.Success)
	assert.Check(t, is.Regexp(`(?m)^\s+devmapper\*?\s+Check and repair devicemapper thin-pool metadata$`, res.Stdout()))

	// Without a daemon "docker info" fails, but prints the client side,
	// plugins included, first.
	res = c.RunDocker(t, "info")
	assert.Check(t, is.Regexp(`(?m)^\s+devmapper: Check and repair devicemapper thin-pool metadata \(docker-devmapper\)$`, res.Stdout()))
	assert.Check(t, !regexp.MustCompile(`(?i)invalid plugin`).MatchString(res.Combined()), "docker rejected the plugin:\n%s", res.Combined())
}

// TestPluginMetadata: the call the docker CLI makes to discover us.
func TestPluginMetadata(t *testing.T) {
	c := NewCLI(t, binary)
	res := c.RunStandalone("docker-cli-plugin-metadata")
	res.Assert(t, icmd.Success)
	var meta struct {
		SchemaVersion, Vendor, ShortDescription string
	}
	assert.NilError(t, json.Unmarshal([]byte(res.Stdout()), &meta))
	assert.Check(t, is.Equal(meta.SchemaVersion, "0.1.0"))
	assert.Check(t, is.Equal(meta.Vendor, "docker-devmapper"))
	assert.Check(t, is.Equal(meta.ShortDescription, "Check and repair devicemapper thin-pool metadata"))
}
