package redlease

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// consumeUntilStarted runs q.Consume with h and opts in the background
// and returns once h has started on a message, with a way to end
// Consume's ctx and a channel that gets what Consume returned.
func consumeUntilStarted(t *testing.T, q *Queue, started <-chan struct{}, h func(context.Context, *Message) error, opts ...ConsumeOption) (context.CancelFunc, <-chan error) {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	t.Cleanup(stop)
	done := make(chan error, 1)
	go func() { done <- q.Consume(ctx, h, opts...) }()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler never started")
	}
	return stop, done
}

// A handler that ignores its context is given the shutdown timeout, then
// its context is cancelled (with the timeout as the cause), then it is
// abandoned: Consume returns, its claim is no longer renewed, the message
// is delivered again after its lease, and what the handler returns late
// is dropped.
func TestConsumeAbandonsAHungHandler(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		const lease, timeout = 600 * time.Millisecond, 200 * time.Millisecond
		q := newQueue(t, c, WithLease(lease))
		id, err := q.Enqueue(ctx, []byte("job"))
		require.NoError(t, err)
		started, unblock := make(chan struct{}), make(chan struct{})
		var cancelledAfter atomic.Int64
		var cause atomic.Value
		var stopAt time.Time
		stop, done := consumeUntilStarted(t, q, started, func(hctx context.Context, m *Message) error {
			close(started)
			<-hctx.Done()
			cancelledAfter.Store(int64(time.Since(stopAt)))
			cause.Store(context.Cause(hctx))
			<-unblock // ignores its context
			return nil
		}, WithShutdownTimeout(timeout))
		defer close(unblock)
		stopAt = time.Now()
		stop()
		var cerr error
		select {
		case cerr = <-done:
		case <-time.After(timeout + shutdownGrace + 5*time.Second):
			t.Fatal("Consume did not return after abandoning its handler")
		}
		returnedAfter := time.Since(stopAt)
		t.Logf("Consume returned %v after its ctx ended: %v; the handler's ctx was cancelled after %v", returnedAfter, cerr, time.Duration(cancelledAfter.Load()))
		require.ErrorIs(t, cerr, context.Canceled)
		require.ErrorContains(t, cerr, "abandoned handlers: 1")
		require.GreaterOrEqual(t, returnedAfter, timeout+shutdownGrace)
		require.GreaterOrEqual(t, time.Duration(cancelledAfter.Load()), timeout)
		require.ErrorIs(t, cause.Load().(error), errShutdownTimeout)

		// Not renewed: another consumer gets it once the lease ends.
		m, err := q.Claim(ctx)
		require.NoError(t, err)
		require.Equal(t, id, m.ID)
		require.Equal(t, 2, m.Attempt)
		// The abandoned handler returning nil now acks nothing.
		unblock <- struct{}{}
		require.NoError(t, m.Ack(ctx))
		wantStats(t, q, Stats{})
	})
}

// A handler that honours its context returns when the shutdown timeout
// cancels it; Consume nacks its message as usual and returns without
// abandoning anything.
func TestConsumeShutdownTimeoutCancelsHandlers(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		q := newQueue(t, c, WithRetryBackoff(func(int) time.Duration { return time.Hour }))
		_, err := q.Enqueue(ctx, []byte("job"))
		require.NoError(t, err)
		started := make(chan struct{})
		stop, done := consumeUntilStarted(t, q, started, func(hctx context.Context, m *Message) error {
			close(started)
			<-hctx.Done()
			return context.Cause(hctx)
		}, WithShutdownTimeout(0))
		stop()
		select {
		case err := <-done:
			require.Equal(t, context.Canceled, err)
		case <-time.After(shutdownGrace):
			t.Fatal("Consume waited for a handler that had returned")
		}
		wantStats(t, q, Stats{Delayed: 1})
	})
}

// Within the shutdown timeout, a handler finishes its work: its context is
// not cancelled, and its message is acked.
func TestConsumeWaitsForHandlersWithinTheTimeout(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	q := newQueue(t, c)
	_, err := q.Enqueue(ctx, []byte("job"))
	require.NoError(t, err)
	started := make(chan struct{})
	stop, done := consumeUntilStarted(t, q, started, func(hctx context.Context, m *Message) error {
		close(started)
		time.Sleep(300 * time.Millisecond)
		return hctx.Err()
	}) // the default timeout, 30s
	stop()
	require.Equal(t, context.Canceled, <-done)
	wantStats(t, q, Stats{})
}

// Consume's shutdown on a sharded queue and a topic's subscription, on
// Redis Cluster: an abandoned handler's message comes back.
func TestClusterConsumeAbandonsAHungHandler(t *testing.T) {
	cc := startCluster(t)
	ctx := context.Background()
	tp := NewTopic(cc, "t", WithPrefix(uniq(t)), WithLease(300*time.Millisecond))
	sub, err := tp.Subscribe(ctx, "s")
	require.NoError(t, err)
	for _, q := range []*Queue{NewQueue(cc, "q", WithPrefix(uniq(t)), WithShards(8), WithLease(300*time.Millisecond)), sub} {
		var id string
		if q == sub {
			id, err = tp.Publish(ctx, []byte("job"))
		} else {
			id, err = q.Enqueue(ctx, []byte("job"))
		}
		require.NoError(t, err)
		started, unblock := make(chan struct{}), make(chan struct{})
		stop, done := consumeUntilStarted(t, q, started, func(context.Context, *Message) error {
			close(started)
			<-unblock
			return nil
		}, WithShutdownTimeout(0))
		stop()
		require.ErrorContains(t, <-done, "abandoned handlers: 1")
		require.NoError(t, redistest.Poll(10*time.Second, func() error {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			m, err := q.Claim(cctx)
			if err != nil {
				return err
			}
			if m.ID != id || m.Attempt != 2 {
				return errors.New("wrong message")
			}
			return m.Ack(ctx)
		}))
		close(unblock)
	}
}
