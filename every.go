package redlease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"
)

const (
	// everyRecheck caps how long a caller that found the lock held waits
	// before trying again within a slot nobody has claimed: a quarter of
	// the period (everyRecheckParts), at most a second.
	everyRecheck      = time.Second
	everyRecheckParts = 4
	// everyBackoff is the wait after a Redis error; it doubles while
	// errors go on, up to the period or everyMaxBackoff, whichever is
	// shorter, but never below everyBackoff, to bound the retries and logs
	// of a short period.
	everyBackoff    = 100 * time.Millisecond
	everyMaxBackoff = 5 * time.Second
)

// Codes lua/every.lua answers with.
const (
	slotOurs  = 1  // the slot is claimed with the caller's token
	slotTaken = 0  // another claimed the slot, or a later one
	slotFree  = -1 // asking only: nobody has claimed the slot
)

// Every runs fn periodically, at most once per slot of period across every
// process that calls Every with the same name, until ctx ends; then it
// waits for a running fn to return (its context is cancelled) and returns
// ctx.Err().
//
// Slots are counted on Redis's clock: slot n runs from n*period to
// (n+1)*period after the Unix epoch, by the TIME of the Redis that holds
// the keys, so the callers' own clocks do not matter. To try a slot, a
// caller takes the lock name, as TryObtain would, claims the slot in Redis
// unless another has, runs fn if the claim is its own, and releases the
// lock. Hence:
//
//   - fn runs at most once per slot: a slot is claimed once, atomically.
//   - Runs never overlap, in this process or another, while leases hold
//     (see [Locker]): each one holds the lock name. One name is one lock:
//     Obtain or Do on name elsewhere keeps the job from running, and a run
//     keeps them waiting.
//   - While any caller is alive, one of them runs fn in each slot, unless
//     the lock is held for the whole slot: by the previous run (fn took
//     longer than the period) or by another holder; a caller that dies
//     during a run holds the lock until its lease ends ([DefaultTTL]). A
//     slot in which no caller was alive is skipped, not made up. A run
//     that ends late lets the slot it ends in run at once.
//   - The first attempt is made at once: if the current slot has not run,
//     fn runs now, not at the next slot's start.
//   - fn's context is cancelled when ctx ends, when the lease is lost (as
//     with [Locker.Do]) or when the Locker is closed.
//
// Every caller of a name must give the same period (slots of different
// lengths are not comparable), a whole number of milliseconds and at least
// one. The claim is one key per name, prefix:{T}:every:<name> beside the
// lock's keys; it expires a second after the slot it claims ends.
//
// These guarantees hold while that Redis keeps its data: a failover to a
// replica that missed the last claim, or whose clock differs, may let a
// slot run twice or skip slots. A slot is claimed only if it is later than
// the last one claimed, so a clock step on the Redis host skips slots (a
// step back, until the clock is past the last claim) but runs none twice.
//
// fn's errors and panics (recovered) are logged at Error level to the
// Locker's logger ([WithLogger]), except an error that only says fn's
// context ended; Redis errors are logged at Warn level and tried again
// after 100ms, then after twice as long each time, up to the period (but
// at least 100ms) or 5s, whichever is shorter. Neither stops Every.
//
// A nil fn, an empty name, a bad period or a quorum Locker (whose nodes'
// clocks differ) is an error that errors.Is [ErrInvalidArgument], and
// nothing is sent to Redis. On a closed Locker, or once the Locker is
// closed, Every returns an error that errors.Is [ErrClosed].
func (l *Locker) Every(ctx context.Context, name string, period time.Duration, fn func(ctx context.Context) error) error {
	n, err := l.checkEvery(name, period, fn)
	if err != nil {
		return err
	}
	j := &everyJob{
		l: l, node: n, name: name, fn: fn, log: l.logger(),
		key:        l.everyKey(name),
		periodMs:   period.Milliseconds(),
		recheck:    min(period/everyRecheckParts, everyRecheck),
		maxBackoff: max(min(period, everyMaxBackoff), everyBackoff),
	}
	j.lockCfg, _ = newLockConfig(nil)
	j.lockCfg.retry = noRetry{} // one attempt, as TryObtain
	return j.loop(ctx)
}

// checkEvery validates Every's arguments and returns the Redis whose clock
// counts the slots.
func (l *Locker) checkEvery(name string, period time.Duration, fn func(context.Context) error) (*node, error) {
	err := l.check(name)
	switch {
	case fn == nil:
		err = fmt.Errorf("%w: nil function", ErrInvalidArgument)
	case err != nil:
	case period < time.Millisecond:
		err = fmt.Errorf("%w: period %v must be at least 1ms", ErrInvalidArgument, period)
	case period%time.Millisecond != 0:
		err = fmt.Errorf("%w: period %v is not a whole number of milliseconds, the unit of Redis's clock that slots are counted in", ErrInvalidArgument, period)
	}
	if err != nil {
		return nil, everyErr(name, err)
	}
	n, ok := l.store.(*node)
	if !ok {
		return nil, everyErr(name, fmt.Errorf("%w: not supported by a quorum Locker: slots need one Redis's clock", ErrInvalidArgument))
	}
	return n, nil
}

