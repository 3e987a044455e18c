package redistest

import (
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Leaks is the tests' one goroutine-leak check: it returns nil once no
// goroutine runs but the test runner's own and those opts ignore, and
// otherwise, after grace (at least goleak's own retries, about half a
// second), an error listing the goroutines still running.
func Leaks(grace time.Duration, opts ...goleak.Option) error {
	if grace <= 0 {
		return goleak.Find(opts...)
	}
	return Poll(grace, func() error { return goleak.Find(opts...) })
}

// NoLeaks returns a check, to defer or to register first with t.Cleanup
// (so that it runs last), that fails the test if a goroutine started since
// NoLeaks was called still runs grace after the check begins. It ignores
// the goroutines that wait for servers this package started (servers that
// are shared by the tests outlive the test that started them) and
// miniredis's per-connection goroutines, which end on their own once the
// client has closed.
func NoLeaks(t testing.TB, grace time.Duration) func() {
	since := goleak.IgnoreCurrent()
	return func() {
		t.Helper()
		if err := Leaks(grace, since,
			goleak.IgnoreAnyFunction("github.com/redlease/redlease/internal/redistest.(*Server).wait"),
			goleak.IgnoreAnyFunction("github.com/alicebob/miniredis/v2/server.(*Server).servePeer"),
			goleak.IgnoreAnyFunction("github.com/alicebob/miniredis/v2/server.(*Server).servePeer.func2")); err != nil {
			t.Error(err)
		}
	}
}
