// Package e2e holds black-box tests of the built docker-devmapper binary,
// run directly and as a plugin of the real docker CLI. It has no code the
// product uses; the helpers here only build, install and run the binary.
package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gotest.tools/v3/assert"
	"gotest.tools/v3/icmd"

	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// BinaryEnv names a prebuilt binary to test instead of building one.
const BinaryEnv = "DEVMAPPER_E2E_BINARY"

// Build compiles the plugin into dir the way the Makefile does (static,
// CGO_ENABLED=0) and returns the binary's path; with GOCOVERDIR set, the
// binary is built for coverage. If BinaryEnv is set, that binary is used
// as is.
func Build(dir string) (string, error) {
	if bin := os.Getenv(BinaryEnv); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			return "", err
		}
		if _, err := os.Stat(abs); err != nil {
			return "", fmt.Errorf("%s: %w", BinaryEnv, err)
		}
		return abs, nil
	}
	bin := filepath.Join(dir, "docker-devmapper")
	// No VCS stamp: a checkout without git installed must still build.
	args := []string{"build", "-buildvcs=false", "-o", bin}
	if os.Getenv("GOCOVERDIR") != "" {
		// Every run of the binary then leaves coverage data there.
		args = append(args, "-cover", "-coverpkg=./...")
	}
	cmd := exec.Command("go", append(args, "./cmd/docker-devmapper")...)
	cmd.Dir = ".." // the module root, seen from this package
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

// CLI runs the binary with a configuration of its own: a fresh
// DOCKER_CONFIG holding the plugin in cli-plugins/, and a fresh HOME, so
// no plugin or setting of the machine leaks into a test.
type CLI struct {
	Binary    string // the plugin binary, for standalone runs
	ConfigDir string // DOCKER_CONFIG; the plugin sits in its cli-plugins/
	HomeDir   string
	env       []string
}

// NewCLI installs binary as a plugin in a temporary DOCKER_CONFIG.
func NewCLI(t *testing.T, binary string) *CLI {
	t.Helper()
	c := &CLI{
		Binary:    binary,
		ConfigDir: filepath.Join(t.TempDir(), "docker-config"),
		HomeDir:   t.TempDir(),
	}
	plugins := filepath.Join(c.ConfigDir, "cli-plugins")
	assert.NilError(t, os.MkdirAll(plugins, 0o755))
	copyFile(t, binary, filepath.Join(plugins, "docker-devmapper"), 0o755)
	assert.NilError(t, os.WriteFile(filepath.Join(c.ConfigDir, "config.json"), []byte("{}\n"), 0o600))

	for _, kv := range os.Environ() {
		// Settings of the machine's own docker setup would change what
		// the CLI does; every other variable (PATH above all) stays.
		if strings.HasPrefix(kv, "DOCKER_") || strings.HasPrefix(kv, "HOME=") {
			continue
		}
		c.env = append(c.env, kv)
	}
	c.env = append(c.env,
		"DOCKER_CONFIG="+c.ConfigDir,
		"HOME="+c.HomeDir,
		"DOCKER_CLI_HINTS=false",
	)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("docker config dir: %s", c.ConfigDir)
		}
	})
	return c
}

// WithEnv returns a copy of c whose commands also get the variables kv
// ("NAME=value"), which override earlier settings of the same name.
func (c *CLI) WithEnv(kv ...string) *CLI {
	cc := *c
	cc.env = append(append([]string(nil), c.env...), kv...)
	return &cc
}

// DockerCmd is "docker ARGS" with the test's configuration. The test is
// skipped when no docker CLI is installed.
func (c *CLI) DockerCmd(t *testing.T, args ...string) icmd.Cmd {
	t.Helper()
	docker, err := exec.LookPath("docker")
	if err != nil {
		t.Skip("no docker CLI on PATH: plugin runs are not tested, standalone runs are")
	}
	return icmd.Cmd{Command: append([]string{docker}, args...), Env: c.env}
}

// StandaloneCmd is "docker-devmapper ARGS", run directly.
func (c *CLI) StandaloneCmd(args ...string) icmd.Cmd {
	return icmd.Cmd{Command: append([]string{c.Binary}, args...), Env: c.env}
}

// RunDocker runs "docker ARGS".
func (c *CLI) RunDocker(t *testing.T, args ...string) *icmd.Result {
	t.Helper()
	return icmd.RunCmd(c.DockerCmd(t, args...))
}

// RunStandalone runs "docker-devmapper ARGS".
func (c *CLI) RunStandalone(args ...string) *icmd.Result {
	return icmd.RunCmd(c.StandaloneCmd(args...))
}

// Gunzip unpacks a gzipped fixture into a temporary directory.
func Gunzip(t *testing.T, src string) string {
	t.Helper()
	return thintest.GunzipFile(t, src)
}

// SHA256 is the hex digest of a file.
func SHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	assert.NilError(t, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	assert.NilError(t, err)
	return hex.EncodeToString(h.Sum(nil))
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	assert.NilError(t, err)
	assert.NilError(t, os.WriteFile(dst, b, mode))
}
