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
	l      *Locker
	mu     sync.Mutex
	queues map[string][]*waiter // by lock key
	ps     *redis.PubSub        // nil while nobody waits
	stop   chan struct{}        // ends the current subscription's reader
	ready  chan struct{}        // closed once the subscription answered or failed
	idle   *time.Timer          // closes the subscription when nobody waits
	closed bool
	wg     sync.WaitGroup
}

type waiter struct {
	key  string
	wake chan struct{} // buffered: a release seen while busy is not missed
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

func (h *wakeHub) isHead(w *waiter) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	q := h.queues[w.key]
	return len(q) > 0 && q[0] == w
}

// join queues a waiter on key and returns once the subscription is live (or
// has failed, in which case the waiter falls back to timed retries).
func (h *wakeHub) join(ctx context.Context, key string) (*waiter, error) {
	w := &waiter{key: key, wake: make(chan struct{}, 1)}
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
	if h.ps == nil {
		h.ps = h.l.client.Subscribe(h.l.ctx) // no channel yet: does not dial
		h.stop, h.ready = make(chan struct{}), make(chan struct{})
		h.wg.Add(1)
		go h.read(h.ps, h.stop, h.ready)
	}
	ready := h.ready
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
	defer h.mu.Unlock()
	q := h.queues[w.key]
	i := slices.Index(q, w)
	if i < 0 {
		return
	}
	q = slices.Delete(q, i, i+1)
	if len(q) == 0 {
		delete(h.queues, w.key)
	} else {
		h.queues[w.key] = q
		if i == 0 && !acquired {
			signal(q[0].wake)
		}
	}
	if len(h.queues) == 0 && h.ps != nil && h.idle == nil {
		h.idle = time.AfterFunc(idleLinger, h.closeIfIdle)
	}
}

func (h *wakeHub) closeIfIdle() {
	h.mu.Lock()
	if len(h.queues) > 0 || h.ps == nil {
		h.mu.Unlock()
		return
	}
	ps := h.ps
	h.ps, h.idle = nil, nil
	close(h.stop)
	h.mu.Unlock()
	_ = ps.Close()
}

func (h *wakeHub) close() {
	h.mu.Lock()
	h.closed = true
	ps := h.ps
	if ps != nil {
		h.ps = nil
		close(h.stop)
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

// read dispatches release notifications until stop is closed.
func (h *wakeHub) read(ps *redis.PubSub, stop, ready chan struct{}) {
	defer h.wg.Done()
	answered := false
	answer := func() {
		if !answered {
			answered = true
			close(ready)
		}
	}
	defer answer()
	// An error here is seen again, and retried, by Receive below.
	_ = ps.Subscribe(h.l.ctx, h.l.channel)
	backoff := 10 * time.Millisecond
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		msg, err := ps.Receive(h.l.ctx)
		if err != nil {
			select {
			case <-stop:
				return
			default:
			}
			answer() // waiters poll until the subscription is back
			timer.Reset(backoff)
			select {
			case <-stop:
				return
			case <-timer.C:
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 10 * time.Millisecond
		switch m := msg.(type) {
		case *redis.Subscription:
			if answered {
				// Resubscribed after a reconnect: releases may have been missed.
				h.wakeHeads("", true)
			}
			answer()
		case *redis.Message:
			h.wakeHeads(m.Payload, false)
		}
	}
}
