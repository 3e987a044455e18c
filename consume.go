package redlease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
)

const (
	// claimPause is how long a worker waits after a failed claim, doubling
	// up to maxClaimPause while claims keep failing.
	claimPause    = 10 * time.Millisecond
	maxClaimPause = time.Second
	// blockPause is how long a worker waits after a failed blocking wait.
	blockPause = 50 * time.Millisecond
	// shutdownGrace is how long handlers whose contexts the shutdown
	// timeout cancelled have to return before Consume abandons them.
	shutdownGrace = time.Second
)

// errShutdownTimeout is the cause of a handler's context cancelled
// because Consume's shutdown timeout passed.
var errShutdownTimeout = errors.New("redlease: consume's shutdown timeout passed")

// Consume runs h on claimed messages, up to [WithConcurrency] at once, until
// ctx ends. Each claim is renewed while its handler runs; the handler's
// context is cancelled if the claim is lost anyway. A nil return acks the
// message; an error or a panic (recovered) nacks it, with the error as
// its cause ([WithCause]): an error that wraps [ErrSkipRetry]
// dead-letters it at once. Consume also reclaims expired claims
// periodically (one consumer at a time does).
//
// When ctx ends, Consume stops claiming and waits for running handlers,
// whose contexts ctx does not cancel, for the shutdown timeout
// ([WithShutdownTimeout], 30s by default); it acks or nacks what they
// return. Then it cancels their contexts and waits a second more; a
// handler that has still not returned is abandoned: Consume stops
// renewing its claim (the handler may still Ack or Nack it while the
// lease lasts), drops what it returns, and its message is delivered again
// once its lease ends. Consume returns when its own Redis calls have
// ended (the client's timeouts bound them), with ctx's error, wrapped
// with the count of abandoned handlers if there are any (also reported to
// [WithErrorHandler] or the logger). No goroutine of Consume's outlives it
// but an abandoned handler's.
func (q *Queue) Consume(ctx context.Context, h func(context.Context, *Message) error, opts ...ConsumeOption) error {
	if err := q.check(); err != nil {
		return err
	}
	if h == nil {
		return fmt.Errorf("%w: nil handler", ErrInvalidArgument)
	}
	cfg := consumeConfig{concurrency: 1, shutdown: DefaultShutdownTimeout}
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if cfg.err != nil {
		return cfg.err
	}
	stop, stopHandlers := context.WithCancelCause(context.WithoutCancel(ctx))
	defer stopHandlers(nil)
	c := &consumer{q: q, h: h, onError: cfg.onError, idle: make(chan struct{}, 1), ctx: ctx, stop: stop,
		handling: map[*Message]struct{}{}}
	c.changed = sync.NewCond(&c.mu)
	for range cfg.concurrency {
		c.spawn()
	}
	c.reclaimer.Go(func() { c.reclaimEvery(ctx) })
	defer c.reclaimer.Wait()
	finished := make(chan struct{}) // closed when every worker has ended, or Consume gave up
	go func() {
		c.await(func() bool { return c.busy+len(c.handling) == 0 || c.gaveUp })
		close(finished)
	}()
	<-ctx.Done()
	abandoned := 0
	if !doneWithin(finished, cfg.shutdown) {
		stopHandlers(errShutdownTimeout)
		if !doneWithin(finished, shutdownGrace) {
			abandoned = c.giveUp()
		}
	}
	<-finished
	c.await(func() bool { return c.busy == 0 }) // workers outside handlers end their Redis calls
	if abandoned > 0 {
		err := fmt.Errorf("redlease: consume on %q: %w: %d still running %v after the shutdown timeout: %w",
			q.name, errAbandoned, abandoned, shutdownGrace, ctx.Err())
		c.report(err)
		return err
	}
	return ctx.Err()
}

// errAbandoned marks Consume's error when it left handlers running.
var errAbandoned = errors.New("abandoned handlers")

