package redlease

import (
	"context"
	"maps"
	"runtime"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// A payload that starts like an envelope comes back whole through
// EnqueueBatch and PublishBatch too (they once stored it raw, and a claim
// read it as an envelope).
func TestBatchOfAnEnvelopeLookalike(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	p := envelopeMagic + "\x01\x01k\x01vrest"
	q := newQueue(t, c)
	_, err := q.EnqueueBatch(ctx, [][]byte{[]byte(p)})
	require.NoError(t, err)
	m, err := q.Claim(ctx)
	require.NoError(t, err)
	require.Equal(t, p, string(m.Payload), "EnqueueBatch payload altered; headers %v", m.Headers)
}

func TestPublishBatchOfAnEnvelopeLookalike(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	p := envelopeMagic + "\x01\x01k\x01vrest"
	tp := NewTopic(c, "t", WithPrefix(uniq(t)))
	sub, err := tp.Subscribe(ctx, "s")
	require.NoError(t, err)
	_, err = tp.PublishBatch(ctx, [][]byte{[]byte(p)})
	require.NoError(t, err)
	m, err := sub.Claim(ctx)
	require.NoError(t, err)
	require.Equal(t, p, string(m.Payload), "PublishBatch payload altered; headers %v", m.Headers)
}

// A message whose last lease ended and that a Claim (not Reclaim) finds
// and dead-letters is logged and observed, as a reclaim's are.
func TestClaimThatBuriesIsLoggedAndObserved(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	var logs logLines
	rec := &recorder{name: "r"}
	q := newQueue(t, c, WithLease(100*time.Millisecond), WithMaxAttempts(1), WithLogger(logs.logger()), WithHook(rec))
	_, err := q.Enqueue(ctx, []byte("a"))
	require.NoError(t, err)
	_, err = q.Claim(ctx)
	require.NoError(t, err)
	time.Sleep(200 * time.Millisecond)
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err = q.Claim(cctx)
	require.Error(t, err)
	st, err := q.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(1), st.DeadLettered)
	require.NotEmpty(t, logs.entries(t), "dead-lettered by a claim: nothing logged")
	_, dead := rec.last(MessageDead)
	_, reclaimed := rec.last(MessagesReclaimed)
	require.True(t, dead || reclaimed, "dead-lettered by a claim: no observation; saw %v", rec.kinds("q"))
}

// EnqueueBatch is observed with its count, as Stats.Enqueued counts it.
func TestBatchIsObserved(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	rec := &recorder{name: "r"}
	q := newQueue(t, c, WithHook(rec))
	_, err := q.EnqueueBatch(ctx, [][]byte{[]byte("a"), []byte("b")})
	require.NoError(t, err)
	st, err := q.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(2), st.Enqueued)
	o, ok := rec.last(MessageEnqueued)
	require.True(t, ok, "EnqueueBatch of 2: no MessageEnqueued")
	require.Equal(t, 2, o.N)
}

// twice is a Hook whose Enqueue retries next once (as a retrying or
// fan-out hook might), returning the second answer.
type twice struct{ recorder }

func (h *twice) Enqueue(ctx context.Context, dest string, headers map[string]string, next EnqueueFunc) (string, error) {
	_, _ = next(ctx, headers)
	return next(ctx, headers)
}

// A hook that calls next twice on a Queue resends the same request: the
// message is added once, on one shard, and Enqueue succeeds.
func TestHookCallingNextTwiceOnShards(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	q := newQueue(t, c, WithShards(2), WithHook(&twice{}))
	id, err := q.Enqueue(ctx, []byte("a"))
	require.NoError(t, err)
	st, err := q.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(1), st.Ready, "id %s enqueued %d times", id, st.Ready)
}

func TestHookCallingNextTwice(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	q1 := NewQueue(c, "one", WithPrefix(uniq(t)), WithHook(&twice{}))
	_, err := q1.Enqueue(ctx, []byte("a"))
	require.NoError(t, err, "the message was enqueued, yet Enqueue fails")
}

// A Locker closed normally while its waiters' channel is subscribed logs
// no warning.
func TestCloseLogsNoLostChannel(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		var logs logLines
		l := NewLocker(c, WithPrefix(uniq(t)), WithLogger(logs.logger()))
		lk, err := l.Obtain(ctx, "k")
		require.NoError(t, err)
		go func() { time.Sleep(300 * time.Millisecond); _ = lk.Release(ctx) }()
		lk2, err := l.Obtain(ctx, "k") // queues: the waiters' channel is subscribed
		require.NoError(t, err)
		require.NoError(t, lk2.Release(ctx))
		require.NoError(t, l.Close())
		time.Sleep(200 * time.Millisecond)
		for _, e := range logs.entries(t) {
			if e["level"] == "WARN" {
				t.Errorf("normal Close logged a warning: %v", e)
			}
		}
	})
}

