package redlease

import (
	"context"
	"fmt"
	"time"
)

// maxHandoffStreak bounds how many times in a row a Locker hands a lock to
// its own waiters, so that waiters of other Lockers get their turn. The
// count travels with the lease (Lock.streak), so the hub keeps no state for
// a key nobody waits on.
const maxHandoffStreak = 8

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
	res, err := ints(run(ctx, lk.l.client, handoffScript, []string{lk.rkey, lk.fkey}, lk.token, next.token, next.ttl.Milliseconds()), 2)
	if err != nil {
		// The script may have run: the waiter acquires for itself, which
		// finds its token if so.
		lk.l.hub.handedOff(w, nil, true)
		return fmt.Errorf("redlease: release %q by hand-off to a waiter (the waiter tries for itself; if the lease was not handed over it ends by its TTL): %w", lk.name, err)
	}
	if res[0] != codeOK {
		lk.l.hub.handedOff(w, nil, false) // the waiter tries for itself
		return leaseGone(lk.name, res[1])
	}
	next.fence = res[1]
	next.streak = lk.streak + 1
	lk.l.wd.add(&next.lease, start)
	lk.l.hub.handedOff(w, next, false)
	return nil
}

// takeForHandoff takes the head waiter on key out of the queue for a
// releaser to hand the lock to, unless the Locker cannot hand off (a
// quorum), the head waits for replica acks, the releasing lease ends a
// streak of hand-offs (then a real release, heard by every Locker,
// follows) or the head's token may be in Redis (trying, unsure: see
// Lock.handOff); the releaser must then call handedOff.
func (h *wakeHub) takeForHandoff(key string, streak int) *waiter {
	h.mu.Lock()
	defer h.mu.Unlock()
	q := h.queues[key]
	if !h.l.handsOff || len(q) == 0 || q[0].lk.replicas > 0 || q[0].trying || q[0].unsure || streak >= maxHandoffStreak {
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