// doneWithin reports whether done closes within d.
func doneWithin(done <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// A consumer's workers each run handlers on their own goroutine (a hand
// off to another goroutine would cost a wake-up per message). So that
// Consume can give up on a hung handler without giving up on the Redis
// calls of the other workers, it counts its workers outside handlers
// (busy) and the messages inside them (handling).
type consumer struct {
	ctx       context.Context // Consume's
	stop      context.Context // handlers' parent: cancelled when the shutdown timeout passes
	reclaimer sync.WaitGroup
	q         *Queue
	h         func(context.Context, *Message) error
	onError   func(error)
	blocking  atomic.Bool   // one worker at a time waits on Redis
	idle      chan struct{} // passes the waiting role to an idle worker

	mu       sync.Mutex
	changed  *sync.Cond            // busy, handling or gaveUp changed
	busy     int                   // workers running outside a handler
	handling map[*Message]struct{} // messages whose handler runs
	gaveUp   bool                  // Consume abandoned the handlers running
}

// spawn starts a worker.
func (c *consumer) spawn() {
	c.mu.Lock()
	c.busy++
	c.mu.Unlock()
	go c.work(c.ctx)
}

// exit ends a worker that is outside a handler.
func (c *consumer) exit() {
	c.mu.Lock()
	c.busy--
	c.changed.Broadcast()
	c.mu.Unlock()
}

// enter marks a worker as running m's handler, unless Consume has given
// up on its handlers (then false).
func (c *consumer) enter(m *Message) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gaveUp {
		return false
	}
	c.busy--
	c.handling[m] = struct{}{}
	return true
}

// leave marks m's handler as returned, and reports whether its worker is
// still Consume's: false once Consume gave up on it.
func (c *consumer) leave(m *Message) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.handling, m)
	if c.gaveUp {
		return false
	}
	c.busy++
	return true
}

// giveUp abandons the handlers running: their claims are no longer
// renewed, so each message is delivered again once its lease ends. It
// returns how many there were.
func (c *consumer) giveUp() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gaveUp = true
	for m := range c.handling {
		c.q.wd.end(&m.lease, notHeld(m.ID, "abandoned by Consume after its shutdown timeout"))
	}
	c.changed.Broadcast()
	return len(c.handling)
}

// await waits until done, called under c.mu, holds.
func (c *consumer) await(done func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for !done() {
		c.changed.Wait()
	}
}

// report passes an error Consume recovered from to WithErrorHandler's
// handler or, without one, to the Queue's logger; an error that only says
// Consume's context ended is no failure, and is not logged.
func (c *consumer) report(err error) {
	switch {
	case err == nil:
	case c.onError != nil:
		c.onError(err)
	case c.ctx.Err() != nil && errors.Is(err, c.ctx.Err()) && !errors.Is(err, errAbandoned):
	default:
		c.q.logger().Warn("redlease: consume", "queue", c.q.name, "err", err)
	}
}

// logger is where the Queue reports: WithLogger's, or slog's default.
func (q *Queue) logger() *slog.Logger { return orDefault(q.log) }

// work claims and handles messages until ctx ends. A message whose
// handler succeeded is acked in the same round trip as the next claim.
// A worker whose handler Consume gave up on returns as soon as the
// handler does, touching nothing.
func (c *consumer) work(ctx context.Context) {
	w := &worker{}
	defer c.guard(ctx, w)
	pause := claimPause
	waited := false
	for ctx.Err() == nil {
		hctx, cancel := context.WithCancelCause(c.stop)
		if w.done != nil {
			c.q.wd.release(&w.done.lease) // renewal stops; the script acks
		}
		m, next, err := c.q.claimAfter(ctx, w.done, true, cancel)
		w.cur = m
		if w.done != nil {
			ackErr := w.done.ackErr
			w.done = nil
			c.report(ackErr)
		}
		switch {
		case err != nil:
			c.report(err)
			sleep(ctx, pause)
			pause = min(2*pause, maxClaimPause)
		case m == nil:
			c.wait(ctx, next)
			waited = true
		default:
			if waited {
				// Work arrived: wake an idle worker too, in case there is more.
				signal(c.idle)
				c.q.passWake(ctx)
				waited = false
			}
			pause = claimPause
			var mine bool
			if w.done, mine = c.handle(hctx, m, w); !mine {
				cancel(nil)
				w.over = true
				return
			}
			w.cur = nil
		}
		cancel(nil)
	}
	if w.done != nil {
		c.report(w.done.Ack(context.WithoutCancel(ctx)))
		c.q.wd.release(&w.done.lease) // acked or not, Consume is done with it
	}
	w.over = true
	c.exit()
}

// worker is what a worker's guard needs to know of it.
type worker struct {
	cur, done *Message // the claims it holds: the message it handles, the one to ack
	over      bool     // it ended as it should, or Consume gave up on it
}

// guard replaces a worker whose goroutine runtime.Goexit ended (a handler
// or an error handler calling t.FailNow, say): its claims stop being
// renewed, so they come back after their lease, and while ctx lasts a new
// worker takes its place.
func (c *consumer) guard(ctx context.Context, w *worker) {
	if w.over {
		return
	}
	for _, m := range []*Message{w.cur, w.done} {
		if m != nil {
			c.q.wd.end(&m.lease, notHeld(m.ID, "its worker's goroutine ended"))
		}
	}
	c.exit()
	if ctx.Err() == nil {
		c.spawn()
	}
}