func everyErr(name string, err error) error { return fmt.Errorf("redlease: every %q: %w", name, err) }

// everyKey is the key of job name's last claimed slot, in the hash slot of
// the lock's keys.
func (l *Locker) everyKey(name string) string {
	return l.prefix + ":{" + slotTag(nameSlot(name)) + "}:every:" + name
}

// logger is where the Locker reports: WithLogger's, or slog's default.
func (l *Locker) logger() *slog.Logger { return orDefault(l.log) }

// everyJob is one call of Every.
type everyJob struct {
	l          *Locker
	node       *node
	name       string
	key        string
	periodMs   int64
	fn         func(context.Context) error
	log        *slog.Logger
	lockCfg    lockConfig
	recheck    time.Duration // the wait for a lock held in an unclaimed slot
	maxBackoff time.Duration
}

// loop makes attempts until ctx ends or the Locker is closed, waiting on
// one timer between them.
func (j *everyJob) loop(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	backoff := everyBackoff
	for {
		wait, err := j.attempt(ctx)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, ErrClosed) || j.l.closed.Load():
			return everyErr(j.name, ErrClosed)
		case err != nil:
			j.log.Warn("redlease: every: redis error", "name", j.name, "err", err, "retry_in", backoff)
			wait, backoff = backoff, min(2*backoff, j.maxBackoff)
		default:
			backoff = everyBackoff
		}
		timer.Reset(max(wait, 0))
		select {
		case <-timer.C:
		case <-ctx.Done():
			return ctx.Err()
		case <-j.l.ctx.Done():
			return everyErr(j.name, ErrClosed)
		}
	}
}

// attempt tries the current slot once: it takes the lock, claims the slot
// and runs fn if the claim is its own, then releases the lock. It returns
// how long to wait before the next attempt.
func (j *everyJob) attempt(ctx context.Context) (time.Duration, error) {
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	lk, err := j.l.obtain(ctx, j.name, j.lockCfg, cancel)
	switch {
	case err == nil:
	case errors.Is(err, ErrNotObtained) && !errors.Is(err, ErrClosed) && ctx.Err() == nil:
		return j.held(ctx)
	default:
		return 0, err
	}
	slot := int64(-1)
	// Deferred: fn may end its goroutine (runtime.Goexit).
	defer func() { j.release(ctx, lk, slot) }()
	// The lease's token is new for each attempt: a resend of this claim
	// finds its own, and no later attempt mistakes it for its own.
	c, err := j.claim(ctx, lk.token)
	if err != nil || c.code != slotOurs || fctx.Err() != nil {
		return c.wait, err
	}
	slot = c.slot
	j.run(fctx, slot)
	return c.wait - time.Since(c.at), nil
}

// held says how long a caller that found the lock held waits: until the
// next slot if this one is claimed, else a recheck within the slot, in
// case the holder lets go in time.
func (j *everyJob) held(ctx context.Context) (time.Duration, error) {
	c, err := j.claim(ctx, "")
	if err != nil || c.code != slotFree {
		return c.wait, err
	}
	return min(j.recheck, c.wait), nil
}

// slotClaim is lua/every.lua's reply.
type slotClaim struct {
	code int64
	slot int64
	wait time.Duration // until the next slot starts, from at
	at   time.Time
}

// claim claims the current slot with token, or with "" only asks whether
// it is claimed.
func (j *everyJob) claim(ctx context.Context, token string) (slotClaim, error) {
	r, err := ints(run(ctx, j.node.client, everyScript, []string{j.key}, j.periodMs, token), 3)
	if err != nil {
		return slotClaim{}, everyErr(j.name, fmt.Errorf("claim: %w", err))
	}
	return slotClaim{code: r[0], slot: r[1], wait: time.Duration(r[2]) * time.Millisecond, at: time.Now()}, nil
}

// run runs fn and logs its error or panic.
func (j *everyJob) run(ctx context.Context, slot int64) {
	stack, err := j.call(ctx)
	switch {
	case err == nil:
	case stack != nil:
		j.log.Error("redlease: every: job panicked", "name", j.name, "slot", slot, "err", err, "stack", string(stack))
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		// fn stopped as asked; a lost lease is logged by release.
	default:
		j.log.Error("redlease: every: job failed", "name", j.name, "slot", slot, "err", err)
	}
}

// call runs fn, turning a panic into an error and its stack.
func (j *everyJob) call(ctx context.Context) (stack []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			stack, err = debug.Stack(), fmt.Errorf("panic: %v", p)
		}
	}()
	return nil, j.fn(ctx)
}

// release gives the lock back, whatever ctx says; it logs a lease lost
// during the run (but not to Close, which Every returns) or a failed
// release, which leaves the lease to expire.
func (j *everyJob) release(ctx context.Context, lk *Lock, slot int64) {
	wasLost, err := lk.release(context.WithoutCancel(ctx))
	if wasLost {
		err = lk.Err()
	}
	if err == nil || errors.Is(err, ErrClosed) {
		return
	}
	args := []any{"name", j.name, "err", err}
	if slot >= 0 {
		args = append(args, "slot", slot)
	}
	j.log.Warn("redlease: every: lease", args...)
}
