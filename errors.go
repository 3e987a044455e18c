package redlease

import "errors"

var (
	// ErrNotObtained reports that a lock was not obtained: TryObtain found it
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

	// ErrClosed reports a call on a Locker after Close, or an Obtain that
	// was waiting when Close was called.
	ErrClosed = errors.New("redlease: locker closed")
)

// ErrDuplicate reports that Enqueue with WithID found a live message with
// that id: nothing was added.
var ErrDuplicate = errors.New("redlease: duplicate message id")
