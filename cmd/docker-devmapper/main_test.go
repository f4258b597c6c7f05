package main

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/docker/cli/cli"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/docker-devmapper/docker-devmapper/plugin"
)

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		name     string
		err      error
		wantCode int
		wantMsg  string
	}{
		{name: "success", err: nil, wantCode: 0},
		{name: "damage", err: cli.StatusError{StatusCode: plugin.ExitDamage}, wantCode: 4},
		{name: "usage", err: cli.StatusError{StatusCode: plugin.ExitUsage, Status: "bad flag"}, wantCode: 16, wantMsg: "bad flag"},
		{name: "quiet-keeps-cause-silent", err: cli.StatusError{StatusCode: plugin.ExitError, Cause: errors.New("hidden")}, wantCode: 8},
		{name: "wrapped-status", err: fmt.Errorf("outer: %w", cli.StatusError{StatusCode: plugin.ExitUsage, Status: "inner"}), wantCode: 16, wantMsg: "inner"},
		{name: "zero-status-is-failure", err: cli.StatusError{Status: "odd"}, wantCode: 8, wantMsg: "odd"},
		{name: "cancelled", err: fmt.Errorf("reading: %w", context.Canceled), wantCode: 130, wantMsg: "cancelled"},
		{name: "other", err: errors.New("config file is broken"), wantCode: 8, wantMsg: "config file is broken"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, msg := exitCode(tc.err)
			assert.Check(t, is.Equal(code, tc.wantCode))
			assert.Check(t, is.Equal(msg, tc.wantMsg))
		})
	}
}

func TestStandaloneArgs(t *testing.T) {
	for _, tc := range []struct {
		in, want []string
	}{
		{in: []string{"docker-devmapper"}, want: []string{"docker-devmapper", "devmapper"}},
		{in: []string{"/x/docker-devmapper", "check", "-q"}, want: []string{"/x/docker-devmapper", "devmapper", "check", "-q"}},
	} {
		assert.Check(t, is.DeepEqual(standaloneArgs(tc.in), tc.want))
	}
}
