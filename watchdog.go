package redlease

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// idleLinger is how long background goroutines outlive their last lease
// or waiter, so that a busy Locker does not start one per lock.
const idleLinger = 100 * time.Millisecond

// watchdog is one renewal loop shared by many leases: it renews every lease
// that wants it TTL/3 after its last renewal, batched into few script calls,
// and closes lost when a lease is gone or must have ended by the local clock.
type watchdog struct {
	ctx      context.Context                                               // bounds renewal calls
	renewAll func(ctx context.Context, batch []renewal) ([]int64, []error) // the store's or queue's

	mu      sync.Mutex
	leases  map[*lease]struct{}
	running bool
	closed  bool
	wakeAt  time.Time     // when the loop will look again
	wake    chan struct{} // asks the loop to look now
	timer   *time.Timer   // the loop's; set and reset under mu
	wg      sync.WaitGroup
	// calls counts renewal calls in flight, for tests to wait on. close
	// does not wait for them: a call stuck on a dead link ends by the
	// client's own timeouts, and its answer is ignored.
	calls sync.WaitGroup

	// report, if set, is told of what happened to leases (renewals only
	// with reportRenewals), after mu is unlocked: news is what waits.
	report         func(news leaseNews)
	reportRenewals bool
	news           []leaseNews
}

// leaseNews is something that happened to a lease, for its owner to log
// and observe.
type leaseNews struct {
	kind  leaseNewsKind
	name  string
	fence int64 // a lock's fence; a claim's attempt
	share bool  // a shared lease
	renew bool  // the watchdog renewed it
	err   error
}

type leaseNewsKind int

const (
	leaseLost leaseNewsKind = iota
	leaseRenewed
	leaseRenewFailed
)

// tellLocked queues news of ls for report. Called with mu held.
func (w *watchdog) tellLocked(ls *lease, kind leaseNewsKind, err error) {
	if w.report != nil && (kind != leaseRenewed || w.reportRenewals) {
		w.news = append(w.news, leaseNews{kind, ls.name, ls.fence, ls.shared, ls.renew, err})
	}
}

// unlock unlocks mu, then reports the news queued under it.
func (w *watchdog) unlock() {
	news := w.news
	w.news = nil
	w.mu.Unlock()
	for _, n := range news {
		w.report(n)
	}
}

func newWatchdog(ctx context.Context, renewAll func(context.Context, []renewal) ([]int64, []error)) watchdog {
	return watchdog{ctx: ctx, renewAll: renewAll, leases: make(map[*lease]struct{}), wake: make(chan struct{}, 1)}
}

// add tracks a lease obtained by a request sent at start.
func (w *watchdog) add(ls *lease, start time.Time) {
	w.addSpan(ls, start, ls.ttl)
}

// addSpan tracks a lease that Redis holds for span after start, a lease
// handed to a waiter, say; renewals ask for ls.ttl.
func (w *watchdog) addSpan(ls *lease, start time.Time, span time.Duration) {
	w.mu.Lock()
	defer w.unlock()
	ls.deadline = start.Add(span - drift(span))
	ls.held = span
	ls.next = earlier(time.Now().Add(renewAfter(ls.ttl)), start.Add(renewAfter(span)))
	ls.tracked = true
	w.leases[ls] = struct{}{}
	if w.closed {
		w.endLocked(ls, fmt.Errorf("%w: lease on %q is not renewed", ErrClosed, ls.name))
		return
	}
	if !w.running {
		w.running = true
		w.wg.Add(1)
		go w.loop()
	} else if ls.due().Before(w.wakeAt) {
		w.signal()
	}
}

func (w *watchdog) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// endLocked stops tracking the lease and closes Lost; cause is nil for a
// clean release.
func (w *watchdog) endLocked(ls *lease, cause error) {
	if !ls.tracked {
		return
	}
	ls.tracked, ls.ended = false, true
	delete(w.leases, ls)
	ls.cause, ls.endedAt = cause, time.Now()
	close(ls.lost)
	if cause != nil {
		w.tellLocked(ls, leaseLost, cause)
	}
	if cause != nil && ls.onLost != nil {
		ls.onLost(cause)
	}
	if len(w.leases) == 0 && w.timer != nil {
		// Let the loop start its idle countdown soon, without waking it
		// now: a lock taken and released in a loop would wake it each time.
		w.timer.Reset(idleLinger)
		w.wakeAt = time.Now().Add(idleLinger)
	}
}

