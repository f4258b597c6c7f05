package e2e

import (
	"fmt"
	"os"
	"testing"
)

// binary is the plugin under test, built once for the whole package.
var binary string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "devmapper-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: cannot make a build directory:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary, err = Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: cannot build the plugin:", err)
		return 1
	}
	return m.Run()
}
