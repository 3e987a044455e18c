package redlease

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// pingEvery is how often a quiet subscription is checked: a connection that
// died without a word (half-open) is replaced after two silent intervals.
const pingEvery = 15 * time.Second

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

// subscription is one run of the reader goroutine.
type subscription struct {
	stop  chan struct{} // closed to end the run
	ready chan struct{} // closed once subscribed, or once that failed
	ps    *redis.PubSub // set by the reader, under wakeHub.mu
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

// maxHandoffStreak bounds how many times in a row a Locker hands a lock to
// its own waiters, so that waiters of other Lockers get their turn. The
// count travels with the lease (Lock.streak), so the hub keeps no state for
// a key nobody waits on.
const maxHandoffStreak = 8

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

// beginAttempt reports whether w, at the head of its queue, may try for
// the lock itself; until endAttempt no releaser hands the lock to it, so
// the two never race for one lease.
func (h *wakeHub) beginAttempt(w *waiter) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	q := h.queues[w.key]
	w.trying = len(q) > 0 && q[0] == w
	return w.trying
}

// endAttempt ends w's own attempt. If the attempt decided w's Obtain (done:
// it got the lock, or an error), w leaves its queue in this same critical
// section: a waiter whose token may be in Redis is never at the head with
// trying unset, so no releaser can hand it the lease it already holds.
func (h *wakeHub) endAttempt(w *waiter, done, acquired bool) {
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

// takeForHandoff takes the head waiter on key out of the queue for a
// releaser to hand the lock to, unless the releasing lease ends a streak
// of hand-offs (then a real release, heard by every Locker, follows) or
// the head's token may be in Redis (trying, unsure: see Lock.handOff); the
// releaser must then call handedOff.
func (h *wakeHub) takeForHandoff(key string, streak int) *waiter {
	h.mu.Lock()
	defer h.mu.Unlock()
	q := h.queues[key]
	if len(q) == 0 || q[0].lk.replicas > 0 || q[0].trying || q[0].unsure || streak >= maxHandoffStreak {
		return nil
	}
	w := q[0]
	w.handing = true
	if len(q) == 1 {
		delete(h.queues, key)
	} else {
		h.queues[key] = q[1:]
	}
	return w
}

// handedOff delivers a hand-off's outcome; a failed one puts the waiter
// back at the head of its queue, to try for itself. unsure says the
// script may have run though no reply came.
func (h *wakeHub) handedOff(w *waiter, lk *Lock, unsure bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if lk == nil {
		w.unsure = w.unsure || unsure
		h.queues[w.key] = append([]*waiter{w}, h.queues[w.key]...)
	}
	// Sent under mu, before handing clears, so leave sees one or the other.
	w.granted <- lk // buffered: never blocks
	w.handing = false
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
		h.cleanups.Go(func() { _, _ = h.l.releaseOn(context.Background(), h.l.client, &w.lk.lease) })
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

func (h *wakeHub) stopIfIdle() {
	h.mu.Lock()
	h.idle = nil
	var ps *redis.PubSub
	if len(h.queues) == 0 && h.run != nil {
		ps = h.stopLocked()
	}
	h.mu.Unlock()
	if ps != nil {
		_ = ps.Close()
	}
}

// stopLocked ends the current run; the caller closes the returned PubSub
// (if any) after unlocking, which unblocks the reader.
func (h *wakeHub) stopLocked() *redis.PubSub {
	run := h.run
	h.run = nil
	close(run.stop)
	return run.ps
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

// isStale reports whether ps is no longer the run's subscription.
func (h *wakeHub) isStale(run *subscription, ps *redis.PubSub) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return run.ps != ps
}

// suspect is told that a waiter got a lock that was freed without a
// wake-up. A lease that simply expired does that, but so does a
// subscription left on a server that no longer hears the releases (a
// Sentinel failover moves commands, not subscriptions): so the
// subscription is replaced, at most once a second.
func (h *wakeHub) suspect() {
	h.mu.Lock()
	if h.run == nil || h.run.ps == nil || time.Since(h.renewed) < time.Second {
		h.mu.Unlock()
		return
	}
	h.renewed = time.Now()
	ps := h.run.ps
	h.run.ps = nil
	h.mu.Unlock()
	_ = ps.Close() // the reader sees the error and subscribes anew
}

// wakeHeads wakes the head waiter of every key, or of one key.
func (h *wakeHub) wakeHeads(key string, all bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !all {
		if q := h.queues[key]; len(q) > 0 {
			signal(q[0].wake)
		}
		return
	}
	for _, q := range h.queues {
		signal(q[0].wake)
	}
}

// read subscribes and dispatches release notifications until run.stop is
// closed. It replaces a subscription whose connection went silent.
func (h *wakeHub) read(run *subscription) {
	defer h.wg.Done()
	answered := false
	answer := func() {
		if !answered {
			answered = true
			close(run.ready)
		}
	}
	defer answer()
	backoff := 10 * time.Millisecond
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		// Subscribe dials; it is called here, never under h.mu.
		ps := h.l.client.Subscribe(h.l.ctx, h.l.channel)
		h.mu.Lock()
		stopped := h.run != run
		if !stopped {
			run.ps = ps
		}
		h.mu.Unlock()
		if stopped {
			_ = ps.Close()
			return
		}
		silent := 0
	receive:
		for silent < 2 {
			msg, err := ps.ReceiveTimeout(h.l.ctx, pingEvery)
			select {
			case <-run.stop:
				return // Close or idle: ps is closed by whoever stopped us
			default:
			}
			var nerr net.Error
			switch m := msg.(type) {
			case *redis.Subscription:
				if answered {
					// Resubscribed after a reconnect: releases may have been missed.
					h.wakeHeads("", true)
				}
				answer()
				silent = 0
			case *redis.Message:
				h.wakeHeads(m.Payload, false)
				silent = 0
			case *redis.Pong:
				silent = 0
			case nil:
				if errors.As(err, &nerr) && nerr.Timeout() {
					silent++
					_ = ps.Ping(h.l.ctx)
					continue
				}
				answer() // waiters poll until the subscription is back
				timer.Reset(backoff)
				select {
				case <-run.stop:
					return
				case <-timer.C:
				}
				backoff = min(2*backoff, time.Second)
				if h.isStale(run, ps) {
					break receive // replaced on purpose: subscribe anew
				}
				continue
			}
			backoff = 10 * time.Millisecond
		}
		// Silent through a ping, or suspected: start over on a new
		// connection (to the current master, for a failover client).
		h.mu.Lock()
		if h.run == run {
			run.ps = nil
		}
		h.mu.Unlock()
		_ = ps.Close()
		h.wakeHeads("", true)
	}
}
