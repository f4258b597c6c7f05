package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// binary is the plugin under test, built once for the whole package.
var binary string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

// runTests keeps every file the tests make, the binary included, under
// e2e/.tmp/ (ignored by git) rather than the system temporary directory:
// CI machines often mount that noexec, and the tests execute what they
// build there.
func runTests(m *testing.M) int {
	base, err := filepath.Abs(".tmp")
	if err == nil {
		err = os.MkdirAll(base, 0o755)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: cannot make e2e/.tmp:", err)
		return 1
	}
	dir, err := os.MkdirTemp(base, "run-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: cannot make a work directory:", err)
		return 1
	}
	defer func() {
		os.RemoveAll(dir)
		os.Remove(base) // only if no other run is using it
	}()
	// t.TempDir and os.MkdirTemp follow TMPDIR.
	os.Setenv("TMPDIR", dir)

	binary, err = Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: cannot build the plugin:", err)
		return 1
	}
	return m.Run()
}
