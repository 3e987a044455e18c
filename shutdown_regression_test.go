package redlease

// Regression tests from the review of Consume's shutdown: claims and
// replies that land while or after Consume gives up on its handlers.

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// stallHook stalls the next call of one script (once armed): before
// sending it (before=true) or after Redis answered it, until release is
// closed. It ignores ctx, as a reply stuck on a slow link does.
type stallHook struct {
	sha     string
	before  bool
	armed   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func newStall(s *redis.Script, before bool) *stallHook {
	return &stallHook{sha: s.Hash(), before: before, entered: make(chan struct{}), release: make(chan struct{})}
}

func (h *stallHook) matches(cmd redis.Cmder) bool {
	args := cmd.Args()
	if len(args) < 2 {
		return false
	}
	body, _ := args[1].(string)
	switch strings.ToLower(cmd.Name()) {
	case "evalsha":
		return body == h.sha
	case "eval":
		sum := sha1.Sum([]byte(body))
		return hex.EncodeToString(sum[:]) == h.sha
	}
	return false
}

func (h *stallHook) stall(cmds ...redis.Cmder) {
	for _, cmd := range cmds {
		if h.matches(cmd) && (h.before || answered(cmd)) && h.armed.CompareAndSwap(true, false) {
			close(h.entered)
			<-h.release
			return
		}
	}
}

// answered reports whether Redis ran cmd and answered it (not NOSCRIPT).
func answered(cmd redis.Cmder) bool {
	c, ok := cmd.(*redis.Cmd)
	return ok && c.Err() == nil && c.Val() != nil
}

// wait waits until the stalled call has come.
func (h *stallHook) wait(t *testing.T) {
	t.Helper()
	select {
	case <-h.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the stalled call never came")
	}
}

// releaseAfter lets the stalled call go on after d.
func (h *stallHook) releaseAfter(d time.Duration) *time.Timer {
	return time.AfterFunc(d, func() { close(h.release) })
}

// releaseAll stops renewing every claim q's watchdog still renews.
func releaseAll(q *Queue) {
	q.wd.mu.Lock()
	var ls []*lease
	for l := range q.wd.leases {
		ls = append(ls, l)
	}
	q.wd.mu.Unlock()
	for _, l := range ls {
		q.wd.release(l)
	}
}

// consumeInBackground runs q.Consume with h and opts until stop is
// called; done gets what it returned.
func consumeInBackground(q *Queue, h func(context.Context, *Message) error, opts ...ConsumeOption) (stop context.CancelFunc, done <-chan error) {
	ctx, stop := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- q.Consume(ctx, h, opts...) }()
	return stop, ch
}

func (h *stallHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *stallHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.before {
			h.stall(cmd)
		}
		err := next(ctx, cmd)
		if !h.before {
			h.stall(cmd)
		}
		return err
	}
}

func (h *stallHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.before {
			h.stall(cmds...)
		}
		err := next(ctx, cmds)
		if !h.before {
			h.stall(cmds...)
		}
		return err
	}
}

