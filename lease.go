package redlease

import (
	"context"
	"time"
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
	skey   string // a lock's shared leases (lua/lock.lua SHARED), which renewals read too
	shard  int    // for claims: the index of the message's queue shard
	token  string
	fence  int64 // a lock's fencing token; a claim's attempt
	shared bool  // a shared lock's lease
	lost   chan struct{}
	onLost context.CancelCauseFunc // cancels the holder's context, if any

	// Guarded by the watchdog's mu.
	ttl       time.Duration // what the next renewal asks for: the last Refresh's
	held      time.Duration // how long the last write made Redis keep the lease: ttl, or a grant's ttl until renewed
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
func (ls *lease) span(ttl time.Duration) time.Duration {
	if ls.failedTTL > 0 && ls.failedTTL < ttl {
		return ls.failedTTL
	}
	return ttl
}

// sending notes a write, sent at sent, that asks for the lease to end ttl
// later. Called with the watchdog's mu held.
func (ls *lease) sending(sent time.Time, ttl time.Duration) {
	d := ls.span(ttl)
	end := sent.Add(d - drift(d))
	if ls.pending == 0 {
		ls.earliest, ls.confirmed, ls.crossed = end, false, false
	} else {
		ls.earliest, ls.crossed = earlier(ls.earliest, end), true
	}
	ls.pending++
	ls.deadline = earlier(ls.deadline, end)
}

// answered notes the reply to a write that asked for ttl: applied when
// Redis confirmed it, failed when an error came instead. Called with the
// watchdog's mu held.
func (ls *lease) answered(ttl time.Duration, applied, failed bool) {
	ls.pending--
	ls.confirmed = ls.confirmed || applied
	if failed && (ls.failedTTL == 0 || ttl < ls.failedTTL) {
		ls.failedTTL = ttl
	}
	if applied {
		ls.held = ttl
		ls.next = time.Now().Add(renewAfter(ls.span(ls.ttl)))
	}
	if ls.pending > 0 || !ls.confirmed {
		return
	}
	ls.deadline = ls.earliest
	if ls.crossed {
		// Redis may hold either end: renew at once to know which.
		ls.next = time.Now()
	}
}

// due is when the loop must next look at the lease.
func (ls *lease) due() time.Time {
	if ls.renew && ls.next.Before(ls.deadline) {
		return ls.next
	}
	return ls.deadline
}

// renewAfter is how long after a confirmed write the watchdog renews a
// lease: a third of its ttl, so two renewals can fail before it ends.
func renewAfter(ttl time.Duration) time.Duration { return ttl / 3 }

// renewEarly is how early a renewal may be sent, to share a script call
// with other leases.
func renewEarly(ttl time.Duration) time.Duration { return ttl / 20 }

// retryRenewal is how soon a renewal that failed with an error is tried
// again; the deadline ends the lease if nothing gets through in time.
func retryRenewal(ttl time.Duration) time.Duration {
	return min(max(ttl/10, 5*time.Millisecond), time.Second)
}

// drift is subtracted from a lease's end by the local clock, so Lost closes
// no later than Redis expires the key even if the clocks run at slightly
// different rates.
func drift(ttl time.Duration) time.Duration { return ttl/100 + time.Millisecond }

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
