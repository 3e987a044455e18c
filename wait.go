package redlease

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// wakeHub is a Locker's one subscription to release notifications, shared
// by all its waiters, and their first-come-first-served queues per key. A
// release wakes only the head of its key's queue, so it costs one attempt
// per Locker rather than one per waiter. The subscription holds its own
// connection, so waiting never takes connections from the pool that
// renewals use.
type wakeHub struct {
	l       *Locker
	mu      sync.Mutex
	queues  map[string][]*waiter // by lock key; a key with no waiter has no entry
	run     *subscription        // nil while nobody waits
	idle    *time.Timer          // ends the subscription when nobody waits
	renewed time.Time            // when suspect last replaced the subscription
	closed  bool
	wg      sync.WaitGroup
	// cleanups counts best-effort releases in flight, for tests to wait
	// on; like renewal calls, close does not wait for them.
	cleanups sync.WaitGroup
}

type waiter struct {
	key     string
	lk      *Lock         // the lease this waiter will hold
	wake    chan struct{} // buffered: a release seen while busy is not missed
	granted chan *Lock    // a hand-off's outcome: the lease, or nil to try again
	handing bool          // taken out of the queue by a releaser; guarded by mu
	trying  bool          // making its own attempt: not to be handed to; guarded by mu
	unsure  bool          // a hand-off to it went unanswered: its token may be in Redis, so it is never handed to again; guarded by mu
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// waiting reports whether this Locker has waiters queued on key.
func (h *wakeHub) waiting(key string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.queues[key]) > 0
}

// beginAcquire reports whether w, at the head of its queue, may try for
// the lock itself; until endAcquire no releaser hands the lock to it, so
// the two never race for one lease.
func (h *wakeHub) beginAcquire(w *waiter) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	q := h.queues[w.key]
	w.trying = len(q) > 0 && q[0] == w
	return w.trying
}

// endAcquire ends w's own attempt. If the attempt decided w's Obtain (done:
// it got the lock, or an error), w leaves its queue in this same critical
// section: a waiter whose token may be in Redis is never at the head with
// trying unset, so no releaser can hand it the lease it already holds.
func (h *wakeHub) endAcquire(w *waiter, done, acquired bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	w.trying = false
	if done {
		h.remove(w, acquired)
	}
}

// join queues a waiter on key and returns once the subscription is live (or
// has failed, in which case the waiter falls back to timed retries).
func (h *wakeHub) join(ctx context.Context, lk *Lock) (*waiter, error) {
	key := lk.rkey
	w := &waiter{key: key, lk: lk, wake: make(chan struct{}, 1), granted: make(chan *Lock, 1)}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, ErrClosed
	}
	h.queues[key] = append(h.queues[key], w)
	if h.idle != nil {
		h.idle.Stop()
		h.idle = nil
	}
	if h.run == nil {
		h.run = &subscription{stop: make(chan struct{}), ready: make(chan struct{})}
		h.wg.Add(1)
		go h.read(h.run)
	}
	ready := h.run.ready
	h.mu.Unlock()
	select {
	case <-ready:
		return w, nil
	case <-ctx.Done():
		h.leave(w, false)
		return nil, ctx.Err()
	}
}

// leave dequeues w. A head that leaves without the lock passes its turn on.
func (h *wakeHub) leave(w *waiter, acquired bool) {
	h.mu.Lock()
	var unwanted *Lock
	if w.handing {
		// A releaser is handing us the lock: wait for the outcome.
		h.mu.Unlock()
		unwanted = <-w.granted
		h.mu.Lock()
	} else {
		select {
		case unwanted = <-w.granted: // handed to us as we gave up
		default:
		}
	}
	unsure := w.unsure && !acquired
	h.remove(w, acquired)
	h.mu.Unlock()
	if unwanted != nil {
		_ = unwanted.Release(context.Background())
	}
	if unsure {
		// A hand-off whose reply was lost may have left our token in Redis:
		// give it back rather than hold the lock for a whole TTL, without
		// holding up the Obtain that gives up (the link may be down).
		h.cleanups.Go(func() { _, _ = h.l.store.release(context.Background(), &w.lk.lease) })
	}
}

// remove takes w out of its queue, passing its turn on if it was the head
// and leaves without the lock; with no waiters left, the subscription ends
// after idleLinger. Called with mu held.
func (h *wakeHub) remove(w *waiter, acquired bool) {
	q := h.queues[w.key]
	if i := slices.Index(q, w); i >= 0 {
		q = slices.Delete(q, i, i+1)
		if len(q) == 0 {
			delete(h.queues, w.key)
		} else {
			h.queues[w.key] = q
			if i == 0 && !acquired {
				signal(q[0].wake)
			}
		}
	}
	if len(h.queues) == 0 && h.run != nil && h.idle == nil {
		h.idle = time.AfterFunc(idleLinger, h.stopIfIdle)
	}
}

func (h *wakeHub) close() {
	h.mu.Lock()
	h.closed = true
	var ps *redis.PubSub
	if h.run != nil {
		ps = h.stopLocked()
	}
	if h.idle != nil {
		h.idle.Stop()
	}
	for _, q := range h.queues {
		for _, w := range q {
			signal(w.wake)
		}
	}
	h.mu.Unlock()
	if ps != nil {
		_ = ps.Close()
	}
	h.wg.Wait()
}

// wakeHead wakes the head waiter of key, if any.
func (h *wakeHub) wakeHead(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if q := h.queues[key]; len(q) > 0 {
		signal(q[0].wake)
	}
}

// wakeAll wakes the head waiter of every key: releases may have been
// missed.
func (h *wakeHub) wakeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, q := range h.queues {
		signal(q[0].wake)
	}
}
