package redlease

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// idleLinger is how long background goroutines outlive their last
	// lease or waiter, so that a busy Locker does not start one per lock.
	idleLinger = 100 * time.Millisecond
	// renewBatchSize caps the keys one renewal script call extends.
	renewBatchSize = 100
)

// lease is what the watchdog tracks: a lock's lease or a message's claim.
//
// The deadline rule: the client's deadline is never later than the
// earliest end that any write in flight, or the last write Redis applied,
// can have set. A write (a renewal, Refresh or Extend) may be applied at
// any moment until its reply arrives, so sending one lowers the deadline
// to the end it asks for; once no write is pending and one of them was
// confirmed, Redis holds the end set by one of them, so the deadline is
// the earliest of their ends. A write answered with an error may still
// reach Redis later (delivered late on a dead connection), after a longer
// write: from then on the client counts on the shorter of the two ttls.
type lease struct {
	name   string // for errors: the lock's key or the message's id
	rkey   string // the lease's key in Redis (a message's id for claims)
	shard  int    // for claims: the index of the message's queue shard
	token  string
	lost   chan struct{}
	onLost context.CancelCauseFunc // cancels the holder's context, if any

	// Guarded by the watchdog's mu.
	ttl       time.Duration // what the next renewal asks for: the last Refresh's
	failedTTL time.Duration // the shortest ttl of a write answered with an error; 0: none
	renew     bool
	deadline  time.Time // the lease has surely ended by the client's clock
	next      time.Time // next renewal
	inflight  bool      // a watchdog renewal is in flight
	pending   int       // writes sent and not yet answered
	earliest  time.Time // the earliest end asked for since pending was last 0
	confirmed bool      // one of those writes was applied
	crossed   bool      // two of those writes were in flight at once
	tracked   bool      // in the watchdog's set
	ended     bool      // lost has closed
	released  bool      // the holder let go
	cause     error     // why lost closed
	endedAt   time.Time // when lost closed, for tests' histories
}

func newLease(name, rkey, token string, ttl time.Duration, renew bool, onLost context.CancelCauseFunc) lease {
	return lease{name: name, rkey: rkey, token: token, lost: make(chan struct{}), onLost: onLost, ttl: ttl, renew: renew}
}

// span is how long after a write asking for ttl the client counts on the
// lease: ttl, or less if a write that failed asked for less (see lease).
func (lk *lease) span(ttl time.Duration) time.Duration {
	if lk.failedTTL > 0 && lk.failedTTL < ttl {
		return lk.failedTTL
	}
	return ttl
}

// sending notes a write, sent at sent, that asks for the lease to end ttl
// later. Called with the watchdog's mu held.
func (lk *lease) sending(sent time.Time, ttl time.Duration) {
	d := lk.span(ttl)
	end := sent.Add(d - drift(d))
	if lk.pending == 0 {
		lk.earliest, lk.confirmed, lk.crossed = end, false, false
	} else {
		lk.earliest, lk.crossed = earlier(lk.earliest, end), true
	}
	lk.pending++
	lk.deadline = earlier(lk.deadline, end)
}

// answered notes the reply to a write that asked for ttl: applied when
// Redis confirmed it, failed when an error came instead. Called with the
// watchdog's mu held.
func (lk *lease) answered(ttl time.Duration, applied, failed bool) {
	lk.pending--
	lk.confirmed = lk.confirmed || applied
	if failed && (lk.failedTTL == 0 || ttl < lk.failedTTL) {
		lk.failedTTL = ttl
	}
	if applied {
		lk.next = time.Now().Add(lk.span(lk.ttl) / 3)
	}
	if lk.pending > 0 || !lk.confirmed {
		return
	}
	lk.deadline = lk.earliest
	if lk.crossed {
		// Redis may hold either end: renew at once to know which.
		lk.next = time.Now()
	}
}

// watchdog is one renewal loop shared by many leases: it renews every lease
// that wants it TTL/3 after its last renewal, batched into few script calls,
// and closes lost when a lease is gone or must have ended by the local clock.
type watchdog struct {
	ctx      context.Context // bounds renewal calls
	renewAll func(ctx context.Context, batch []renewal) ([]int64, []error)

	mu      sync.Mutex
	leases  map[*lease]struct{}
	running bool
	closed  bool
	wakeAt  time.Time     // when the loop will look again
	wake    chan struct{} // asks the loop to look now
	wg      sync.WaitGroup
	// calls counts renewal calls in flight, for tests to wait on. close
	// does not wait for them: a call stuck on a dead link ends by the
	// client's own timeouts, and its answer is ignored.
	calls sync.WaitGroup
}

