package plugin

import (
	"bytes"
	"strings"
	"testing"

	"github.com/docker/cli/cli/command"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/golden"
)

// TestCommandTree walks every command and checks what a person relies on:
// a summary, the exit codes in the help, examples, and strict arguments.
func TestCommandTree(t *testing.T) {
	dockerCLI, err := command.NewDockerCli(command.WithOutputStream(&bytes.Buffer{}), command.WithErrorStream(&bytes.Buffer{}))
	assert.NilError(t, err)
	root := NewRootCommand(dockerCLI)
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		t.Run(c.CommandPath(), func(t *testing.T) {
			assert.Check(t, c.Short != "", "every command needs a short summary")
			assert.Check(t, !strings.HasSuffix(c.Short, "."), "summaries end without a period")
			assert.Check(t, is.Contains(c.Long, exitCodesHelp))
			assert.Check(t, c.Args != nil, "every command must reject stray arguments")
			assert.Check(t, c.RunE != nil)
			if c != root {
				assert.Check(t, c.Example != "", "every command needs examples")
				assert.Check(t, c.DisableFlagsInUseLine)
			}
			c.LocalFlags().VisitAll(func(f *pflag.Flag) {
				assert.Check(t, f.Usage != "" && strings.ToUpper(f.Usage[:1]) == f.Usage[:1],
					"flag --%s: usage must start with a capital letter", f.Name)
			})
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

func TestRootHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {}} {
		r := run(t, args...)
		assert.Equal(t, r.code, ExitClean)
		assert.Equal(t, r.stderr, "")
		golden.Assert(t, r.stdout, "root-help.golden")
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{name: "unknown-command", args: []string{"chek"}},
		{name: "unknown-flag", args: []string{"check", "--bogus"}},
		{name: "flag-needs-value", args: []string{"check", "--metadata"}},
		{name: "stray-argument", args: []string{"check", "pool.img"}},
		{name: "snap-without-metadata", args: []string{"check", "--metadata-snap"}},
		{name: "root-and-metadata", args: []string{"check", "--root", "/srv/docker", "--metadata", "pool.img"}},
		{name: "reset-without-remove-images", args: []string{"reset", "--yes"}},
		{name: "reset-keep-pool-and-purge", args: []string{"reset", "--remove-images", "--keep-pool", "--purge"}},
		{name: "status-stray-argument", args: []string{"status", "pool"}},
		{name: "quiet-and-json", args: []string{"check", "--quiet", "--json", "--metadata", "pool.img"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, tc.args...)
			assert.Equal(t, r.code, ExitUsage)
			assert.Equal(t, r.stdout, "")
			golden.Assert(t, message(r.err), "usage-"+tc.name+".golden")
		})
	}
}
