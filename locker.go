package redlease

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

// Locker hands out leases on named locks kept in Redis. It is safe for
// concurrent use by many goroutines; share one per process and Redis.
//
// Mutual exclusion holds only while the Redis instance holding the keys
// keeps them: a failover to a replica that had not received a write, a
// restart without persistence, or eviction can hand the same lock to two
// holders. Check [Lock.Fence] at the resource where that matters.
//
// A Locker runs background goroutines only while it holds leases or has
// waiters, and they stop shortly after; [Locker.Close] stops them at once.
type Locker struct {
	client   redis.UniversalClient // carries wake-ups and hand-offs: the only node, or a quorum's first
	store    store
	handsOff bool // a release may pass the lease straight to a waiter (one Redis)
	prefix   string
	channel  string // release notifications; the message is the lock key
	err      error  // from a bad client or option, returned by every call

	ctx    context.Context // ends on Close; bounds background calls
	cancel context.CancelFunc
	closed atomic.Bool

	wd  watchdog
	hub wakeHub
}

// NewLocker returns a Locker that keeps its keys in client. Errors in the
// arguments do not panic: every call on the Locker returns them.
func NewLocker(client redis.UniversalClient, opts ...Option) *Locker {
	cfg := lockerConfig{prefix: DefaultPrefix}
	for _, o := range opts {
		if o != nil {
			o.applyLocker(&cfg)
		}
	}
	l := &Locker{client: client, handsOff: true, prefix: cfg.prefix, channel: cfg.prefix + ":released", err: cfg.err}
	if err := checkClient(client); err != nil {
		l.err = err
	}
	l.store = newNode(client, l.channel)
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.wd = newWatchdog(l.ctx, func(ctx context.Context, batch []renewal) ([]int64, []error) {
		return l.store.renewAll(ctx, batch)
	})
	l.hub = wakeHub{l: l, queues: make(map[string][]*waiter)}
	return l
}

func checkClient(c redis.UniversalClient) error {
	if isNil(c) {
		return fmt.Errorf("%w: nil redis client", ErrInvalidArgument)
	}
	if _, ok := c.(*redis.Ring); ok {
		// Ring shards pub/sub by channel, so a release published on the
		// lock's shard would never reach the subscription.
		return fmt.Errorf("%w: redis.Ring is not supported by Locker; use a ClusterClient or one Client per shard", ErrInvalidArgument)
	}
	return nil
}

func isNil(c redis.UniversalClient) bool {
	if c == nil {
		return true
	}
	v := reflect.ValueOf(c)
	return v.Kind() == reflect.Pointer && v.IsNil()
}

// Close stops the Locker's background work at once and waits for its
// loops to end. A Redis call already in flight (a renewal on a dead link,
// say) is not waited for: go-redis cannot interrupt it, it ends by the
// client's own timeouts, and its answer is ignored. TryObtain and Obtain
// calls that Close overtakes give back any lease they got and return an
// error that errors.Is [ErrClosed]. Held leases are no longer
// renewed: their Lost channels close, but they stay in Redis until
// released (Release still works after Close) or expired. Close is
// idempotent.
func (l *Locker) Close() error {
	if !l.closed.CompareAndSwap(false, true) {
		return nil
	}
	l.cancel()
	l.hub.close()
	l.wd.close()
	return nil
}

// check validates what every call needs.
func (l *Locker) check(key string) error {
	switch {
	case l.err != nil:
		return l.err
	case l.closed.Load():
		return ErrClosed
	case key == "":
		return fmt.Errorf("%w: empty lock key", ErrInvalidArgument)
	}
	return nil
}

// Key layout. A lock name is hashed as a whole to a Redis Cluster slot s
// (CRC16 of the name, as Redis would hash the key "{name}"), and every key
// of the lock carries the hash tag slotTag(s): any name works, braces
// included, and the lease and its fence counter always share a slot.

// lockKey is the key of the lease on lock name.
func (l *Locker) lockKey(name string) string {
	return l.prefix + ":{" + slotTag(nameSlot(name)) + "}:lock:" + name // one allocation
}