func newWatchdog(ctx context.Context, renewAll func(context.Context, []renewal) ([]int64, []error)) watchdog {
	return watchdog{ctx: ctx, renewAll: renewAll, leases: make(map[*lease]struct{}), wake: make(chan struct{}, 1)}
}

// drift is subtracted from a lease's end by the local clock, so Lost closes
// no later than Redis expires the key even if the clocks run at slightly
// different rates.
func drift(ttl time.Duration) time.Duration { return ttl/100 + time.Millisecond }

// add tracks a lease obtained by a request sent at start.
func (w *watchdog) add(lk *lease, start time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	lk.deadline = start.Add(lk.ttl - drift(lk.ttl))
	lk.next = time.Now().Add(lk.ttl / 3)
	lk.tracked = true
	w.leases[lk] = struct{}{}
	if w.closed {
		w.endLocked(lk, fmt.Errorf("%w: lease on %q is not renewed", ErrClosed, lk.name))
		return
	}
	if !w.running {
		w.running = true
		w.wg.Add(1)
		go w.loop()
	} else if lk.due().Before(w.wakeAt) {
		w.signal()
	}
}

// due is when the loop must next look at the lease.
func (lk *lease) due() time.Time {
	if lk.renew && lk.next.Before(lk.deadline) {
		return lk.next
	}
	return lk.deadline
}

func (w *watchdog) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// endLocked stops tracking the lease and closes Lost; cause is nil for a
// clean release.
func (w *watchdog) endLocked(lk *lease, cause error) {
	if !lk.tracked {
		return
	}
	lk.tracked, lk.ended = false, true
	delete(w.leases, lk)
	lk.cause, lk.endedAt = cause, time.Now()
	close(lk.lost)
	if cause != nil && lk.onLost != nil {
		lk.onLost(cause)
	}
	if len(w.leases) == 0 {
		w.signal() // let the loop start its idle countdown
	}
}

func (w *watchdog) end(lk *lease, cause error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.endLocked(lk, cause)
}

// release marks the lease released; it reports whether it had been lost
// before and whether it had been released already.
func (w *watchdog) release(lk *lease) (wasLost, already bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	wasLost, already = lk.cause != nil, lk.released
	lk.released = true
	w.endLocked(lk, nil)
	return wasLost, already
}

func (w *watchdog) isReleased(lk *lease) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return lk.released
}

