package redlease

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strconv"
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
// holders. Check Fence at the resource where that matters.
//
// A Locker runs background goroutines only while it holds leases or has
// waiters, and they stop shortly after; Close stops them at once.
type Locker struct {
	client  redis.UniversalClient
	prefix  string
	channel string                  // release notifications; the message is the lock key
	slots   func(key string) string // groups keys that one script may touch together
	nodes   []redis.UniversalClient // independent masters of a quorum lock; nil for one Redis
	err     error                   // from a bad client or option, returned by every call

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
	l := &Locker{client: client, prefix: cfg.prefix, channel: cfg.prefix + ":released", err: cfg.err}
	if err := checkClient(client); err != nil {
		l.err = err
	}
	l.slots = slotsOf(client)
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.wd = newWatchdog(l.ctx, l.renewLocks)
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

// slotsOf tells which keys one script call may touch together on c.
func slotsOf(c redis.UniversalClient) func(key string) string {
	switch c.(type) {
	case *redis.Client:
		return func(string) string { return "" }
	case *redis.ClusterClient:
		return func(key string) string { return strconv.Itoa(int(slot(key))) }
	}
	return hashTag // a wrapper: only keys with the same hash tag surely live together
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
// client's own timeouts, and its answer is ignored. Obtain calls still
// waiting return ErrClosed. Held leases are no longer
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

// Lock is one lease on a named lock, obtained from a Locker. Its methods are
// safe for concurrent use.
type Lock struct {
	lease
	l        *Locker
	fkey     string // the fence counter, in the lease's slot
	fence    int64
	streak   int           // hand-offs in a row within this Locker that led to this lease
	replicas int           // WithReplicaAck
	wait     time.Duration // WithReplicaAck
}

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
// otherwise why Lost closed (an error that errors.Is ErrNotHeld or
// ErrClosed).
func (lk *Lock) Err() error {
	lk.l.wd.mu.Lock()
	defer lk.l.wd.mu.Unlock()
	return lk.cause
}

// TTL returns how long the lease has left in Redis, or 0 with a nil error
// when it is no longer ours.
func (lk *Lock) TTL(ctx context.Context) (time.Duration, error) {
	ms, err := lk.l.pttl(ctx, &lk.lease)
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
// ours, Refresh returns an error that errors.Is ErrNotHeld and Lost closes.
func (lk *Lock) Refresh(ctx context.Context, ttl time.Duration) error {
	return lk.l.wd.extend(&lk.lease, "refresh", "already released", ttl, func() (int64, error) {
		return lk.l.renew(ctx, &lk.lease, ttl)
	}, leaseGone)
}

// Release ends the lease if it is still ours and wakes the Locker's waiters
// on the key. If the lease expired or another holder has the lock now,
// Release changes nothing in Redis and returns an error that errors.Is
// ErrNotHeld, saying which. Either way renewal stops and Lost closes.
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
	if lk.l.nodes == nil {
		if w := lk.l.hub.takeForHandoff(lk.rkey, lk.streak); w != nil {
			return wasLost, lk.handOff(ctx, w)
		}
	}
	code, err := lk.l.releaseLease(ctx, &lk.lease)
	if err != nil {
		return wasLost, fmt.Errorf("redlease: release %q (the lease ends by its TTL): %w", lk.name, err)
	}
	if code != 1 {
		return wasLost, leaseGone(lk.name, code)
	}
	return wasLost, nil
}

// handOff passes the lock straight to a waiter of this Locker in one
// script: the waiter holds it when Release returns, one round trip after
// Release began, and no other waiter is woken for nothing.
//
// Hand-off protocol (see also wakeHub):
//   - A waiter's token can be in Redis only after a hand-off script to it
//     ran, or after its own acquire ran.
//   - A releaser hands only to a waiter it took out of the queue
//     (takeForHandoff), and only to one whose token cannot be in Redis: not
//     while the waiter makes its own attempt (trying), nor after that
//     attempt decided its Obtain (it has left the queue in the same critical
//     section), nor after a hand-off to it went unanswered (unsure: it tries
//     for itself, and its acquire finds its own token if the script ran).
//   - So the script's holder == next-token branch is reached only by this
//     same call run twice (go-redis resending after a lost reply).
func (lk *Lock) handOff(ctx context.Context, w *waiter) error {
	next := w.lk
	start := time.Now()
	res, err := handoffScript.Run(ctx, lk.l.client, []string{lk.rkey, lk.fkey}, lk.token, next.token, next.ttl.Milliseconds()).Int64Slice()
	if err == nil && len(res) != 2 {
		err = fmt.Errorf("unexpected reply %v", res)
	}
	if err != nil {
		// The script may have run: the waiter acquires for itself, which
		// finds its token if so.
		lk.l.hub.handedOff(w, nil, true)
		return fmt.Errorf("redlease: release %q by hand-off to a waiter (the waiter tries for itself; if the lease was not handed over it ends by its TTL): %w", lk.name, err)
	}
	if res[0] != 1 {
		lk.l.hub.handedOff(w, nil, false) // the waiter tries for itself
		return leaseGone(lk.name, res[1])
	}
	next.fence = res[1]
	next.streak = lk.streak + 1
	lk.l.wd.add(&next.lease, start)
	lk.l.hub.handedOff(w, next, false)
	return nil
}

func notHeld(key, why string) error { return fmt.Errorf("%w: %q: %s", ErrNotHeld, key, why) }

// leaseGone turns a script's "not ours" code into an error.
func leaseGone(key string, code int64) error {
	if code == 0 {
		return notHeld(key, "lease expired")
	}
	return notHeld(key, "held by another")
}

func (l *Locker) newLock(key string, cfg lockConfig, onLost context.CancelCauseFunc) *Lock {
	return &Lock{
		l: l, lease: newLease(key, l.lockKey(key), uuid.NewString(), cfg.ttl, cfg.watchdog, onLost),
		fkey:     l.fenceKey(key),
		replicas: cfg.replicas, wait: cfg.wait,
	}
}

// acquire makes one attempt. It returns ok, or the holder's remaining
// lease (negative when it has no TTL).
func (l *Locker) acquire(ctx context.Context, lk *Lock) (ok bool, pttl time.Duration, err error) {
	start := time.Now()
	var n int64
	switch {
	case l.nodes != nil:
		ok, n, err = l.acquireQuorum(ctx, lk, start)
	case lk.replicas > 0:
		ok, n, err = l.acquireAcked(ctx, lk)
	default:
		ok, n, err = acquireOn(ctx, l.client, lk)
	}
	if err != nil {
		return false, 0, fmt.Errorf("redlease: obtain %q: %w", lk.name, err)
	}
	if !ok {
		return false, time.Duration(n) * time.Millisecond, nil
	}
	lk.fence = n
	l.wd.add(&lk.lease, start)
	return true, 0, nil
}

// acquireOn runs the acquire script on one Redis: ok and the fence, or the
// holder's remaining milliseconds.
func acquireOn(ctx context.Context, c redis.UniversalClient, lk *Lock) (bool, int64, error) {
	res, err := acquireScript.Run(ctx, c, []string{lk.rkey, lk.fkey}, lk.token, lk.ttl.Milliseconds()).Int64Slice()
	if err == nil && len(res) != 2 {
		err = fmt.Errorf("unexpected reply %v", res)
	}
	if err != nil {
		return false, 0, err
	}
	return res[0] == 1, res[1], nil
}

// releaseOn runs the release script on one Redis: 1 released, 0 no lease,
// -1 held by another.
func (l *Locker) releaseOn(ctx context.Context, c redis.UniversalClient, ls *lease) (int64, error) {
	return releaseScript.Run(ctx, c, []string{ls.rkey}, ls.token, l.channel).Int64()
}

// renewOn extends one lease on one Redis; codes as releaseOn.
func renewOn(ctx context.Context, c redis.UniversalClient, ls *lease, ttl time.Duration) (int64, error) {
	codes, err := renewScript.Run(ctx, c, []string{ls.rkey}, ls.token, ttl.Milliseconds()).Int64Slice()
	if err == nil && len(codes) != 1 {
		err = fmt.Errorf("unexpected reply %v", codes)
	}
	if err != nil {
		return 0, err
	}
	return codes[0], nil
}

// pttlOn reads a lease's remaining milliseconds on one Redis, negative when
// it is not ours.
func pttlOn(ctx context.Context, c redis.UniversalClient, ls *lease) (int64, error) {
	return pttlScript.Run(ctx, c, []string{ls.rkey}, ls.token).Int64()
}

func (l *Locker) releaseLease(ctx context.Context, ls *lease) (int64, error) {
	if l.nodes != nil {
		return l.releaseQuorum(ctx, ls)
	}
	return l.releaseOn(ctx, l.client, ls)
}

func (l *Locker) renew(ctx context.Context, ls *lease, ttl time.Duration) (int64, error) {
	if l.nodes != nil {
		return l.renewQuorum(ctx, ls, ttl)
	}
	return renewOn(ctx, l.client, ls, ttl)
}

func (l *Locker) pttl(ctx context.Context, ls *lease) (int64, error) {
	if l.nodes != nil {
		return l.pttlQuorum(ctx, ls)
	}
	return pttlOn(ctx, l.client, ls)
}

// lockConfig applies a call's options.
func (l *Locker) lockConfig(opts []LockOption) (lockConfig, error) {
	cfg, err := newLockConfig(opts)
	if err == nil && cfg.replicas > 0 && l.nodes != nil {
		err = fmt.Errorf("%w: WithReplicaAck does not apply to a quorum Locker", ErrInvalidArgument)
	}
	return cfg, err
}

func notObtained(key string, pttl time.Duration) error {
	if pttl < 0 {
		return fmt.Errorf("%w: %q is held by another, with no expiry", ErrNotObtained, key)
	}
	return fmt.Errorf("%w: %q is held by another for up to %v", ErrNotObtained, key, pttl)
}

// TryObtain makes one attempt to take the lock. If another holds it, the
// error errors.Is ErrNotObtained. The lease lasts WithTTL (default 30s) and
// is renewed by the watchdog until Release unless WithoutWatchdog is given.
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
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, notObtained(key, pttl)
	}
	return lk, nil
}