// fenceKey is the fence counter of lock name. It is shared by every name in
// the name's slot, so at most clusterSlots counters exist per prefix; as it
// only grows, each name's fences still strictly increase.
func (l *Locker) fenceKey(name string) string {
	return l.prefix + ":{" + slotTag(nameSlot(name)) + "}:fence"
}

func (l *Locker) newLock(key string, cfg lockConfig, onLost context.CancelCauseFunc) *Lock {
	return &Lock{
		l: l, lease: newLease(key, l.lockKey(key), uuid.NewString(), cfg.ttl, cfg.watchdog, onLost),
		fkey:     l.fenceKey(key),
		replicas: cfg.replicas, wait: cfg.wait,
	}
}

// acquire makes one attempt to take the lock: ok, or the holder's
// remaining lease (negative when it has no TTL). A lease obtained after
// Close is given back.
func (l *Locker) acquire(ctx context.Context, lk *Lock) (ok bool, pttl time.Duration, err error) {
	start := time.Now()
	ok, n, err := l.store.acquire(ctx, lk, start)
	if err != nil {
		return false, 0, fmt.Errorf("redlease: obtain %q: %w", lk.name, err)
	}
	if !ok {
		return false, time.Duration(n) * time.Millisecond, nil
	}
	lk.fence = n
	l.wd.add(&lk.lease, start)
	if err := l.keepUnlessClosed(ctx, lk); err != nil {
		return false, 0, err
	}
	return true, 0, nil
}

// lockConfig applies a call's options.
func (l *Locker) lockConfig(opts []LockOption) (lockConfig, error) {
	cfg, err := newLockConfig(opts)
	if err == nil {
		err = l.store.check(&cfg)
	}
	return cfg, err
}

// TryObtain makes one attempt to take the lock. If another holds it, or
// Close overtook the call, the error errors.Is [ErrNotObtained] (and
// [ErrClosed] in the latter case). The lease lasts [WithTTL] (default 30s) and
// is renewed by the watchdog until Release unless [WithoutWatchdog] is given.
func (l *Locker) TryObtain(ctx context.Context, key string, opts ...LockOption) (*Lock, error) {
	if err := l.check(key); err != nil {
		return nil, err
	}
	cfg, err := l.lockConfig(opts)
	if err != nil {
		return nil, err
	}
	lk := l.newLock(key, cfg, nil)
	ok, pttl, err := l.acquire(ctx, lk)
	switch {
	case errors.Is(err, ErrClosed):
		return nil, gaveUp(key, err)
	case err != nil:
		return nil, err
	case !ok:
		return nil, notObtained(key, pttl)
	}
	return lk, nil
}

// Obtain takes the lock, waiting while another holds it until ctx ends or
// the retry strategy gives up; then the error errors.Is [ErrNotObtained], and
// also the context's error if that was the cause. Waiters are woken by the
// holder's release and are served first come, first served within a
// Locker, so a release costs about one attempt per Locker with waiters, not
// one per waiter; if no wake-up arrives, a waiter tries again when the
// holder's lease must have ended or the retry strategy says so.
func (l *Locker) Obtain(ctx context.Context, key string, opts ...LockOption) (*Lock, error) {
	if err := l.check(key); err != nil {
		return nil, err
	}
	cfg, err := l.lockConfig(opts)
	if err != nil {
		return nil, err
	}
	return l.obtain(ctx, key, cfg, nil)
}

