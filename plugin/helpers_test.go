package plugin

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/cli/cli"
	"github.com/docker/cli/cli/command"
	"github.com/spf13/cobra"
	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/thintest"
)

// result is what one run of the command tree printed and returned.
type result struct {
	stdout, stderr string
	err            error
	code           int
}

// run executes args below a "docker" command set up the way the plugin
// framework sets it up, so help and errors read as they do for real.
func run(t *testing.T, args ...string) result {
	t.Helper()
	dockerCLI, out, errb := newTestCLI(t)
	top := &cobra.Command{
		Use:              "docker [OPTIONS] " + Name + " [ARG...]",
		SilenceUsage:     true,
		SilenceErrors:    true,
		TraverseChildren: true,
	}
	cli.SetupPluginRootCommand(top)
	top.SetOut(dockerCLI.Out())
	top.SetErr(dockerCLI.Err())
	top.AddCommand(NewRootCommand(dockerCLI))
	top.SetArgs(append([]string{Name}, args...))
	err := top.ExecuteContext(t.Context())
	return result{stdout: out.String(), stderr: errb.String(), err: err, code: exitStatus(err)}
}

// newTestCLI gives a docker CLI whose streams are buffers, which are never
// terminals.
func newTestCLI(t *testing.T) (*command.DockerCli, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	var out, errb bytes.Buffer
	dockerCLI, err := command.NewDockerCli(
		command.WithInputStream(io.NopCloser(strings.NewReader(""))),
		command.WithOutputStream(&out),
		command.WithErrorStream(&errb),
	)
	assert.NilError(t, err)
	return dockerCLI, &out, &errb
}

// exitStatus reads the code the way main does.
func exitStatus(err error) int {
	if err == nil {
		return ExitClean
	}
	var st cli.StatusError
	if errors.As(err, &st) {
		return st.StatusCode
	}
	return -1 // not a status error: a defect in the command
}

// message is what main would print for err.
func message(err error) string {
	var st cli.StatusError
	if errors.As(err, &st) {
		return st.Status
	}
	if err != nil {
		return err.Error()
	}
	return ""
}

// kernelImage unpacks a kernel-written fixture into a temporary directory.
func kernelImage(t *testing.T, name string) string {
	t.Helper()
	return gunzip(t, filepath.Join("..", "testdata", "kernel", name+".img.gz"))
}

func gunzip(t *testing.T, src string) string {
	t.Helper()
	return thintest.GunzipFile(t, src)
}

// flipByte damages one byte of block nr, so that block fails its checksum.
func flipByte(t *testing.T, path string, nr int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	assert.NilError(t, err)
	defer f.Close()
	b := make([]byte, 1)
	off := nr*4096 + 100
	_, err = f.ReadAt(b, off)
	assert.NilError(t, err)
	b[0] ^= 0xff
	_, err = f.WriteAt(b, off)
	assert.NilError(t, err)
}