// handle runs the handler and nacks a failure; it returns m to ack when
// the handler succeeded, and mine false when Consume gave up on the
// handler meanwhile. A claim made once Consume gave up on its handlers is
// not handled: it is no longer renewed, and comes back after its lease.
func (c *consumer) handle(ctx context.Context, m *Message, w *worker) (done *Message, mine bool) {
	if !c.enter(m) {
		c.q.wd.end(&m.lease, notHeld(m.ID, "Consume gave up before handling it"))
		return nil, true
	}
	mine, err := c.run(ctx, m, w)
	switch {
	case !mine:
		return nil, false
	case err == nil && c.q.wd.isReleased(&m.lease):
		return nil, true // the handler acked or nacked it itself
	case err == nil:
		return m, true
	}
	c.fail(m, err)
	return nil, true
}

// fail reports a handler's failure and nacks its message with err as the
// cause. Whatever Redis answers, Consume stops renewing the claim: one the
// nack did not end expires and is delivered again.
func (c *consumer) fail(m *Message, err error) {
	var p *handlerPanic
	switch {
	case c.onError != nil:
		c.onError(fmt.Errorf("redlease: handler failed on %q (attempt %d): %w", m.ID, m.Attempt, err))
	case c.ctx.Err() != nil && errors.Is(err, c.ctx.Err()):
		// Shutting down: the handler only says its context ended.
	case errors.As(err, &p):
		c.q.logger().Error("redlease: handler panicked", "queue", c.q.name, "id", m.ID, "attempt", m.Attempt, "err", err, "stack", string(p.stack))
	default:
		c.q.logger().Warn("redlease: handler failed", "queue", c.q.name, "id", m.ID, "attempt", m.Attempt, "err", err)
	}
	c.report(m.Nack(context.WithoutCancel(c.ctx), WithCause(err)))
	c.q.wd.release(&m.lease)
}

// handlerPanic is a handler's panic, with the stack where it happened.
type handlerPanic struct {
	value any
	stack []byte
}

func (p *handlerPanic) Error() string { return fmt.Sprintf("panic: %v", p.value) }

// errGoexit stands for a handler that ended its goroutine with
// runtime.Goexit (t.FailNow, for one) instead of returning.
var errGoexit = errors.New("handler called runtime.Goexit")

// run runs the handler on w's goroutine; a panic, panic(nil) included,
// becomes an error. A handler that calls runtime.Goexit ends the
// goroutine instead of returning: its message is nacked, and w's guard
// puts a new worker in its place. mine is false when Consume gave up on
// the handler before it returned: then nothing more is done.
func (c *consumer) run(ctx context.Context, m *Message, w *worker) (mine bool, err error) {
	returned, panicked := false, false
	defer func() {
		if returned || panicked {
			return
		}
		// runtime.Goexit: only it gets here without either.
		if c.leave(m) {
			c.fail(m, errGoexit)
		} else {
			w.over = true
		}
	}()
	func() {
		defer func() {
			if !returned {
				err = &handlerPanic{recover(), debug.Stack()} // a Goexit goes on all the same
			}
		}()
		if c.q.hook != nil {
			err = c.q.hook.Handle(ctx, m, c.h)
		} else {
			err = c.h(ctx, m)
		}
		returned = true
	}()
	panicked = !returned
	return c.leave(m), err
}

// wait idles a worker that found no work: one worker blocks on Redis, the
// others wait for it to pass the role on.
func (c *consumer) wait(ctx context.Context, next time.Duration) {
	if c.blocking.CompareAndSwap(false, true) {
		err := c.q.block(ctx, next)
		c.blocking.Store(false)
		signal(c.idle)
		if err != nil {
			c.report(err)
			sleep(ctx, blockPause)
		}
		return
	}
	t := time.NewTimer(maxBlock)
	defer t.Stop()
	select {
	case <-c.idle:
	case <-t.C:
	case <-ctx.Done():
	}
}

// reclaimInterval is how often Consume reclaims: about ten times per lease,
// so an expired claim waits at most a tenth of a lease to be given back.
func reclaimInterval(lease time.Duration) time.Duration {
	return min(max(lease/10, 10*time.Millisecond), time.Second)
}

// reclaimEvery reclaims expired claims about ten times per lease; a guard
// in Redis lets one consumer of the queue at a time do it.
func (c *consumer) reclaimEvery(ctx context.Context) {
	every := reclaimInterval(c.q.lease)
	token := uuid.NewString()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, s := range c.q.shards {
			if _, err := c.q.reclaim(ctx, s, every, token); err != nil {
				c.report(err)
			}
		}
	}
}