func (w *watchdog) end(ls *lease, cause error) {
	w.mu.Lock()
	defer w.unlock()
	w.endLocked(ls, cause)
}

// release marks the lease released; it reports whether it had been lost
// before and whether it had been released already.
func (w *watchdog) release(ls *lease) (wasLost, already bool) {
	w.mu.Lock()
	defer w.unlock()
	wasLost, already = ls.cause != nil, ls.released
	ls.released = true
	w.endLocked(ls, nil)
	return wasLost, already
}

// holds reports whether a tracked lease has token.
func (w *watchdog) holds(token string) bool {
	w.mu.Lock()
	defer w.unlock()
	for ls := range w.leases {
		if ls.token == token {
			return true
		}
	}
	return false
}

// holding reports whether ls is tracked: obtained, and neither lost nor
// released.
func (w *watchdog) holding(ls *lease) bool {
	w.mu.Lock()
	defer w.unlock()
	return ls.tracked
}

func (w *watchdog) isReleased(ls *lease) bool {
	w.mu.Lock()
	defer w.unlock()
	return ls.released
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
		w.unlock()
		return notHeld(ls.name, released)
	case ls.ended:
		w.unlock()
		return ls.cause
	}
	ls.ttl = ttl // later renewals ask for the new ttl
	ls.sending(time.Now(), ttl)
	w.unlock()

	code, err := send()

	w.mu.Lock()
	ls.answered(ttl, err == nil && code == 1, err != nil)
	if ls.tracked && ls.due().Before(w.wakeAt) {
		w.signal()
	}
	ended, cause := ls.ended, ls.cause
	w.unlock()
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

// close ends every lease and stops the loop; renewal calls in flight are
// not waited for (see calls).
func (w *watchdog) close() {
	w.mu.Lock()
	w.closed = true
	for ls := range w.leases {
		w.endLocked(ls, fmt.Errorf("%w: lease on %q is not renewed", ErrClosed, ls.name))
	}
	w.unlock()
	w.signal()
	w.wg.Wait()
}

func (w *watchdog) loop() {
	defer w.wg.Done()
	w.mu.Lock()
	timer := time.NewTimer(time.Hour)
	w.timer = timer
	w.unlock()
	stopLocked := func() { // the loop ends; called with mu held
		w.running = false
		timer.Stop()
		w.timer = nil
	}
	var idleSince time.Time
	for {
		now := time.Now()
		w.mu.Lock()
		if w.closed {
			stopLocked()
			w.unlock()
			return
		}
		var batch []renewal
		wakeAt := now.Add(time.Hour)
		for ls := range w.leases {
			if !now.Before(ls.deadline) {
				w.endLocked(ls, notHeld(ls.name, "no renewal succeeded before the lease ended"))
				continue
			}
			// Renew a little early to share a script call with other leases.
			if ls.renew && !ls.inflight && !ls.next.After(now.Add(renewEarly(ls.span(ls.held)))) {
				ls.inflight = true
				ls.sending(now, ls.ttl)
				batch = append(batch, renewal{ls, ls.ttl})
			}
			look := ls.deadline
			if !ls.inflight {
				look = ls.due()
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
				stopLocked()
				w.unlock()
				return
			}
			wakeAt = idleSince.Add(idleLinger)
		} else {
			idleSince = time.Time{}
		}
		w.wakeAt = wakeAt
		timer.Reset(time.Until(wakeAt)) // under mu, as endLocked resets it
		w.unlock()

		if len(batch) > 0 {
			w.calls.Add(1)
			go w.renew(batch)
		}
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
		ls := r.ls
		ls.inflight = false
		ls.answered(r.ttl, errs[i] == nil && codes[i] == 1, errs[i] != nil)
		switch {
		case !ls.tracked:
		case errs[i] != nil:
			// Transient: retry soon; the deadline check ends the lease if
			// nothing gets through in time.
			ls.next = now.Add(retryRenewal(ls.span(ls.ttl)))
			w.tellLocked(ls, leaseRenewFailed, errs[i])
		case codes[i] != 1:
			w.endLocked(ls, leaseGone(ls.name, codes[i]))
		default:
			w.tellLocked(ls, leaseRenewed, nil)
		}
	}
	w.unlock()
	w.signal()
}