// Headers handed to Hook.Enqueue are the Queue's own copy; a hook that
// mutates them in place (against the doc) changes nothing the caller sees.
func TestWithHeadersCopies(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	h := map[string]string{"a": "1"}
	q := newQueue(t, c, WithHook(&mutator{}))
	_, err := q.Enqueue(ctx, nil, WithHeaders(h))
	require.NoError(t, err)
	require.Equal(t, map[string]string{"a": "1"}, h)
	m, err := q.Claim(ctx)
	require.NoError(t, err)
	require.Equal(t, "x", m.Headers["b"])
	_ = maps.Clone(h)
}

type mutator struct{ recorder }

func (*mutator) Enqueue(ctx context.Context, dest string, headers map[string]string, next EnqueueFunc) (string, error) {
	headers["b"] = "x"
	return next(ctx, headers)
}

// bigHeader is a Hook whose Enqueue adds a header past MaxHeaderBytes.
type bigHeader struct{ recorder }

func (*bigHeader) Enqueue(ctx context.Context, dest string, headers map[string]string, next EnqueueFunc) (string, error) {
	h := maps.Clone(headers)
	if h == nil {
		h = map[string]string{}
	}
	h["big"] = string(make([]byte, MaxHeaderBytes))
	return next(ctx, h)
}

// Headers a hook adds are bounded too: refused, nothing written.
func TestHookHeadersAreBounded(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	q := newQueue(t, c, WithHook(&bigHeader{}))
	_, err := q.Enqueue(ctx, nil, WithHeaders(map[string]string{"a": "1"}))
	require.ErrorIs(t, err, ErrInvalidArgument)
	tp := NewTopic(c, "t", WithPrefix(uniq(t)), WithHook(&bigHeader{}))
	_, err = tp.Subscribe(ctx, "s")
	require.NoError(t, err)
	_, err = tp.Publish(ctx, nil)
	require.ErrorIs(t, err, ErrInvalidArgument)
	keys, err := c.Keys(ctx, "*").Result()
	require.NoError(t, err)
	for _, k := range keys {
		n, _ := c.HLen(ctx, k).Result()
		typ, _ := c.Type(ctx, k).Result()
		if typ == "list" {
			n, _ = c.LLen(ctx, k).Result()
			require.Zero(t, n, k)
		}
	}
}

// A Consume handler that acks its message itself and returns nil is
// observed acked once: Consume does not ack it again.
func TestHandlerAckIsObservedOnce(t *testing.T) {
	_, c := newMini(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := &recorder{name: "r"}
	q := newQueue(t, c, WithHook(rec))
	_, err := q.Enqueue(ctx, []byte("a"))
	require.NoError(t, err)
	handled := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- q.Consume(ctx, func(ctx context.Context, m *Message) error {
			handled <- struct{}{}
			return m.Ack(ctx)
		})
	}()
	<-handled
	time.Sleep(300 * time.Millisecond) // the next claim (with the ack) has run
	cancel()
	<-done
	st, err := q.Stats(context.Background())
	require.NoError(t, err)
	require.Equal(t, int64(1), st.Acked)
	n := 0
	for _, k := range rec.kinds("q") {
		if k == MessageAcked {
			n++
		}
	}
	require.Equal(t, 1, n, "MessageAcked observed %d times for one ack: %v", n, rec.kinds("q"))
}

// A WithoutWatchdog lease left to expire at its TTL (a throttle, say: the
// usual way to use one) is not logged as a warning.
func TestUnrenewedExpiryIsNotAWarning(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	var logs logLines
	l := NewLocker(c, WithPrefix(uniq(t)), WithLogger(logs.logger()))
	defer l.Close()
	lk, err := l.TryObtain(ctx, "throttle", WithTTL(100*time.Millisecond), WithoutWatchdog())
	require.NoError(t, err)
	<-lk.Lost()
	time.Sleep(50 * time.Millisecond)
	for _, e := range logs.entries(t) {
		if e["level"] == "WARN" {
			t.Errorf("a lease that was never to be renewed expired as asked, logged: %v", e)
		}
	}
}

// A Hook.Handle that panics, or calls runtime.Goexit, is recovered as a
// handler's would be: the message is nacked.
func TestHandleHookPanicIsRecovered(t *testing.T) {
	_, c := newMini(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var logs logLines
	q := newQueue(t, c, WithHook(&panicky{recorder{name: "p"}}), WithLogger(logs.logger()), WithRetryBackoff(func(int) time.Duration { return 0 }), WithMaxAttempts(2))
	_, err := q.Enqueue(ctx, []byte("a"))
	require.NoError(t, err)
	cctx, stop := context.WithCancel(ctx)
	go func() {
		for {
			st, _ := q.Stats(ctx)
			if st.DeadLettered == 1 {
				stop()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	_ = q.Consume(cctx, func(context.Context, *Message) error { return nil })
	st, err := q.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(1), st.Nacked)
	require.Equal(t, int64(1), st.DeadLettered)
}

type panicky struct{ recorder }

func (*panicky) Handle(ctx context.Context, m *Message, next func(context.Context, *Message) error) error {
	if m.Attempt == 1 {
		panic("hook")
	}
	runtime.Goexit()
	return nil
}