// Claims are made with a context Consume's ctx does not cancel. A claim
// whose reply is still on its way when Consume gives up on its handlers
// (shutdown timeout plus shutdownGrace after ctx ended) is waited for,
// not handled, and no longer renewed: the message is delivered again once
// its lease ends. (It used to stay renewed for as long as the Queue
// lived.)
func TestClaimLandingAfterAbandonComesBack(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		// Longer than shutdown timeout + shutdownGrace, so that the claim
		// is still good by the local clock when its reply lands.
		const leaseD = 2 * time.Second
		stall := newStall(claimScript, false) // Redis runs the claim; its reply is slow
		c.AddHook(stall)
		q := newQueue(t, c, WithLease(leaseD))
		t.Cleanup(func() { releaseAll(q) }) // a leak stays this test's
		id, err := q.Enqueue(ctx, []byte("job"))
		require.NoError(t, err)
		stall.armed.Store(true)

		var ran atomic.Bool
		stop, done := consumeInBackground(q, func(context.Context, *Message) error { ran.Store(true); return nil }, WithShutdownTimeout(0))
		select {
		case <-stall.entered:
		case <-time.After(5 * time.Second):
			t.Fatal("no claim")
		}
		stop()
		// The claim's reply arrives after the shutdown timeout and the
		// grace second: Consume waits for it, and gives the claim up.
		const replyAfter = shutdownGrace + 500*time.Millisecond
		stopped := time.Now()
		released := time.AfterFunc(replyAfter, func() { close(stall.release) })
		defer released.Stop()
		select {
		case err := <-done:
			t.Logf("Consume returned %v after %v", err, time.Since(stopped))
			require.Equal(t, context.Canceled, err)
			require.GreaterOrEqual(t, time.Since(stopped), replyAfter, "Consume returned before its claim came back")
		case <-time.After(10 * time.Second):
			t.Fatal("Consume did not return")
		}

		// The message should come back once its lease ends.
		q2 := newQueue(t, c, WithLease(leaseD))
		cl, cancel := context.WithTimeout(ctx, 4*leaseD)
		defer cancel()
		m, err := q2.Claim(cl)
		st, _ := q.Stats(ctx)
		q.wd.mu.Lock()
		renewed := len(q.wd.leases)
		q.wd.mu.Unlock()
		t.Logf("after %v: claim err %v; stats %+v; leases still renewed by q's watchdog: %d; handler ran: %v", 4*leaseD, err, st, renewed, ran.Load())
		require.NoError(t, err, "message %q was never delivered again", id)
		require.Equal(t, id, m.ID)
		require.NoError(t, m.Ack(ctx))
	})
}

// The ack-folded-into-the-next-claim path: a handler returned nil, and
// the round trip that acks its message and claims the next is slow. No
// handler is counted as abandoned, and the next message, claimed in that
// round trip, comes back after its lease.
func TestAckClaimLandingAfterAbandonComesBack(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		const leaseD = 2 * time.Second
		stall := newStall(ackClaimScript, false)
		c.AddHook(stall)
		q := newQueue(t, c, WithLease(leaseD))
		t.Cleanup(func() { releaseAll(q) })
		first, err := q.Enqueue(ctx, []byte("first"))
		require.NoError(t, err)
		second, err := q.Enqueue(ctx, []byte("second"))
		require.NoError(t, err)
		stall.armed.Store(true)
		var handled sync.Map
		stop, done := consumeInBackground(q, func(_ context.Context, m *Message) error { handled.Store(m.ID, true); return nil }, WithShutdownTimeout(0))
		stall.wait(t)
		stop()
		defer stall.releaseAfter(shutdownGrace + 500*time.Millisecond).Stop()
		cerr := <-done
		_, ranFirst := handled.Load(first)
		_, ranSecond := handled.Load(second)
		t.Logf("Consume returned %v; handled first %v, second %v", cerr, ranFirst, ranSecond)
		q2 := newQueue(t, c, WithLease(leaseD))
		cl, cancel := context.WithTimeout(ctx, 4*leaseD)
		defer cancel()
		m, err := q2.Claim(cl)
		st, _ := q.Stats(ctx)
		t.Logf("claim: %v; stats %+v", err, st)
		require.NotContains(t, cerr.Error(), "abandoned handlers: 1", "the handler had returned and its message was acked")
		require.NoError(t, err, "message %q was never delivered again", second)
		require.Equal(t, second, m.ID)
	})
}

// A handler that honours its context returns once the shutdown timeout
// cancels it; its Nack is slow (a slow link) and lands after the lease
// ended: the ErrNotHeld it gets is reported before Consume returns, never
// after.
func TestNoErrorReportAfterConsumeReturns(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		const leaseD = 300 * time.Millisecond
		stall := newStall(nackScript, true) // held before it reaches Redis
		c.AddHook(stall)
		q := newQueue(t, c, WithLease(leaseD))
		_, err := q.Enqueue(ctx, []byte("job"))
		require.NoError(t, err)
		stall.armed.Store(true)

		var returned atomic.Bool
		var mu sync.Mutex
		var late []error
		started := make(chan struct{})
		stop, done := consumeUntilStarted(t, q, started, func(hctx context.Context, m *Message) error {
			close(started)
			<-hctx.Done()
			return context.Cause(hctx)
		}, WithShutdownTimeout(0), WithErrorHandler(func(err error) {
			if returned.Load() {
				mu.Lock()
				late = append(late, err)
				mu.Unlock()
			}
		}))
		stop()
		// The Nack reaches Redis after the claim's lease ended.
		released := time.AfterFunc(shutdownGrace+3*leaseD, func() { close(stall.release) })
		defer released.Stop()
		cerr := <-done
		returned.Store(true)
		t.Logf("Consume returned %v", cerr)
		time.Sleep(500 * time.Millisecond)
		mu.Lock()
		defer mu.Unlock()
		require.Empty(t, late, "the error handler was called after Consume returned")
	})
}

