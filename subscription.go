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

// subscription is one channel's reader goroutine and its state, guarded
// by waitlist.mu.
type subscription struct {
	channel string
	users   int           // waiters on the channel
	idle    *time.Timer   // ends the subscription once it has no users
	stop    chan struct{} // closed to end the reader
	ready   chan struct{} // closed once subscribed, or once that failed
	ps      *redis.PubSub // set by the reader
	renewed time.Time     // when suspect last replaced ps
}

// isReady reports whether sub has subscribed (or given up trying for now).
func (sub *subscription) isReady() bool {
	select {
	case <-sub.ready:
		return true
	default:
		return false
	}
}

func (h *waitlist) stopIfIdle(sub *subscription) {
	h.mu.Lock()
	var ps *redis.PubSub
	if sub.users == 0 && h.subs[sub.channel] == sub {
		ps = h.stopLocked(sub)
	}
	h.mu.Unlock()
	if ps != nil {
		_ = ps.Close()
	}
}

// stopLocked ends sub's reader; the caller closes the returned PubSub (if
// any) after unlocking, which unblocks the reader.
func (h *waitlist) stopLocked(sub *subscription) *redis.PubSub {
	delete(h.subs, sub.channel)
	if sub.idle != nil {
		sub.idle.Stop()
	}
	close(sub.stop)
	ps := sub.ps
	sub.ps = nil
	return ps
}

// suspect is told that a waiter's check found a grant whose notice never
// came, or found the waiter skipped as if its Locker were not listening.
// A subscription left on a server that no longer hears the releases (a
// Sentinel failover moves commands, not subscriptions) does that: so it is
// replaced, at most once per suspectEvery.
func (h *waitlist) suspect(sub *subscription) {
	h.mu.Lock()
	if sub.ps == nil || time.Since(sub.renewed) < suspectEvery {
		h.mu.Unlock()
		return
	}
	sub.renewed = time.Now()
	ps := sub.ps
	sub.ps = nil
	h.mu.Unlock()
	_ = ps.Close() // the reader sees the error and subscribes anew
}

// subscribe starts a subscription to channel. On a Cluster it is made on
// the master of the channel's slot, whatever the client's read routing:
// a release counts the listeners on its master only, and a waiter that
// heard a grant on a replica would take a lease the release skipped.
func (h *waitlist) subscribe(channel string) (*redis.PubSub, error) {
	cc, ok := h.l.client.(*redis.ClusterClient)
	if !ok {
		return h.l.client.Subscribe(h.l.ctx, channel), nil
	}
	master, err := cc.MasterForKey(h.l.ctx, channel)
	if err != nil {
		return nil, err
	}
	return master.SSubscribe(h.l.ctx, channel), nil
}

// read subscribes and delivers grant notices until sub.stop is closed. It
// replaces a subscription whose connection went silent.
func (h *waitlist) read(sub *subscription) {
	defer h.wg.Done()
	answered := false
	answer := func() {
		if !answered {
			answered = true
			close(sub.ready)
		}
	}
	defer answer()
	backoff := resubscribePause
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	pause := func() bool { // false when stopped
		timer.Reset(backoff)
		select {
		case <-sub.stop:
			return false
		case <-timer.C:
		}
		backoff = min(2*backoff, maxResubscribePause)
		return true
	}
	for {
		// Subscribing dials; it is done here, never under h.mu.
		ps, err := h.subscribe(sub.channel)
		if err != nil {
			answer() // waiters check on their timers until it is up
			if !pause() {
				return
			}
			continue
		}
		h.mu.Lock()
		stopped := h.subs[sub.channel] != sub
		if !stopped {
			sub.ps = ps
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
			case <-sub.stop:
				return // Close or idle: ps is closed by whoever stopped us
			default:
			}
			var nerr net.Error
			switch m := msg.(type) {
			case *redis.Subscription:
				if m.Count == 0 {
					// Unsubscribed by the server: a Cluster moved the slot
					// (a graceful failover, a migration). Subscribe anew.
					break receive
				}
				if answered {
					// Subscribed again after a reconnect: grants may have
					// been published to nobody meanwhile.
					h.l.logger().Info("redlease: waiters' channel subscribed again", "channel", sub.channel)
					h.checkAll(sub)
				}
				answer()
				silent = 0
			case *redis.Message:
				h.deliver(m.Payload)
				silent = 0
			case *redis.Pong:
				silent = 0
			case nil:
				// Not subscribed yet: that failed (a dial that timed
				// out, say), and waiters need not wait for it.
				answer()
				if errors.As(err, &nerr) && nerr.Timeout() {
					silent++
					_ = ps.Ping(h.l.ctx)
					continue
				}
				// Closed, suspected or failed: subscribe anew rather than
				// let go-redis reconnect to the same node, which on a
				// Cluster may no longer be the slot's master.
				answer() // waiters check on their timers until it is back
				break receive
			}
			backoff = resubscribePause
		}
		// Silent through a ping, failed or suspected: start over on a new
		// connection (to the current master, for a failover or Cluster
		// client).
		h.l.logger().Warn("redlease: waiters' channel lost; subscribing again", "channel", sub.channel)
		h.mu.Lock()
		if sub.ps == ps {
			sub.ps = nil
		}
		h.mu.Unlock()
		_ = ps.Close()
		// Waiters check once subscribed again (see *redis.Subscription):
		// checking now, while the link may be down, would only fail.
		if !pause() {
			return
		}
	}
}
