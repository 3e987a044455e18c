package redistest

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// How often Poll and Eventually look: Poll waits on servers, Eventually on
// the library's own state, which changes faster.
const (
	pollEvery       = 20 * time.Millisecond
	eventuallyEvery = 5 * time.Millisecond
)

// Stop wraps an error that makes Poll give up at once, without waiting for
// its timeout (a server that exited will not start answering).
type Stop struct{ Err error }

// Error is the wrapped error's message.
func (s Stop) Error() string { return s.Err.Error() }

// Unwrap returns the wrapped error, for errors.Is and errors.As.
func (s Stop) Unwrap() error { return s.Err }

// Poll calls cond every 20ms until it returns nil or a Stop, or timeout
// has passed; it returns nil, the Stop, or cond's last error wrapped in a
// timeout message. cond is called at least once.
func Poll(timeout time.Duration, cond func() error) error {
	return poll(timeout, pollEvery, cond)
}

// Eventually polls cond every 5ms until it holds, and fails the test with
// t.Fatalf, naming what it waited for, if it does not hold within timeout.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	notYet := errors.New("not yet")
	if poll(timeout, eventuallyEvery, func() error {
		if cond() {
			return nil
		}
		return notYet
	}) != nil {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

func poll(timeout, every time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		var stop Stop
		if err == nil || errors.As(err, &stop) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v: %w", timeout, err)
		}
		time.Sleep(every)
	}
}