// Obtain takes the lock, waiting while another holds it until ctx ends or
// the retry strategy gives up; then the error errors.Is ErrNotObtained, and
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
	attempted := !mayRetry || !l.hub.waiting(lk.rkey)
	if attempted {
		ok, p, err := l.attempt(ctx, lk)
		if ok || err != nil || !mayRetry {
			return l.attempted(ctx, lk, ok, p, err)
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
		if retry > 1 || !attempted {
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
		if !l.hub.beginAttempt(w) {
			continue
		}
		ok, p, err := l.attempt(ctx, lk)
		// An attempt that decides Obtain leaves the queue at once, so no
		// releaser can take this waiter for a hand-off after it got the
		// lock (or an error) by itself.
		l.hub.endAttempt(w, ok || err != nil, ok)
		if ok && retry > 1 && !woken {
			l.hub.suspect() // freed, yet no wake-up came
		}
		if ok || err != nil {
			acquired = ok
			return l.attempted(ctx, lk, ok, p, err)
		}
		pttl = p
	}
}

// attempt is acquire, for a Locker that may have been closed meanwhile: a
// lease obtained after Close is given back.
func (l *Locker) attempt(ctx context.Context, lk *Lock) (bool, time.Duration, error) {
	ok, pttl, err := l.acquire(ctx, lk)
	if ok {
		if err := l.keepUnlessClosed(ctx, lk); err != nil {
			return false, 0, err
		}
	}
	return ok, pttl, err
}

// keepUnlessClosed gives back a lease obtained after Close.
func (l *Locker) keepUnlessClosed(ctx context.Context, lk *Lock) error {
	if l.closed.Load() {
		_ = lk.Release(context.WithoutCancel(ctx))
		return ErrClosed
	}
	return nil
}

// attempted turns an attempt's outcome into Obtain's result: an error that
// came with the context's end is the context's.
func (l *Locker) attempted(ctx context.Context, lk *Lock, ok bool, pttl time.Duration, err error) (*Lock, error) {
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

func gaveUp(key string, cause error) error {
	return fmt.Errorf("%w: obtain %q: %w", ErrNotObtained, key, cause)
}

// Do obtains the lock (as Obtain, with the watchdog on whatever the
// options say), runs fn, and releases the lock, even if fn panics. fn's
// context is cancelled the moment the lease is lost; Do then returns an
// error that errors.Is ErrNotHeld, joined with fn's own error. A Redis
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
