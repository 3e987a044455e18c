package redistest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// ErrNoBinary is wrapped by every error that says a program the tests need
// (redis-server, redis-cli, bash) is not installed.
var ErrNoBinary = errors.New("not found in PATH")

// LookPath finds a program; its error wraps ErrNoBinary.
func LookPath(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s %w", name, ErrNoBinary)
	}
	return p, nil
}

// Need is the tests' one skip rule, called with the error of starting what
// a test needs: it returns on nil; it skips the test when err wraps
// ErrNoBinary, unless CI=true, where it fails it; any other error fails the
// test. Under CI=true no test that needs servers is ever skipped.
func Need(t testing.TB, what string, err error) {
	t.Helper()
	switch {
	case err == nil:
	case errors.Is(err, ErrNoBinary) && os.Getenv("CI") != "true":
		t.Skipf("skipping %s test: %v (install it to run the test)", what, err)
	case errors.Is(err, ErrNoBinary):
		t.Fatalf("%s needed under CI=true: %v", what, err)
	default:
		t.Fatalf("%s could not be started: %v", what, err)
	}
}
