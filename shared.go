package redlease

import "context"

// Shared leases: a read-write lock and a semaphore on the same lease as
// exclusive locks. One name is one lock: an exclusive lease and shared
// leases on it exclude each other, while any number of shared leases, or at
// most n with [WithLimit](n), hold it together. Each shared lease is a
// lease of its own, with its TTL, watchdog, Lost, Refresh, TTL and Release:
// a crashed holder's share ends with its TTL while the others keep theirs.
//
// Exclusive waiters come first: while one waits, new shared leases wait
// behind it (TryObtainShared fails), so a stream of shared holders cannot
// starve it; if its process dies, the next shared acquisition finds that
// nobody listens for it and lets the shared waiters in. Waiters of both
// kinds queue together in Redis, first come, first served: a release that
// makes room for k shared waiters lets all k in, in the same step.
//
// A shared lease's [Lock.Fence] is the lock's fence counter when it was
// granted: at least the fence of every lease granted before it, and below
// that of every exclusive lease granted after it. Shared leases are not
// supported by a quorum Locker (see [NewQuorumLocker]).

// TryObtainShared makes one attempt to take a shared lease on the lock, as
// [Locker.TryObtain] does an exclusive one. It fails with an error that
// errors.Is [ErrNotObtained] while an exclusive lease holds the lock, an
// exclusive waiter is queued, or [WithLimit]'s shared leases already hold it.
func (l *Locker) TryObtainShared(ctx context.Context, key string, opts ...LockOption) (*Lock, error) {
	return l.tryObtain(ctx, key, opts, true)
}

// ObtainShared takes a shared lease on the lock, waiting as
// [Locker.Obtain] does while an exclusive lease or waiter, or WithLimit's
// shared leases, keep it from fitting.
func (l *Locker) ObtainShared(ctx context.Context, key string, opts ...LockOption) (*Lock, error) {
	cfg, err := l.lockConfig(key, opts, true)
	if err != nil {
		return nil, err
	}
	return l.obtain(ctx, key, cfg, nil)
}

// DoShared runs fn under a shared lease on the lock, as [Locker.Do] runs
// it under an exclusive one: fn's context is cancelled the moment the lease
// is lost, and DoShared then returns an error that errors.Is [ErrNotHeld].
func (l *Locker) DoShared(ctx context.Context, key string, fn func(ctx context.Context) error, opts ...LockOption) error {
	return l.do(ctx, key, fn, opts, true)
}

// Shared reports whether the lease is shared (from TryObtainShared,
// ObtainShared or DoShared) rather than exclusive.
func (lk *Lock) Shared() bool { return lk.shared }