// extend runs one explicit renewal of ls (Refresh, Extend) through send,
// keeping the watchdog in step: codes other than 1 end the lease, with the
// error gone makes of them. A lease already lost stays lost: extend
// returns why, without sending.
func (w *watchdog) extend(ls *lease, verb, released string, ttl time.Duration, send func() (int64, error), gone func(name string, code int64) error) error {
	if ttl < time.Millisecond {
		return fmt.Errorf("%w: %s %q: ttl %v must be at least 1ms", ErrInvalidArgument, verb, ls.name, ttl)
	}
	w.mu.Lock()
	switch {
	case ls.released:
		w.mu.Unlock()
		return notHeld(ls.name, released)
	case ls.ended:
		w.mu.Unlock()
		return ls.cause
	}
	ls.ttl = ttl // later renewals ask for the new ttl
	ls.sending(time.Now(), ttl)
	w.mu.Unlock()

	code, err := send()

	w.mu.Lock()
	ls.answered(ttl, err == nil && code == 1, err != nil)
	if ls.tracked && ls.due().Before(w.wakeAt) {
		w.signal()
	}
	ended, cause := ls.ended, ls.cause
	w.mu.Unlock()
	switch {
	case err != nil:
		return fmt.Errorf("redlease: %s %q: %w", verb, ls.name, err)
	case code != 1:
		err := gone(ls.name, code)
		w.end(ls, err)
		return err
	case ended && cause != nil:
		return cause // lost while the call was in flight
	}
	return nil
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// close ends every lease and stops the loop; renewal calls in flight are
// not waited for (see calls).
func (w *watchdog) close() {
	w.mu.Lock()
	w.closed = true
	for lk := range w.leases {
		w.endLocked(lk, fmt.Errorf("%w: lease on %q is not renewed", ErrClosed, lk.name))
	}
	w.mu.Unlock()
	w.signal()
	w.wg.Wait()
}

// renewal is one lease in a batch, with the TTL the batch asks for.
type renewal struct {
	lk  *lease
	ttl time.Duration
}

func (w *watchdog) loop() {
	defer w.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var idleSince time.Time
	for {
		now := time.Now()
		w.mu.Lock()
		if w.closed {
			w.running = false
			w.mu.Unlock()
			return
		}
		var batch []renewal
		wakeAt := now.Add(time.Hour)
		for lk := range w.leases {
			if !now.Before(lk.deadline) {
				w.endLocked(lk, notHeld(lk.name, "no renewal succeeded before the lease ended"))
				continue
			}
			// Renew a little early to share a script call with other leases.
			if lk.renew && !lk.inflight && !lk.next.After(now.Add(lk.span(lk.ttl)/20)) {
				lk.inflight = true
				lk.sending(now, lk.ttl)
				batch = append(batch, renewal{lk, lk.ttl})
			}
			look := lk.deadline
			if !lk.inflight {
				look = lk.due()
			}
			if look.Before(wakeAt) {
				wakeAt = look
			}
		}
		if len(w.leases) == 0 {
			if idleSince.IsZero() {
				idleSince = now
			}
			if now.Sub(idleSince) >= idleLinger {
				w.running = false
				w.mu.Unlock()
				return
			}
			wakeAt = idleSince.Add(idleLinger)
		} else {
			idleSince = time.Time{}
		}
		w.wakeAt = wakeAt
		w.mu.Unlock()

		if len(batch) > 0 {
			w.calls.Add(1)
			go w.renew(batch)
		}
		timer.Reset(time.Until(wakeAt))
		select {
		case <-timer.C:
		case <-w.wake:
		}
	}
}

// renew runs one batch of renewals and records what Redis said.
func (w *watchdog) renew(batch []renewal) {
	defer w.calls.Done()
	codes, errs := w.renewAll(w.ctx, batch)
	now := time.Now()
	w.mu.Lock()
	for i, r := range batch {
		lk := r.lk
		lk.inflight = false
		lk.answered(r.ttl, errs[i] == nil && codes[i] == 1, errs[i] != nil)
		switch {
		case !lk.tracked:
		case errs[i] != nil:
			// Transient: retry soon; the deadline check ends the lease if
			// nothing gets through in time.
			lk.next = now.Add(min(max(lk.span(lk.ttl)/10, 5*time.Millisecond), time.Second))
		case codes[i] != 1:
			w.endLocked(lk, leaseGone(lk.name, codes[i]))
		}
	}
	w.mu.Unlock()
	w.signal()
}

// renewLocks extends a batch of lock leases in as few script calls as the keys'
// cluster slots allow, sent together in one pipeline.
func (l *Locker) renewLocks(ctx context.Context, batch []renewal) ([]int64, []error) {
	if l.nodes != nil {
		return l.renewLocksQuorum(ctx, batch)
	}
	return l.renewLocksOn(ctx, l.client, batch)
}

func (l *Locker) renewLocksOn(ctx context.Context, c redis.UniversalClient, batch []renewal) ([]int64, []error) {
	codes := make([]int64, len(batch))
	errs := make([]error, len(batch))
	groups := l.groupBySlot(batch)
	calls := make([]scriptCall, len(groups))
	for g, idx := range groups {
		calls[g].keys, calls[g].args = renewArgs(batch, idx)
	}
	cmds := runAll(ctx, c, renewScript, calls)
	for g, idx := range groups {
		res, err := cmds[g].Int64Slice()
		if err == nil && len(res) != len(idx) {
			err = fmt.Errorf("unexpected reply %v", res)
		}
		for j, i := range idx {
			if err != nil {
				errs[i] = err
			} else {
				codes[i] = res[j]
			}
		}
	}
	return codes, errs
}

func renewArgs(batch []renewal, idx []int) ([]string, []any) {
	keys := make([]string, len(idx))
	args := make([]any, 0, 2*len(idx))
	for j, i := range idx {
		keys[j] = batch[i].lk.rkey
		args = append(args, batch[i].lk.token, batch[i].ttl.Milliseconds())
	}
	return keys, args
}

// groupBySlot splits a batch into index groups of at most renewBatchSize
// whose keys one script call may touch: same cluster slot, same shard.
func (l *Locker) groupBySlot(batch []renewal) [][]int {
	bySlot := map[string][]int{}
	var order []string
	for i, r := range batch {
		s := l.slots(r.lk.rkey)
		if _, ok := bySlot[s]; !ok {
			order = append(order, s)
		}
		bySlot[s] = append(bySlot[s], i)
	}
	var groups [][]int
	for _, s := range order {
		for idx := bySlot[s]; len(idx) > 0; {
			n := min(len(idx), renewBatchSize)
			groups = append(groups, idx[:n])
			idx = idx[n:]
		}
	}
	return groups
}
