package redlease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync/atomic"
	"time"

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
// waiters, and they stop shortly after (a subscription 1s after its last
// waiter); [Locker.Close] stops them at once.
type Locker struct {
	client redis.UniversalClient // the only node, or a quorum's first
	store  store
	waits  *waitlist // nil for a quorum, whose waiters poll
	prefix string
	log    *slog.Logger // WithLogger's; nil: slog.Default(), Warn and above
	hook   Hook         // WithHook's; nil: none
	err    error        // from a bad client or option, returned by every call

	ctx    context.Context // ends on Close; bounds background calls
	cancel context.CancelFunc
	closed atomic.Bool

	wd watchdog
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
	l := &Locker{client: client, prefix: cfg.prefix, log: cfg.log, hook: cfg.hook, err: cfg.err}
	if err := checkClient(client); err != nil {
		l.err = err
	}
	n := newNode(client)
	l.store = n
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.wd = newWatchdog(l.ctx, func(ctx context.Context, batch []renewal) ([]int64, []error) {
		return l.store.renewAll(ctx, batch)
	})
	l.wd.report, l.wd.reportRenewals = l.leaseNews, l.hook != nil
	l.waits = newWaitlist(l, n)
	return l
}

func checkClient(c redis.UniversalClient) error {
	if isNil(c) {
		return fmt.Errorf("%w: nil redis client", ErrInvalidArgument)
	}
	if _, ok := c.(*redis.Ring); ok {
		// Ring shards pub/sub by channel, so a grant published on the
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
	if l.waits != nil {
		l.waits.close()
	}
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
// included, and the lease, its fence counter and its waiter queue always
// share a slot.

// lockKeys returns lock name's keys in the order lua/lock.lua names them:
// the lease, the fence counter, the waiter queue and the shared leases. The
// fence counter is shared by every name in the name's slot, so at most
// clusterSlots counters exist per prefix; as it only grows, each name's
// fences still strictly increase. The four are cut from one string: one
// allocation.
func (l *Locker) lockKeys(name string) [4]string {
	base := l.prefix + ":{" + slotTag(nameSlot(name)) + "}:"
	all := base + "lock:" + name + base + "fence" + base + "waiters:" + name + base + "shared:" + name
	lock := len(base) + len("lock:") + len(name)
	fence := lock + len(base) + len("fence")
	waiters := fence + len(base) + len("waiters:") + len(name)
	return [4]string{all[:lock], all[lock:fence], all[fence:waiters], all[waiters:]}
}

// lockKey is the key of the lease on lock name.
func (l *Locker) lockKey(name string) string { return l.lockKeys(name)[0] }

// fenceKey is the fence counter of lock name's slot.
func (l *Locker) fenceKey(name string) string { return l.lockKeys(name)[1] }

func (l *Locker) newLock(key string, cfg lockConfig, onLost context.CancelCauseFunc) *Lock {
	keys := l.lockKeys(key)
	token := newToken()
	lk := &Lock{
		l: l, lease: newLease(key, keys[0], token, cfg.ttl, cfg.watchdog, onLost),
		keyList: keys, ttlMs: cfg.ttl.Milliseconds(), replicas: cfg.replicas, wait: cfg.wait,
		limit: int64(cfg.limit),
	}
	lk.shared = cfg.shared
	lk.skey = keys[3]
	return lk
}

// acquire makes one attempt to take the lock, queueing the waiter whose
// entry it carries, if any: ok, or the holder's remaining lease (-1ms
// when it has no TTL, pttlQueued ms when queued). A lease obtained after
// Close is given back.
func (l *Locker) acquire(ctx context.Context, lk *Lock, entry *string) (ok bool, pttl time.Duration, err error) {
	start := time.Now()
	ok, n, err := l.store.acquire(ctx, lk, start, entry)
	if err != nil {
		return false, 0, fmt.Errorf("redlease: obtain %q: %w", lk.name, err)
	}
	if !ok {
		if lk.waitFrom.IsZero() {
			lk.waitFrom = time.Now()
		}
		return false, time.Duration(n) * time.Millisecond, nil
	}
	lk.fence = n
	l.wd.add(&lk.lease, start)
	if err := l.keepUnlessClosed(ctx, lk); err != nil {
		return false, 0, err
	}
	return true, 0, nil
}

// lockConfig checks a call's key and applies its options, for a shared
// lease or an exclusive one.
func (l *Locker) lockConfig(key string, opts []LockOption, shared bool) (lockConfig, error) {
	if err := l.check(key); err != nil {
		return lockConfig{}, err
	}
	cfg, err := newLockConfig(opts)
	if err != nil {
		return cfg, err
	}
	if cfg.limit > 0 && !shared {
		return cfg, fmt.Errorf("%w: WithLimit applies to shared leases only", ErrInvalidArgument)
	}
	cfg.shared = shared
	return cfg, l.store.check(cfg)
}

// TryObtain makes one attempt to take the lock. If another holds it, or
// Close overtook the call, the error errors.Is [ErrNotObtained] (and
// [ErrClosed] in the latter case). The lease lasts [WithTTL] (default 30s) and
// is renewed by the watchdog until Release unless [WithoutWatchdog] is given.
func (l *Locker) TryObtain(ctx context.Context, key string, opts ...LockOption) (*Lock, error) {
	return l.tryObtain(ctx, key, opts, false)
}

func (l *Locker) tryObtain(ctx context.Context, key string, opts []LockOption, shared bool) (*Lock, error) {
	cfg, err := l.lockConfig(key, opts, shared)
	if err != nil {
		return nil, err
	}
	lk := l.newLock(key, cfg, nil)
	defer l.observeAcquired(ctx, lk, time.Now())
	ok, pttl, err := l.acquire(ctx, lk, nil)
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
// also the context's error if that was the cause.
//
// Waiters queue in Redis, first come, first served across every process:
// the release that frees the lock hands it to the oldest waiter still
// listening, whose Obtain returns without another round trip, and a lock
// with waiters is never free for a newcomer to take. A waiter checks Redis
// itself only when the retry strategy's wait passes or the holder's lease
// must have ended: after a lost notice, or a holder that crashed. See
// [WithGrantTTL] for waiters that die. A quorum Locker's waiters do not
// queue: they try again on that schedule.
func (l *Locker) Obtain(ctx context.Context, key string, opts ...LockOption) (*Lock, error) {
	cfg, err := l.lockConfig(key, opts, false)
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
	defer l.observeAcquired(ctx, lk, time.Now())
	queue := l.waits != nil && lk.replicas == 0
	retry := cfg.retry
	if retry == nil {
		retry = pollRetry
		if queue {
			retry = defaultRetry
		}
	}
	if _, mayRetry := retry.NextBackoff(1); !mayRetry || !queue {
		return l.poll(ctx, lk, retry)
	}
	return l.queue(ctx, lk, cfg, retry)
}

// poll tries, and tries again on the retry schedule, without queueing.
func (l *Locker) poll(ctx context.Context, lk *Lock, retry RetryStrategy) (*Lock, error) {
	var timer *time.Timer
	for n := 1; ; n++ {
		ok, pttl, err := l.acquire(ctx, lk, nil)
		if ok || err != nil {
			return l.outcome(ctx, lk, ok, pttl, err)
		}
		wait, more := retry.NextBackoff(n)
		if !more {
			return nil, notObtained(lk.name, pttl)
		}
		if timer == nil {
			timer = time.NewTimer(capWait(wait, pttl))
			defer timer.Stop()
		} else {
			timer.Reset(capWait(wait, pttl))
		}
		select {
		case <-timer.C:
		case <-ctx.Done():
			return nil, gaveUp(lk.name, ctx.Err())
		case <-l.ctx.Done():
			return nil, gaveUp(lk.name, ErrClosed)
		}
	}
}

// capWait shortens a wait to end just after the holder's lease, when known.
func capWait(wait, pttl time.Duration) time.Duration {
	if pttl >= 0 && pttl+time.Millisecond < wait {
		return pttl + time.Millisecond // Redis expires the key by then
	}
	return wait
}

// queue makes an attempt that queues lk in Redis if the lock is held, then
// waits for the grant, checking Redis on the retry schedule.
func (l *Locker) queue(ctx context.Context, lk *Lock, cfg lockConfig, retry RetryStrategy) (*Lock, error) {
	w, err := l.waits.join(lk, min(cfg.ttl, cfg.grantTTL))
	if err != nil {
		return nil, gaveUp(lk.name, err)
	}
	queued, acquired := false, false
	defer func() { l.waits.leave(w, queued && !acquired) }()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	known, at := time.Duration(-1), time.Time{} // how long until the lock may change, as of at
	// Queue only once w's Locker listens: a release, or a shared attempt's
	// look for dead waiters, would take w for dead. Until then, poll
	// without queueing. ready closes when the subscription is up or its
	// first try failed, which the client's dial and read timeouts bound.
	for n := 1; !w.sub.isReady(); n++ {
		ok, pttl, err := l.acquire(ctx, lk, nil)
		if ok || err != nil {
			acquired = ok
			return l.outcome(ctx, lk, ok, pttl, err)
		}
		known, at = pttl, time.Now()
		wait, _ := pollRetry.NextBackoff(n)
		timer.Reset(capWait(wait, pttl))
		select {
		case <-w.sub.ready:
		case <-timer.C:
		case <-ctx.Done():
			return nil, gaveUp(lk.name, ctx.Err())
		case <-l.ctx.Done():
			return nil, gaveUp(lk.name, ErrClosed)
		}
	}
	// The attempt may queue w even if its reply is lost.
	queued = true
	w.start = time.Now()
	ok, pttl, err := l.acquire(ctx, lk, &w.entry)
	if ok || err != nil {
		acquired = ok
		return l.outcome(ctx, lk, ok, pttl, err)
	}
	pttl = -1 // unknown until a check, unless the first attempt said
	if known >= 0 {
		pttl = max(known-time.Since(at), 0)
	}
	take := false // a check found the lease granted to w: the next one takes it
	for n := 1; ; n++ {
		wait, more := retry.NextBackoff(n)
		if !more {
			return nil, notObtained(lk.name, pttl)
		}
		timer.Reset(capWait(wait, pttl))
		select {
		case fence := <-w.granted:
			ok, err := l.takeGrant(ctx, w, fence)
			if ok || err != nil {
				acquired = ok
				return l.outcome(ctx, lk, ok, 0, err)
			}
			continue // takeGrant checked Redis: the lease was not w's
		case <-w.check:
		case <-timer.C:
		case <-ctx.Done():
			return nil, gaveUp(lk.name, ctx.Err())
		}
		if l.closed.Load() {
			return nil, gaveUp(lk.name, ErrClosed)
		}
		select {
		case fence := <-w.granted: // a grant heard meanwhile spares the check
			ok, err := l.takeGrant(ctx, w, fence)
			if ok || err != nil {
				acquired = ok
				return l.outcome(ctx, lk, ok, 0, err)
			}
			continue
		default:
		}
		ok, granted, ms, err := l.checkWaiter(ctx, w, take, true)
		switch {
		case err != nil:
			return l.outcome(ctx, lk, false, 0, err)
		case ok:
			acquired = true
			if err := l.keepUnlessClosed(ctx, lk); err != nil {
				return nil, gaveUp(lk.name, err)
			}
			return lk, nil
		}
		pttl = time.Duration(ms) * time.Millisecond
		// Granted: the notice should follow; if it has not by the next
		// check, well within the grant's lease, that check takes it.
		take = granted
		if granted {
			pttl /= 2
		}
	}
}

// checkWaiter runs a waiter's check (lua/lock_wait.lua), taking a lease
// found granted to it only with take: ok; or granted (and the grant's
// remaining ms) when its notice should follow; or the holder's remaining
// ms, -1 if it has no TTL. A Locker found to have missed a grant while
// listening subscribes anew.
func (l *Locker) checkWaiter(ctx context.Context, w *waiter, take, listening bool) (ok, granted bool, ms int64, err error) {
	lk := w.lk
	start := time.Now()
	code, v, missed, err := l.waits.node.wait(ctx, w, take)
	if err != nil {
		return false, false, 0, fmt.Errorf("redlease: obtain %q: %w", lk.name, err)
	}
	if missed && listening {
		l.waits.suspect(w.sub)
	}
	if code == codeOK {
		lk.fence, lk.handedOff = v, take
		l.wd.add(&lk.lease, start)
		return true, false, 0, nil
	}
	return false, code == codeGranted, v, nil
}

// grantMargin: a handed-over lease with less than 1/grantMargin of its
// grant ttl left by the client's count is taken as a check takes it.
const grantMargin = 10

// takeGrant accepts a lease a release handed to w with fence. The release
// set it to last the grant ttl from a moment after w's first attempt was
// sent, and the watchdog renews it to the full ttl in the background. If
// the watchdog is off, or by the client's count the grant ttl is nearly
// over (the notice may even be from a grant that ended since), the lease
// is taken by a check instead: it confirms the lease is w's, sets its full
// ttl and counts a fresh fence. It reports false when the lease is not w's.
func (l *Locker) takeGrant(ctx context.Context, w *waiter, fence int64) (bool, error) {
	lk := w.lk
	span := w.grantTTL
	if !lk.renew || time.Until(w.start.Add(span-drift(span))) < span/grantMargin {
		// A notice of a grant that has ended says nothing of the
		// subscription: no suspicion (listening false).
		ok, _, _, err := l.checkWaiter(ctx, w, true, false)
		if ok {
			err = l.keepUnlessClosed(ctx, lk)
		}
		return ok, err
	}
	lk.fence, lk.handedOff = fence, true
	l.wd.addSpan(&lk.lease, w.start, span)
	return true, l.keepUnlessClosed(ctx, lk)
}

// observeAcquired tells the hook, if any, that lk was obtained by a call
// that started at start, if it was. Deferred: it reads lk when the call
// returns.
func (l *Locker) observeAcquired(ctx context.Context, lk *Lock, start time.Time) {
	if l.hook == nil || !l.wd.holding(&lk.lease) {
		return
	}
	o := Observation{Kind: LockAcquired, Name: lk.name, Shared: lk.shared, Fence: lk.fence,
		Latency: time.Since(start), HandedOff: lk.handedOff}
	if !lk.waitFrom.IsZero() {
		o.Wait = time.Since(lk.waitFrom)
	}
	l.hook.Observe(ctx, o)
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
	case ok && err == nil:
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
func (l *Locker) Do(ctx context.Context, key string, fn func(ctx context.Context) error, opts ...LockOption) error {
	return l.do(ctx, key, fn, opts, false)
}

func (l *Locker) do(ctx context.Context, key string, fn func(ctx context.Context) error, opts []LockOption, shared bool) (err error) {
	if fn == nil {
		return fmt.Errorf("%w: nil function", ErrInvalidArgument)
	}
	cfg, err := l.lockConfig(key, opts, shared)
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