// Consume's abandonment error wraps ctx.Err(), yet it is logged: report's
// filter of errors that only say Consume's context ended lets it through.
func TestAbandonmentIsLogged(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	var logs logLines
	q := newQueue(t, c, WithLogger(logs.logger()))
	_, err := q.Enqueue(ctx, []byte("job"))
	require.NoError(t, err)
	started, unblock := make(chan struct{}), make(chan struct{})
	defer close(unblock)
	stop, done := consumeUntilStarted(t, q, started, func(context.Context, *Message) error {
		close(started)
		<-unblock
		return nil
	}, WithShutdownTimeout(0))
	stop()
	cerr := <-done
	require.ErrorContains(t, cerr, "abandoned handlers: 1")
	var lines []string
	for _, e := range logs.entries(t) {
		lines = append(lines, e["err"].(string))
	}
	t.Logf("Consume returned %v; logged: %q", cerr, lines)
	require.NotEmpty(t, find(logs.entries(t), "WARN", "abandoned"), "the abandonment was not logged")
}

// goroutinesRunning reports whether a goroutine's stack holds fn.
func goroutinesRunning(fn string) bool {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	return strings.Contains(string(buf[:n]), fn)
}

// A reclaim call whose reply is slow past the shutdown timeout and the
// grace second: Consume waits for its reclaim goroutine and reports no
// abandoned handler (none was hung).
func TestConsumeWaitsForItsReclaimGoroutine(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		stall := newStall(reclaimScript, false)
		c.AddHook(stall)
		q := newQueue(t, c, WithLease(200*time.Millisecond))
		stall.armed.Store(true)
		stop, done := consumeInBackground(q, func(context.Context, *Message) error { return nil }, WithShutdownTimeout(0))
		stall.wait(t)
		stop()
		// The reclaim's reply comes back well after the shutdown timeout
		// and the grace second.
		defer stall.releaseAfter(shutdownGrace + 500*time.Millisecond).Stop()
		cerr := <-done
		running := goroutinesRunning("(*consumer).reclaimEvery")
		t.Logf("Consume returned %v; its reclaim goroutine still running: %v", cerr, running)
		require.False(t, running, "Consume returned while its reclaim goroutine still ran")
		require.Equal(t, context.Canceled, cerr)
	})
}

// Goexit in a handler after ctx ended (the shutdown timeout cancelled
// it): the message is nacked,
// Consume returns ctx's error without abandoning anything; no leak.
func TestGoexitDuringShutdown(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		defer redistest.NoLeaks(t, time.Second)()
		ctx := context.Background()
		q := newQueue(t, c, WithRetryBackoff(func(int) time.Duration { return time.Hour }))
		_, err := q.Enqueue(ctx, []byte("job"))
		require.NoError(t, err)
		started := make(chan struct{})
		stop, done := consumeUntilStarted(t, q, started, func(hctx context.Context, m *Message) error {
			close(started)
			<-hctx.Done()
			runtime.Goexit()
			return nil
		}, WithShutdownTimeout(0))
		stop()
		require.Equal(t, context.Canceled, <-done)
		wantStats(t, q, Stats{Delayed: 1})
	})
}

