package redlease

import (
	"errors"
	"fmt"
	"time"
)

var (
	// ErrNotObtained reports that a lock was not obtained: [Locker.TryObtain] found it
	// held by another, or Obtain gave up (its retry strategy ran out or its
	// context ended; in the latter case the context's error is wrapped too).
	ErrNotObtained = errors.New("redlease: lock not obtained")

	// ErrNotHeld reports that an operation needed a lease that is no longer
	// ours: it expired, was deleted, or another holder has it now. The
	// operation changed nothing in Redis.
	ErrNotHeld = errors.New("redlease: lease not held")

	// ErrInvalidArgument reports bad input (an empty key, a non-positive
	// duration, a nil client or function, nonsense retry settings). Nothing
	// was sent to Redis.
	ErrInvalidArgument = errors.New("redlease: invalid argument")

	// ErrClosed reports a call on a Locker after Close, or a TryObtain or
	// Obtain that Close overtook (a lease it got meanwhile is given back).
	ErrClosed = errors.New("redlease: locker closed")
)

// ErrDuplicate reports that Enqueue with [WithID] found a live message with
// that id: nothing was added.
var ErrDuplicate = errors.New("redlease: duplicate message id")

// ErrSkipRetry, wrapped by a handler's error (or by the cause given to
// [Message.Nack] with [WithCause]), dead-letters the message at once
// instead of retrying it: for failures that no retry can mend, such as a
// payload that does not parse.
var ErrSkipRetry = errors.New("redlease: do not retry")

// ErrBusy reports that a call gave up because what it depends on kept
// changing under it: a Topic's subscriptions changed before each try of a
// Publish. A Publish that returns it published nothing and may be tried
// again; a PublishBatch may have published some of its messages.
var ErrBusy = errors.New("redlease: busy")

func notHeld(key, why string) error { return fmt.Errorf("%w: %q: %s", ErrNotHeld, key, why) }

// leaseGone turns a lock script's "not ours" code into an error.
func leaseGone(key string, code int64) error {
	if code == codeGone {
		return notHeld(key, "lease expired")
	}
	return notHeld(key, "held by another")
}

func notObtained(key string, pttl time.Duration) error {
	if pttl < 0 {
		return fmt.Errorf("%w: %q is held by another, with no expiry", ErrNotObtained, key)
	}
	return fmt.Errorf("%w: %q is held by another for up to %v", ErrNotObtained, key, pttl)
}

func gaveUp(key string, cause error) error {
	return fmt.Errorf("%w: obtain %q: %w", ErrNotObtained, key, cause)
}
