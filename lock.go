package redlease

import (
	"context"
	"fmt"
	"time"
)

// Lock is one lease on a named lock, obtained from a [Locker]. Its methods
// are safe for concurrent use.
type Lock struct {
	lease
	l       *Locker
	keyList [4]string // the lease, its slot's fence counter, the lock's waiter queue, its shared leases
	ttlMs   int64     // the lease's ttl when obtained, for the scripts
	limit   int64     // a shared lease's WithLimit, 0: none
	// For the hook: when the first attempt found the lock taken, and
	// whether a release handed the lease over.
	waitFrom  time.Time
	handedOff bool
	replicas  int           // WithReplicaAck
	wait      time.Duration // WithReplicaAck
}

// keys are the lock's keys in the order lua/lock.lua names them.
func (lk *Lock) keys() []string { return lk.keyList[:] }

// Key returns the lock's name as given to the Locker.
func (lk *Lock) Key() string { return lk.name }

// Token returns the random 128-bit value that identifies this lease in Redis.
func (lk *Lock) Token() string { return lk.token }

// Fence returns the fencing token of this lease: for one key it is strictly
// greater than that of every earlier lease, by any holder, ever. A resource
// that remembers the highest fence it has seen and refuses writes with a
// lower one stays safe even when two holders briefly believe they hold the
// lock (after a pause longer than the lease, for example).
func (lk *Lock) Fence() int64 { return lk.fence }

// Lost returns a channel that is closed when the lease is no longer held:
// a renewal or Refresh found it expired or taken, no renewal succeeded
// before it must have ended by the client's own clock, the Locker was
// closed, or the holder released it. Err says which.
func (lk *Lock) Lost() <-chan struct{} { return lk.lost }

// Err returns nil while the lease is held or after a clean Release, and
// otherwise why Lost closed (an error that errors.Is [ErrNotHeld] or
// [ErrClosed]).
func (lk *Lock) Err() error {
	lk.l.wd.mu.Lock()
	defer lk.l.wd.mu.Unlock()
	return lk.cause
}

// TTL returns how long the lease has left in Redis, or 0 with a nil error
// when it is no longer ours.
func (lk *Lock) TTL(ctx context.Context) (time.Duration, error) {
	ms, err := lk.l.store.pttl(ctx, &lk.lease)
	if err != nil {
		return 0, fmt.Errorf("redlease: ttl of %q: %w", lk.name, err)
	}
	if ms < 0 {
		return 0, nil
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// Refresh sets the lease to end ttl from now, if it is still ours; the
// watchdog, if on, keeps renewing with the new ttl. A ttl under one
// millisecond is an error that changes nothing. If the lease is no longer
// ours, Refresh returns an error that errors.Is [ErrNotHeld] and [Lock.Lost] closes.
func (lk *Lock) Refresh(ctx context.Context, ttl time.Duration) error {
	return lk.l.wd.extend(&lk.lease, "refresh", "already released", ttl, func() (int64, error) {
		return lk.l.store.renew(ctx, &lk.lease, ttl)
	}, leaseGone)
}

// Release ends the lease if it is still ours. If others wait for the lock,
// the oldest of them gets it in the same step: Release returns once it
// holds it. If the lease expired or another holder has the lock now,
// Release changes nothing in Redis and returns an error that errors.Is
// [ErrNotHeld], saying which. Either way renewal stops and Lost closes.
func (lk *Lock) Release(ctx context.Context) error {
	_, err := lk.release(ctx)
	return err
}

// release also reports whether the lease had been lost before.
func (lk *Lock) release(ctx context.Context) (wasLost bool, err error) {
	wasLost, already := lk.l.wd.release(&lk.lease)
	if already {
		return wasLost, notHeld(lk.name, "already released")
	}
	code, err := lk.l.store.release(ctx, lk, nil)
	if err != nil {
		return wasLost, fmt.Errorf("redlease: release %q (the lease ends by its TTL): %w", lk.name, err)
	}
	if code != codeOK {
		return wasLost, leaseGone(lk.name, code)
	}
	return wasLost, nil
}
