// Command docker-devmapper checks and repairs the dm-thin pool metadata
// behind Docker's devicemapper storage driver.
//
// It is one binary with two faces: installed in a cli-plugins directory it
// runs as "docker devmapper ...", and run directly it behaves the same as
// "docker-devmapper ...". Only this function exits; every command returns an
// error, and exitCode turns it into the documented exit status.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/docker/cli/cli"
	"github.com/docker/cli/cli-plugins/metadata"
	cliplugin "github.com/docker/cli/cli-plugins/plugin"
	"github.com/docker/cli/cli/command"
	"github.com/docker/cli/cli/debug"
	"go.opentelemetry.io/otel"

	"github.com/docker-devmapper/docker-devmapper/plugin"
)

func main() {
	// As plugin.Run does: OpenTelemetry's own errors (a bad DOCKER_HOST,
	// say) go to the debug log, not to stderr, where --quiet forbids them.
	otel.SetErrorHandler(debug.OTELErrorHandler)
	dockerCLI, err := command.NewDockerCli()
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot set up the docker CLI: %v\n", err)
		os.Exit(plugin.ExitError)
	}
	if cliplugin.RunningStandalone() {
		// The docker CLI runs us as "docker-devmapper devmapper ARGS";
		// give a direct run the same shape so one command tree serves both.
		os.Args = standaloneArgs(os.Args)
	}
	err = cliplugin.RunPlugin(dockerCLI, plugin.NewRootCommand(dockerCLI), metadata.Metadata{
		SchemaVersion:    "0.1.0",
		Vendor:           "docker-devmapper",
		Version:          plugin.Version,
		ShortDescription: "Check and repair devicemapper thin-pool metadata",
		URL:              "https://github.com/docker-devmapper/docker-devmapper",
	})
	code, msg := exitCode(err)
	if msg != "" {
		fmt.Fprintln(dockerCLI.Err(), msg)
	}
	os.Exit(code)
}

// standaloneArgs rewrites the arguments of a direct run into the form the
// docker CLI uses when it runs a plugin.
func standaloneArgs(args []string) []string {
	out := make([]string, 0, len(args)+1)
	out = append(out, args[0], plugin.Name)
	return append(out, args[1:]...)
}

// exitCode maps an error to an exit status and the message to print. A
// cli.StatusError carries its own code; its Status is printed as is, and an
// empty Status prints nothing (that is how --quiet stays silent).
func exitCode(err error) (int, string) {
	if err == nil {
		return plugin.ExitClean, ""
	}
	var st cli.StatusError
	if errors.As(err, &st) {
		code := st.StatusCode
		if code == 0 {
			code = plugin.ExitError // a status error always means failure
		}
		return code, st.Status
	}
	if errors.Is(err, context.Canceled) {
		return plugin.ExitCancelled, "cancelled"
	}
	// Errors that reach here come from outside our commands, such as the
	// docker CLI failing to load its configuration.
	return plugin.ExitError, err.Error()
}