// Goexit from an abandoned handler after Consume returned: nothing is
// settled, nothing panics, the message comes back after its lease.
func TestGoexitAfterAbandon(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		q := newQueue(t, c, WithLease(300*time.Millisecond))
		id, err := q.Enqueue(ctx, []byte("job"))
		require.NoError(t, err)
		started, unblock := make(chan struct{}), make(chan struct{})
		var reports atomic.Int32
		var returned atomic.Bool
		stop, done := consumeUntilStarted(t, q, started, func(hctx context.Context, m *Message) error {
			close(started)
			<-unblock
			runtime.Goexit()
			return nil
		}, WithShutdownTimeout(0), WithErrorHandler(func(error) {
			if returned.Load() {
				reports.Add(1)
			}
		}))
		stop()
		require.ErrorContains(t, <-done, "abandoned handlers: 1")
		returned.Store(true)
		close(unblock)
		m, err := q.Claim(ctx)
		require.NoError(t, err)
		require.Equal(t, id, m.ID)
		require.Equal(t, 2, m.Attempt)
		require.NoError(t, m.Ack(ctx))
		time.Sleep(100 * time.Millisecond)
		require.Zero(t, reports.Load())
	})
}

// Panics during the shutdown wait are nacked with the panic as the cause.
func TestPanicDuringShutdown(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		q := newQueue(t, c, WithMaxAttempts(1))
		_, err := q.Enqueue(ctx, []byte("job"))
		require.NoError(t, err)
		started := make(chan struct{})
		stop, done := consumeUntilStarted(t, q, started, func(hctx context.Context, m *Message) error {
			close(started)
			<-hctx.Done()
			panic("late")
		}, WithShutdownTimeout(10*time.Millisecond))
		stop()
		require.Equal(t, context.Canceled, <-done)
		dead, err := q.DeadLetters(ctx, 10)
		require.NoError(t, err)
		require.Len(t, dead, 1)
		require.Equal(t, "panic: late", dead[0].Err)
	})
}

// Several hung handlers: all counted, all delivered again.
func TestConcurrentHungHandlers(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		const n = 4
		q := newQueue(t, c, WithLease(300*time.Millisecond))
		for range n + 2 {
			_, err := q.Enqueue(ctx, []byte("job"))
			require.NoError(t, err)
		}
		var running atomic.Int32
		started, unblock := make(chan struct{}), make(chan struct{})
		defer close(unblock)
		stop, done := consumeUntilStarted(t, q, started, func(hctx context.Context, m *Message) error {
			if running.Add(1) == n {
				close(started)
			}
			<-unblock
			return nil
		}, WithShutdownTimeout(0), WithConcurrency(n))
		stop()
		require.ErrorContains(t, <-done, fmt.Sprintf("abandoned handlers: %d", n))
		got := map[string]bool{}
		for range n + 2 {
			cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			m, err := q.Claim(cctx)
			cancel()
			require.NoError(t, err)
			got[m.ID] = true
			require.NoError(t, m.Ack(ctx))
		}
		require.Len(t, got, n+2)
		wantStats(t, q, Stats{})
	})
}

// An abandoned handler that finishes inside its lease and acks its
// message itself: the claim is still good in Redis, and Ack asks Redis
// rather than refuse, saying "already acked or nacked", which nobody did.
func TestAbandonedHandlerCanStillAck(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	q := newQueue(t, c, WithLease(5*time.Second))
	_, err := q.Enqueue(ctx, []byte("job"))
	require.NoError(t, err)
	started, unblock := make(chan struct{}), make(chan struct{})
	acked := make(chan error, 1)
	stop, done := consumeUntilStarted(t, q, started, func(hctx context.Context, m *Message) error {
		close(started)
		<-unblock
		acked <- m.Ack(context.Background())
		return nil
	}, WithShutdownTimeout(0))
	stop()
	require.ErrorContains(t, <-done, "abandoned handlers: 1")
	close(unblock)
	err = <-acked
	st, _ := q.Stats(ctx)
	t.Logf("Ack from the abandoned handler, within its lease: %v; stats %+v", err, st)
	require.NotContains(t, fmt.Sprint(err), "already acked or nacked")
}

// errText cuts to MaxErrLength on a rune boundary, even with an invalid
// byte elsewhere in the text (which once made it drop four more bytes).
func TestErrTextInvalidUTF8(t *testing.T) {
	text := "\xff" + strings.Repeat("a", 2*MaxErrLength) // an ASCII cut is on a boundary
	got := errText(errors.New(text))
	t.Logf("len(errText) = %d, want %d", len(got), MaxErrLength)
	require.Len(t, got, MaxErrLength)
}

