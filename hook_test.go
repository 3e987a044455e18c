package redlease

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// recorder is a Hook that keeps what it sees: its Enqueue adds a header
// named after it, its Handle puts its name in the handler's context.
type recorder struct {
	name  string
	mu    sync.Mutex
	seen  []Observation
	order *[]string // shared by chained recorders: who ran first
}

type recorderKey struct{ name string }

func (r *recorder) Observe(_ context.Context, o Observation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, o)
}

func (r *recorder) Enqueue(ctx context.Context, dest string, headers map[string]string, next EnqueueFunc) (string, error) {
	h := maps.Clone(headers)
	if h == nil {
		h = map[string]string{}
	}
	h[r.name] = dest
	r.ran("enqueue")
	return next(ctx, h)
}

func (r *recorder) Handle(ctx context.Context, m *Message, next func(context.Context, *Message) error) error {
	r.ran("handle")
	return next(context.WithValue(ctx, recorderKey{r.name}, m.ID), m)
}

func (r *recorder) ran(what string) {
	if r.order != nil {
		r.mu.Lock()
		*r.order = append(*r.order, r.name+" "+what)
		r.mu.Unlock()
	}
}

// kinds returns the kinds seen for name, in order.
func (r *recorder) kinds(name string) []ObservationKind {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []ObservationKind
	for _, o := range r.seen {
		if o.Name == name {
			out = append(out, o.Kind)
		}
	}
	return out
}

// last returns the last observation of kind.
func (r *recorder) last(kind ObservationKind) (Observation, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.seen) - 1; i >= 0; i-- {
		if r.seen[i].Kind == kind {
			return r.seen[i], true
		}
	}
	return Observation{}, false
}

// A Queue's hook adds headers on Enqueue, wraps each handler, and is told
// of every enqueue, claim, ack, nack, death and reclaim.
func TestHookOnAQueue(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rec := &recorder{name: "rec"}
		q := newQueue(t, c, WithHook(rec), WithMaxAttempts(2), WithRetryBackoff(func(int) time.Duration { return 0 }))
		good, err := q.Enqueue(ctx, []byte("good"), WithHeaders(map[string]string{"mine": "1"}))
		require.NoError(t, err)
		bad, err := q.Enqueue(ctx, []byte("bad"))
		require.NoError(t, err)
		cause := errors.New("bad payload")
		handled := 0
		err = q.Consume(ctx, func(ctx context.Context, m *Message) error {
			handled++
			require.Equal(t, m.ID, ctx.Value(recorderKey{"rec"}), "the hook's context")
			require.Equal(t, "q", m.Headers["rec"], "the hook's header")
			if string(m.Payload) == "good" {
				require.Equal(t, "1", m.Headers["mine"])
				return nil
			}
			if m.Attempt == 2 {
				defer cancel()
			}
			return cause
		}, WithErrorHandler(func(error) {}))
		require.ErrorIs(t, err, context.Canceled)
		require.Equal(t, 3, handled)
		// One worker: the ack of "good" shares a round trip with the claim
		// of "bad".
		require.Equal(t, []ObservationKind{MessageEnqueued, MessageEnqueued, MessageClaimed, MessageAcked,
			MessageClaimed, MessageNacked, MessageClaimed, MessageDead}, rec.kinds("q"))
		o, _ := rec.last(MessageDead)
		require.Equal(t, Observation{Kind: MessageDead, Name: "q", ID: bad, Attempt: 2, N: 1, Err: cause}, o)
		o, _ = rec.last(MessageAcked)
		require.Equal(t, Observation{Kind: MessageAcked, Name: "q", ID: good, Attempt: 1}, o)

		// A claim whose lease ends is reclaimed.
		reclaimExpired(t, c, WithHook(rec))
		o, ok := rec.last(MessagesReclaimed)
		require.True(t, ok)
		require.Equal(t, Observation{Kind: MessagesReclaimed, Name: "short", N: 1}, o)
	})
}

// reclaimExpired claims a message of a queue "short" (with opts) under a
// short lease, and reclaims it once the lease has ended, within a bound.
func reclaimExpired(t *testing.T, c *redis.Client, opts ...QueueOption) {
	t.Helper()
	ctx := context.Background()
	short := NewQueue(c, "short", append([]QueueOption{WithPrefix(uniq(t)), WithLease(20 * time.Millisecond)}, opts...)...)
	_, err := short.Enqueue(ctx, nil)
	require.NoError(t, err)
	_, err = short.Claim(ctx)
	require.NoError(t, err)
	n := 0
	for deadline := time.Now().Add(5 * time.Second); n == 0 && time.Now().Before(deadline); {
		time.Sleep(25 * time.Millisecond)
		n, err = short.Reclaim(ctx)
		require.NoError(t, err)
	}
	require.Equal(t, 1, n, "claims reclaimed")
}

