package redlease

import (
	"errors"
	"net"
	"time"

	"github.com/redis/go-redis/v9"
)

// pingEvery is how often a quiet subscription is checked: a connection that
// died without a word (half-open) is replaced after two silent intervals.
const pingEvery = 15 * time.Second

const (
	// resubscribePause is the first pause before subscribing again after
	// an error, doubling up to maxResubscribePause.
	resubscribePause    = 10 * time.Millisecond
	maxResubscribePause = time.Second
	// suspectEvery bounds how often suspect replaces the subscription.
	suspectEvery = time.Second
)

// subscription is one run of the reader goroutine.
type subscription struct {
	stop  chan struct{} // closed to end the run
	ready chan struct{} // closed once subscribed, or once that failed
	ps    *redis.PubSub // set by the reader, under wakeHub.mu
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
// subscription is replaced, at most once per suspectEvery.
func (h *wakeHub) suspect() {
	h.mu.Lock()
	if h.run == nil || h.run.ps == nil || time.Since(h.renewed) < suspectEvery {
		h.mu.Unlock()
		return
	}
	h.renewed = time.Now()
	ps := h.run.ps
	h.run.ps = nil
	h.mu.Unlock()
	_ = ps.Close() // the reader sees the error and subscribes anew
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
	backoff := resubscribePause
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
					h.wakeAll()
				}
				answer()
				silent = 0
			case *redis.Message:
				h.wakeHead(m.Payload)
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
				backoff = min(2*backoff, maxResubscribePause)
				if h.isStale(run, ps) {
					break receive // replaced on purpose: subscribe anew
				}
				continue
			}
			backoff = resubscribePause
		}
		// Silent through a ping, or suspected: start over on a new
		// connection (to the current master, for a failover client).
		h.mu.Lock()
		if h.run == run {
			run.ps = nil
		}
		h.mu.Unlock()
		_ = ps.Close()
		h.wakeAll()
	}
}