// An id WithUniqueFor keeps taken after its message was acked is refused
// with ErrDuplicate, and the error says why: not that it "is live".
func TestUniqueDuplicateErrorText(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	q := newQueue(t, c)
	_, err := q.Enqueue(ctx, []byte("a"), WithID("job"), WithUniqueFor(time.Minute))
	require.NoError(t, err)
	m, err := q.Claim(ctx)
	require.NoError(t, err)
	require.NoError(t, m.Ack(ctx))
	wantStats(t, q, Stats{})
	_, err = q.Enqueue(ctx, []byte("b"), WithID("job"))
	require.ErrorIs(t, err, ErrDuplicate)
	t.Logf("second Enqueue: %v", err)
	require.NotContains(t, err.Error(), "is live")
}

// panic(nil) under GODEBUG=panicnil=1, where recover() returns nil, is a
// panic, not a runtime.Goexit (once taken for one, it left two workers
// running under WithConcurrency(1), one outliving Consume).
func TestPanicNilIsAPanic(t *testing.T) {
	t.Setenv("GODEBUG", "panicnil=1")
	func() {
		defer func() { require.Nil(t, recover(), "GODEBUG panicnil=1 not in effect") }()
		panic(nil)
	}()
	_, c := newMini(t)
	ctx := context.Background()
	q := newQueue(t, c, WithRetryBackoff(func(int) time.Duration { return time.Hour }))
	for range 4 {
		_, err := q.Enqueue(ctx, []byte("job"))
		require.NoError(t, err)
	}
	var calls, running, maxRunning atomic.Int32
	var mu sync.Mutex
	var reports []string
	var returned atomic.Bool
	var late atomic.Int32
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- q.Consume(cctx, func(hctx context.Context, m *Message) error {
			n := running.Add(1)
			defer running.Add(-1)
			for {
				old := maxRunning.Load()
				if n <= old || maxRunning.CompareAndSwap(old, n) {
					break
				}
			}
			if calls.Add(1) == 1 {
				panic(nil)
			}
			time.Sleep(300 * time.Millisecond)
			return nil
		}, WithShutdownTimeout(0), WithErrorHandler(func(err error) {
			if returned.Load() {
				late.Add(1)
			}
			mu.Lock()
			reports = append(reports, err.Error())
			mu.Unlock()
		}))
	}()
	time.Sleep(500 * time.Millisecond)
	stop()
	cerr := <-done
	returned.Store(true)
	workersLeft := goroutinesRunning("(*consumer).work")
	time.Sleep(700 * time.Millisecond)
	mu.Lock()
	t.Logf("Consume returned %v; max handlers at once %d (concurrency 1); workers still running after return: %v; reports after return: %d; reports: %q",
		cerr, maxRunning.Load(), workersLeft, late.Load(), reports)
	mu.Unlock()
	require.LessOrEqual(t, maxRunning.Load(), int32(1), "two handlers ran at once under WithConcurrency(1)")
	require.False(t, workersLeft, "a worker outlived Consume")
}

// An error handler that ends its goroutine with runtime.Goexit (a test's
// require/t.FailNow in WithErrorHandler): a new worker takes the dead
// one's place, and Consume returns (it used to wait for the dead worker
// for ever).
func TestErrorHandlerGoexitKeepsThePool(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	q := newQueue(t, c, WithRetryBackoff(func(int) time.Duration { return time.Hour }))
	_, err := q.Enqueue(ctx, []byte("job"))
	require.NoError(t, err)
	var once atomic.Bool
	handled := make(chan struct{})
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- q.Consume(cctx, func(context.Context, *Message) error {
			close(handled)
			return errors.New("boom")
		}, WithShutdownTimeout(0), WithErrorHandler(func(error) {
			if once.CompareAndSwap(false, true) {
				runtime.Goexit()
			}
		}))
	}()
	<-handled
	time.Sleep(100 * time.Millisecond)
	stop()
	select {
	case err := <-done:
		t.Logf("Consume returned %v", err)
	case <-time.After(shutdownGrace + 3*time.Second):
		t.Fatal("Consume did not return (a worker ended by Goexit in the error handler is still counted busy)")
	}
}