func (l *Locker) obtain(ctx context.Context, key string, cfg lockConfig, onLost context.CancelCauseFunc) (*Lock, error) {
	if err := ctx.Err(); err != nil {
		return nil, gaveUp(key, err)
	}
	lk := l.newLock(key, cfg, onLost)
	pttl := time.Duration(-1)
	_, mayRetry := cfg.retry.NextBackoff(1)
	// Newcomers queue behind local waiters instead of racing them.
	tried := !mayRetry || !l.hub.waiting(lk.rkey)
	if tried {
		ok, p, err := l.acquire(ctx, lk)
		if ok || err != nil || !mayRetry {
			return l.outcome(ctx, lk, ok, p, err)
		}
		pttl = p
	}

	// Subscribed before the next attempt, so no release is missed.
	w, err := l.hub.join(ctx, lk)
	if err != nil {
		return nil, gaveUp(key, err)
	}
	acquired := false
	defer func() { l.hub.leave(w, acquired) }()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	woken := false
	// Every wait, by the head or by a waiter behind it, counts as a retry.
	for retry := 1; ; retry++ {
		wait, ok := cfg.retry.NextBackoff(retry)
		if !ok {
			return nil, notObtained(key, pttl)
		}
		// The first retry after subscribing comes at once: a release
		// between the first attempt and the subscription is not missed.
		if retry > 1 || !tried {
			if pttl >= 0 && pttl+time.Millisecond < wait {
				wait = pttl + time.Millisecond // Redis expires the key by then
			}
			timer.Reset(wait)
			woken = false
			select {
			case <-w.wake:
				woken = true
			case <-timer.C:
			case got := <-w.granted:
				if got != nil { // the releaser handed us the lock
					acquired = true
					if err := l.keepUnlessClosed(ctx, lk); err != nil {
						return nil, gaveUp(key, err)
					}
					return lk, nil
				}
			case <-ctx.Done():
				return nil, gaveUp(key, ctx.Err())
			}
		}
		if l.closed.Load() {
			return nil, gaveUp(key, ErrClosed)
		}
		if !l.hub.beginAcquire(w) {
			continue
		}
		ok, p, err := l.acquire(ctx, lk)
		// An attempt that decides Obtain leaves the queue at once, so no
		// releaser can take this waiter for a hand-off after it got the
		// lock (or an error) by itself.
		l.hub.endAcquire(w, ok || err != nil, ok)
		if ok && retry > 1 && !woken {
			l.hub.suspect() // freed, yet no wake-up came
		}
		if ok || err != nil {
			acquired = ok
			return l.outcome(ctx, lk, ok, p, err)
		}
		pttl = p
	}
}

// keepUnlessClosed gives back a lease obtained after Close.
func (l *Locker) keepUnlessClosed(ctx context.Context, lk *Lock) error {
	if l.closed.Load() {
		_ = lk.Release(context.WithoutCancel(ctx))
		return ErrClosed
	}
	return nil
}

// outcome turns an attempt's result into Obtain's: an error that
// came with the context's end is the context's.
func (l *Locker) outcome(ctx context.Context, lk *Lock, ok bool, pttl time.Duration, err error) (*Lock, error) {
	switch {
	case ok:
		return lk, nil
	case errors.Is(err, ErrClosed):
		return nil, gaveUp(lk.name, err)
	case err != nil && ctx.Err() != nil:
		return nil, gaveUp(lk.name, errors.Join(ctx.Err(), err))
	case err != nil:
		return nil, err
	}
	return nil, notObtained(lk.name, pttl)
}

// Do obtains the lock (as Obtain, with the watchdog on whatever the
// options say), runs fn, and releases the lock, even if fn panics. fn's
// context is cancelled the moment the lease is lost; Do then returns an
// error that errors.Is [ErrNotHeld], joined with fn's own error. A Redis
// error from the release is returned too.
func (l *Locker) Do(ctx context.Context, key string, fn func(ctx context.Context) error, opts ...LockOption) (err error) {
	if fn == nil {
		return fmt.Errorf("%w: nil function", ErrInvalidArgument)
	}
	if err := l.check(key); err != nil {
		return err
	}
	cfg, err := l.lockConfig(opts)
	if err != nil {
		return err
	}
	cfg.watchdog = true
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	lk, err := l.obtain(ctx, key, cfg, cancel)
	if err != nil {
		return err
	}
	defer func() {
		wasLost, relErr := lk.release(context.WithoutCancel(ctx))
		if wasLost {
			relErr = lk.Err()
		}
		err = errors.Join(err, relErr)
	}()
	return fn(fctx)
}
