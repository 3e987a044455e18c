package redlease

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

// subscriptionLinger is how long a subscription outlives its last waiter,
// so that a Locker whose waits come seconds apart keeps listening: a fresh
// subscription costs a round trip before the waiter's first check.
const subscriptionLinger = time.Second

// waitlist is a Locker's side of the waiter queues kept in Redis: its
// waiters, by token, and the subscriptions their grants arrive on. A
// release that finds waiters queued hands the lease to the oldest one still
// listening and publishes "<fence> <token>" on that waiter's channel only,
// so each grant wakes one waiter of one Locker, whatever the number waiting.
//
// A Locker listens on one channel; on a Redis Cluster, on one shard channel
// per hash slot it has waiters in, which lives on the lock's own node, so
// grants never cross the cluster bus. A subscription holds a connection of
// its own and ends subscriptionLinger after its last waiter left.
type waitlist struct {
	l       *Locker
	node    *node
	id      string // names this Locker's channels
	cluster bool   // shard channels (SSUBSCRIBE; releases SPUBLISH)

	mu      sync.Mutex
	waiters map[string]*waiter       // by token
	subs    map[string]*subscription // by channel
	closed  bool
	wg      sync.WaitGroup
	// cleanups counts the queue exits of waiters that gave up, for tests
	// to wait on; like renewal calls, close does not wait for them.
	cleanups sync.WaitGroup
}

// waiter is one Obtain queued in Redis.
type waiter struct {
	lk       *Lock
	entry    string // its member in the lock's queue (see lua/lock.lua)
	sub      *subscription
	granted  chan int64    // buffered: the fence of a lease handed to it
	check    chan struct{} // buffered: grants may have been missed; check Redis now
	grantTTL time.Duration // how long a lease handed to it lasts until renewed
	start    time.Time     // when its first attempt was sent: before any grant to it
}

func newWaitlist(l *Locker, n *node) *waitlist {
	_, cluster := l.client.(*redis.ClusterClient)
	return &waitlist{
		l: l, node: n, id: uuid.NewString(), cluster: cluster,
		waiters: make(map[string]*waiter), subs: make(map[string]*subscription),
	}
}

// channel is where this Locker hears of grants on lock name.
func (h *waitlist) channel(name string) string {
	if h.cluster {
		return h.l.prefix + ":{" + slotTag(nameSlot(name)) + "}:grant:" + h.id
	}
	return h.l.prefix + ":grant:" + h.id
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// join registers lk as a waiter and starts its channel's subscription if
// needed. The waiter may queue in Redis once the subscription is ready.
func (h *waitlist) join(lk *Lock, grantTTL time.Duration) (*waiter, error) {
	ch := h.channel(lk.name)
	ms := strconv.FormatInt(grantTTL.Milliseconds(), 10)
	if lk.shared {
		ms += ":" + strconv.FormatInt(lk.limit, 10)
	}
	w := &waiter{
		lk: lk, entry: ms + " " + ch + " " + lk.token, grantTTL: grantTTL,
		granted: make(chan int64, 1), check: make(chan struct{}, 1),
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	sub := h.subs[ch]
	if sub == nil {
		sub = &subscription{channel: ch, stop: make(chan struct{}), ready: make(chan struct{})}
		h.subs[ch] = sub
		h.wg.Add(1)
		go h.read(sub)
	}
	if sub.idle != nil {
		sub.idle.Stop()
		sub.idle = nil
	}
	sub.users++
	w.sub = sub
	h.waiters[lk.token] = w
	return w, nil
}

// leave forgets w. If it had queued in Redis without getting the lock, its
// entry is removed there, and a lease granted to it meanwhile passes on,
// by a call that does not hold up the Obtain that gives up.
func (h *waitlist) leave(w *waiter, queued bool) {
	h.mu.Lock()
	delete(h.waiters, w.lk.token)
	sub := w.sub
	sub.users--
	if sub.users == 0 && sub.idle == nil && h.subs[sub.channel] == sub {
		sub.idle = time.AfterFunc(subscriptionLinger, func() { h.stopIfIdle(sub) })
	}
	h.mu.Unlock()
	if queued {
		h.cleanups.Go(func() {
			_, _ = h.node.release(context.Background(), w.lk, &w.entry)
		})
	}
}

// deliver hands a grant notice ("<fence> <token> <lock key>") to its
// waiter. A grant to a token nobody waits on or holds (a waiter whose
// queue entry outlived it: its exit's call failed, or a resent attempt
// left it) passes the lock on at once instead of holding it up for the
// grant ttl.
func (h *waitlist) deliver(payload string) {
	f, rest, _ := strings.Cut(payload, " ")
	token, lockKey, _ := strings.Cut(rest, " ")
	fence, err := strconv.ParseInt(f, 10, 64)
	if err != nil || token == "" {
		return
	}
	h.mu.Lock()
	w := h.waiters[token]
	if w != nil {
		select {
		case w.granted <- fence:
		default: // one notice per waiter: a check sorts out the rest
		}
	}
	h.mu.Unlock()
	if w == nil && !h.l.wd.holds(token) {
		h.passOn(token, lockKey)
	}
}

// passOn releases a lease granted to a token nobody waits on, handing it
// to the next waiter; it does nothing if the lease is no longer token's.
func (h *waitlist) passOn(token, lockKey string) {
	base, name, ok := strings.Cut(lockKey, "}:lock:")
	if !ok {
		return
	}
	lk := &Lock{lease: lease{name: name, rkey: lockKey, token: token}}
	lk.keyList = [4]string{lockKey, base + "}:fence", base + "}:waiters:" + name, base + "}:shared:" + name}
	h.cleanups.Go(func() { _, _ = h.node.release(context.Background(), lk, nil) })
}

// checkAll asks every waiter on sub to check Redis: notices may have been
// missed while it was not subscribed.
func (h *waitlist) checkAll(sub *subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range h.waiters {
		if w.sub == sub {
			signal(w.check)
		}
	}
}

func (h *waitlist) close() {
	h.mu.Lock()
	h.closed = true
	var ps []*redis.PubSub
	for _, sub := range h.subs {
		if p := h.stopLocked(sub); p != nil {
			ps = append(ps, p)
		}
	}
	for _, w := range h.waiters {
		signal(w.check)
	}
	h.mu.Unlock()
	for _, p := range ps {
		_ = p.Close()
	}
	h.wg.Wait()
}