// A Topic's hook sees its publishes, under the topic's name, and its
// subscriptions' claims, under "topic/subscription".
func TestHookOnATopic(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		rec := &recorder{name: "rec"}
		tp := NewTopic(c, "t", WithPrefix(uniq(t)), WithHook(rec))
		sub, err := tp.Subscribe(ctx, "s")
		require.NoError(t, err)
		id, err := tp.Publish(ctx, []byte("p"))
		require.NoError(t, err)
		m, err := sub.Claim(ctx)
		require.NoError(t, err)
		require.Equal(t, map[string]string{"rec": "t"}, m.Headers)
		require.NoError(t, m.Ack(ctx))
		require.Equal(t, []ObservationKind{MessageEnqueued}, rec.kinds("t"))
		require.Equal(t, []ObservationKind{MessageClaimed, MessageAcked}, rec.kinds("t/s"))
		o, _ := rec.last(MessageEnqueued)
		require.Equal(t, Observation{Kind: MessageEnqueued, Name: "t", ID: id, N: 1}, o)
		// Batches are observed with their count.
		_, err = tp.PublishBatch(ctx, [][]byte{nil, nil})
		require.NoError(t, err)
		o, _ = rec.last(MessageEnqueued)
		require.Equal(t, Observation{Kind: MessageEnqueued, Name: "t", N: 2}, o)
		_, err = sub.EnqueueBatch(ctx, [][]byte{nil, nil, nil})
		require.NoError(t, err)
		o, _ = rec.last(MessageEnqueued)
		require.Equal(t, Observation{Kind: MessageEnqueued, Name: "t/s", N: 3}, o)
	})
}

// Hooks chain in the order given; a nil hook is refused and writes nothing.
func TestHookChain(t *testing.T) {
	mr, c := newMini(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var order []string
	a, b := &recorder{name: "a", order: &order}, &recorder{name: "b", order: &order}
	q := newQueue(t, c, WithHook(a), WithHook(b))
	_, err := q.Enqueue(ctx, nil)
	require.NoError(t, err)
	err = q.Consume(ctx, func(ctx context.Context, m *Message) error {
		defer cancel()
		require.Equal(t, map[string]string{"a": "q", "b": "q"}, m.Headers)
		require.NotNil(t, ctx.Value(recorderKey{"a"}))
		require.NotNil(t, ctx.Value(recorderKey{"b"}))
		return nil
	})
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, []string{"a enqueue", "b enqueue", "a handle", "b handle"}, order)
	require.Equal(t, a.kinds("q"), b.kinds("q"))

	before := mr.Keys()
	if _, err := NewQueue(c, "n", WithHook(nil)).Enqueue(ctx, nil); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Enqueue with a nil hook: %v, want ErrInvalidArgument", err)
	}
	l := NewLocker(c, WithHook(nil))
	defer l.Close()
	if _, err := l.TryObtain(ctx, "k"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("TryObtain with a nil hook: %v, want ErrInvalidArgument", err)
	}
	require.Equal(t, before, mr.Keys())
}

// A Locker's hook is told of each lock obtained (how long it took, how
// long it waited, whether it was handed over), each renewal, and each
// lease lost.
func TestHookOnALocker(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rec := &recorder{name: "rec"}
		l := NewLocker(c, WithPrefix(uniq(t)), WithHook(rec))
		defer l.Close()
		first, err := l.TryObtain(ctx, "k", WithTTL(150*time.Millisecond))
		require.NoError(t, err)
		o, ok := rec.last(LockAcquired)
		require.True(t, ok)
		require.Equal(t, first.Fence(), o.Fence)
		require.True(t, o.Latency > 0 && o.Wait == 0 && !o.HandedOff, "%+v", o)

		// A waiter gets the lock on release: handed over, after a wait.
		const held = 200 * time.Millisecond
		got := make(chan *Lock, 1)
		go func() {
			lk, err := l.Obtain(ctx, "k")
			if err != nil {
				t.Error(err)
			}
			got <- lk
		}()
		time.Sleep(held) // the watchdog renews first meanwhile
		require.NoError(t, first.Release(ctx))
		second := <-got
		require.NotNil(t, second)
		o, _ = rec.last(LockAcquired)
		require.Equal(t, second.Fence(), o.Fence)
		require.True(t, o.HandedOff, "%+v", o)
		require.True(t, o.Wait > held/2 && o.Latency >= o.Wait, "%+v", o)
		o, ok = rec.last(LockRenewed)
		require.True(t, ok, "no renewal observed in %v", held)
		require.Equal(t, first.Fence(), o.Fence)

		require.NoError(t, second.Release(ctx))

		// Lost: the key is deleted under the holder.
		third, err := l.TryObtain(ctx, "k2")
		require.NoError(t, err)
		require.NoError(t, c.Del(ctx, l.lockKey("k2")).Err())
		require.ErrorIs(t, third.Refresh(ctx, time.Second), ErrNotHeld)
		o, ok = rec.last(LockLost)
		require.True(t, ok)
		require.Equal(t, "k2", o.Name)
		require.Equal(t, third.Fence(), o.Fence)
		require.ErrorIs(t, o.Err, ErrNotHeld)
		require.False(t, slices.Contains(rec.kinds("k"), LockLost), "a released lease is not lost")
	})
}
