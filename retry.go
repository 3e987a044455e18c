package redlease

import (
	"fmt"
	"time"
)

// defaultRetry is a queued waiter's schedule of checks: the release that
// frees the lock hands it over, so checks only matter when that notice is
// lost. Its first wait is longer than a hot lock's queue takes to move,
// so a healthy queue costs no checks.
var defaultRetry = ExponentialBackoff(250*time.Millisecond, time.Second)

// pollRetry is the default schedule of waiters that do not queue (on a
// quorum, or with WithReplicaAck): a release reaches them only through it.
var pollRetry = ExponentialBackoff(16*time.Millisecond, time.Second)

// RetryStrategy tells Obtain how long it may wait before it checks Redis
// again (a queued waiter) or tries again (a waiter that does not queue),
// and when to give up. Once Obtain knows the holder's remaining lease, it
// never waits longer than that, whatever the strategy says.
type RetryStrategy interface {
	// NextBackoff returns the longest wait before retry number n (n starts
	// at 1), or ok == false to give up.
	NextBackoff(n int) (wait time.Duration, ok bool)
}

type noRetry struct{}

func (noRetry) NextBackoff(int) (time.Duration, bool) { return 0, false }

// NoRetry makes Obtain a single attempt, like [Locker.TryObtain].
func NoRetry() RetryStrategy { return noRetry{} }

type linearBackoff time.Duration

func (d linearBackoff) NextBackoff(int) (time.Duration, bool) { return time.Duration(d), true }

func (d linearBackoff) validate() error {
	if d <= 0 {
		return fmt.Errorf("%w: linear backoff %v must be positive", ErrInvalidArgument, time.Duration(d))
	}
	return nil
}

// LinearBackoff retries at most every d until the context ends.
func LinearBackoff(d time.Duration) RetryStrategy { return linearBackoff(d) }

type exponentialBackoff struct{ min, max time.Duration }

func (e exponentialBackoff) NextBackoff(n int) (time.Duration, bool) {
	d := e.min
	for i := 1; i < n && d < e.max; i++ {
		if d > e.max/2 {
			return e.max, true
		}
		d *= 2
	}
	return min(d, e.max), true
}

func (e exponentialBackoff) validate() error {
	if e.min <= 0 || e.max < e.min {
		return fmt.Errorf("%w: exponential backoff needs 0 < min <= max, got %v and %v", ErrInvalidArgument, e.min, e.max)
	}
	return nil
}

// ExponentialBackoff waits min before the first retry, doubling up to max,
// until the context ends.
func ExponentialBackoff(min, max time.Duration) RetryStrategy {
	return exponentialBackoff{min, max}
}

type limitRetry struct {
	s RetryStrategy
	n int
}

func (l limitRetry) NextBackoff(n int) (time.Duration, bool) {
	if n > l.n {
		return 0, false
	}
	return l.s.NextBackoff(n)
}

func (l limitRetry) validate() error {
	if l.s == nil || l.n < 0 {
		return fmt.Errorf("%w: limit retry needs a strategy and n >= 0, got n=%d", ErrInvalidArgument, l.n)
	}
	if v, ok := l.s.(interface{ validate() error }); ok {
		return v.validate()
	}
	return nil
}

// LimitRetry follows s for at most n retries, then gives up.
func LimitRetry(s RetryStrategy, n int) RetryStrategy { return limitRetry{s, n} }
