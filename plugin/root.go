package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/docker/cli/cli"
	cliplugin "github.com/docker/cli/cli-plugins/plugin"
	"github.com/docker/cli/cli/command"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Name is the plugin's name: the word after "docker" on the command line.
const Name = "devmapper"

// Version is set at build time with -ldflags "-X ...plugin.Version=v1.2.3".
var Version = "dev"

// Exit codes. Every command returns nil or a cli.StatusError carrying one of
// these; only main turns them into a process exit status.
const (
	ExitClean     = 0   // the command did its job; check found no damage
	ExitDamage    = 4   // check found damage in the metadata
	ExitError     = 8   // could not do the job: unreadable input, not thin metadata, daemon problems
	ExitUsage     = 16  // the command line was wrong: unknown command or flag, bad arguments
	ExitCancelled = 130 // interrupted (Ctrl-C, SIGTERM) before finishing
)

// exitCodesHelp closes every command's long help, so the codes are in
// front of whoever scripts against them.
const exitCodesHelp = `Exit codes:
  0    clean: the command did its job (check found no damage)
  4    damage found in the metadata
  8    operational error: unreadable input, not thin metadata, daemon problems
  16   usage error: unknown command or flag, wrong arguments
  130  cancelled (interrupted before finishing)`

// NewRootCommand builds the whole command tree. The docker CLI plugin
// framework mounts it below its own "docker" command, and runs it the same
// way whether it was started by "docker devmapper" or directly.
func NewRootCommand(dockerCLI command.Cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   Name,
		Short: "Check and repair devicemapper thin-pool metadata",
		Long: `Check and repair the dm-thin pool metadata behind Docker's devicemapper
storage driver. Every command reads the metadata itself, with no help from
thin-provisioning-tools.

` + exitCodesHelp,
		Args: rootArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// "docker devmapper" alone: show what there is.
			return cmd.Help()
		},
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return persistentPreRun(cmd, args, dockerCLI)
		},
		SilenceUsage:               true,
		SilenceErrors:              true,
		SuggestionsMinimumDistance: 2,
		// Completion of plugin commands is served by the docker CLI.
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: true},
	}
	cmd.SetOut(dockerCLI.Out())
	cmd.SetErr(dockerCLI.Err())
	// Set on the root, inherited by every command below it.
	cmd.SetFlagErrorFunc(flagError)

	cmd.AddCommand(
		newCheckCommand(dockerCLI),
		newDumpCommand(dockerCLI),
		newRepairCommand(dockerCLI),
		newRestoreCommand(dockerCLI),
		newLsCommand(dockerCLI),
		newStatusCommand(dockerCLI),
		newResetCommand(dockerCLI),
	)
	return cmd
}

// persistentPreRun runs before every command, after its flags and
// arguments were found valid. It lets the plugin framework set up the
// docker CLI (the hook is nil when the tree runs outside the framework, as
// in tests), then ties the command's context to SIGINT and SIGTERM so that
// long scans stop cleanly with ExitCancelled.
//
// A --quiet run gets streams that discard everything first, so that nothing
// the docker CLI says while it loads its configuration reaches the screen.
// Usage errors are all raised before this point, and are still printed.
func persistentPreRun(cmd *cobra.Command, args []string, dockerCLI command.Cli) error {
	if quiet(cmd) {
		if d, ok := dockerCLI.(*command.DockerCli); ok {
			_ = command.WithOutputStream(io.Discard)(d)
			_ = command.WithErrorStream(io.Discard)(d)
		}
	}
	if cliplugin.PersistentPreRunE != nil {
		if err := cliplugin.PersistentPreRunE(cmd, args); err != nil {
			return operational(fmt.Errorf("cannot set up the docker CLI: %w", err), "check your docker configuration (DOCKER_CONFIG, DOCKER_HOST, DOCKER_CONTEXT)", false)
		}
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	// Once the first signal has cancelled the work, restore the default
	// handling so a second Ctrl-C kills the process at once.
	context.AfterFunc(ctx, stop)
	cmd.SetContext(ctx)
	return nil
}

// quiet reports whether the command runs with --quiet.
func quiet(cmd *cobra.Command) bool {
	f := cmd.Flags().Lookup("quiet")
	return f != nil && f.Value.String() == "true"
}

// rootArgs rejects "docker devmapper bogus" as a usage error; without it
// cobra would print the help and exit 0.
func rootArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q", args[0])
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %q?)", s[0])
	}
	return usageError(cmd, msg)
}

// flagError turns every flag parsing error into ExitUsage.
func flagError(cmd *cobra.Command, err error) error {
	if err == nil {
		return nil
	}
	return usageError(cmd, err.Error())
}

// noArgs is cli.NoArgs with our exit code and message shape.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	return usageError(cmd, fmt.Sprintf("takes no arguments, got %q", strings.Join(args, " ")))
}

// usageError reports a command line we cannot run: which command, what is
// wrong, and on a second line where to look next.
func usageError(cmd *cobra.Command, msg string) error {
	path := cmd.CommandPath()
	return cli.StatusError{
		StatusCode: ExitUsage,
		Status:     fmt.Sprintf("%s: %s\nsee '%s --help' for usage", path, msg, path),
	}
}

// operational reports a job we could not do (ExitError). hint says what to
// try next; quiet drops the message but keeps the cause for errors.Is.
func operational(err error, hint string, quiet bool) error {
	return status(ExitError, err, hint, quiet)
}

// status builds the cli.StatusError main understands: Status is printed as
// is, and an empty Status prints nothing. A cancelled context always maps to
// ExitCancelled, whatever the caller was about to report.
func status(code int, err error, hint string, quiet bool) error {
	st := cli.StatusError{StatusCode: code, Cause: err}
	if errors.Is(err, context.Canceled) {
		// Whoever pressed Ctrl-C knows why; the cause stays for errors.Is.
		st.StatusCode, hint = ExitCancelled, ""
		err = errors.New("cancelled before finishing")
	}
	if !quiet {
		st.Status = err.Error()
		if hint != "" {
			st.Status += "\n" + hint
		}
	}
	return st
}

// addQuietFlag gives a command the -q/--quiet flag, with one meaning
// everywhere: print nothing at all, and let the exit code speak.
func addQuietFlag(flags *pflag.FlagSet, quiet *bool) {
	flags.BoolVarP(quiet, "quiet", "q", false, "Print nothing; the exit code tells the outcome")
}
