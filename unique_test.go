package redlease

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// uniqueWindow is the tests' WithUniqueFor: long enough that the checks
// inside it run well within it, on a slow machine too.
const uniqueWindow = time.Second

// uniqueOps adds id with WithUniqueFor(uniqueWindow) through add, settles
// it with consume, and checks that the id stays taken until the window
// ends (an add within it returns ErrDuplicate and adds nothing; count
// says how many messages there are), then is free.
func uniqueOps(ctx context.Context, id string, add func(context.Context, ...EnqueueOption) (string, error), consume func() error, count func() (int64, error)) error {
	start := time.Now()
	if _, err := add(ctx, WithID(id), WithUniqueFor(uniqueWindow)); err != nil {
		return fmt.Errorf("first add: %w", err)
	}
	if err := consume(); err != nil {
		return err
	}
	// Inside the window, with and without the option: taken.
	for _, opts := range [][]EnqueueOption{{WithID(id)}, {WithID(id), WithUniqueFor(time.Millisecond)}} {
		_, err := add(ctx, opts...)
		if time.Since(start) >= uniqueWindow {
			return nil // too slow to tell; the window is over
		}
		if !errors.Is(err, ErrDuplicate) {
			return fmt.Errorf("add within the window: %v, want ErrDuplicate", err)
		}
	}
	if n, err := count(); err != nil || n != 0 {
		return fmt.Errorf("%d messages after refused adds, %v", n, err)
	}
	// After the window: free. Redis's clock and this one are the machine's.
	err := redistest.Poll(10*time.Second, func() error {
		_, err := add(ctx, WithID(id))
		return err
	})
	if err != nil {
		return err
	}
	if took := time.Since(start); took < uniqueWindow-10*time.Millisecond {
		return fmt.Errorf("the id was free again %v after the add, within its %v window", took, uniqueWindow)
	}
	if n, err := count(); err != nil || n != 1 {
		return fmt.Errorf("%d messages after the window, %v; want 1", n, err)
	}
	return nil
}

func queueUniqueOps(ctx context.Context, q *Queue) error {
	add := func(ctx context.Context, opts ...EnqueueOption) (string, error) {
		return q.Enqueue(ctx, []byte("job"), opts...)
	}
	consume := func() error {
		m, err := q.Claim(ctx)
		if err != nil {
			return err
		}
		return m.Ack(ctx)
	}
	count := func() (int64, error) { st, err := q.Stats(ctx); return st.Ready, err }
	return uniqueOps(ctx, "job-1", add, consume, count)
}

func topicUniqueOps(ctx context.Context, tp *Topic) error {
	a, err := tp.Subscribe(ctx, "a")
	if err != nil {
		return err
	}
	b, err := tp.Subscribe(ctx, "b")
	if err != nil {
		return err
	}
	add := func(ctx context.Context, opts ...EnqueueOption) (string, error) {
		return tp.Publish(ctx, []byte("event"), opts...)
	}
	consume := func() error {
		for _, q := range []*Queue{a, b} {
			m, err := q.Claim(ctx)
			if err != nil {
				return err
			}
			if err := m.Ack(ctx); err != nil {
				return err
			}
		}
		return nil
	}
	count := func() (int64, error) {
		sa, err := a.Stats(ctx)
		if err != nil {
			return 0, err
		}
		sb, err := b.Stats(ctx)
		if sa.Ready != sb.Ready {
			return 0, fmt.Errorf("subscriptions differ: %+v %+v", sa, sb)
		}
		return sa.Ready, err
	}
	return uniqueOps(ctx, "event-1", add, consume, count)
}

func TestUniqueFor(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		t.Run("queue", func(t *testing.T) {
			t.Parallel()
			require.NoError(t, queueUniqueOps(ctx, newQueue(t, c)))
		})
		t.Run("sharded", func(t *testing.T) {
			t.Parallel()
			require.NoError(t, queueUniqueOps(ctx, newQueue(t, c, WithShards(4))))
		})
		t.Run("topic", func(t *testing.T) {
			t.Parallel()
			require.NoError(t, topicUniqueOps(ctx, newTopic(t, c)))
		})
	})
}

func TestClusterUniqueFor(t *testing.T) {
	cc := startCluster(t)
	ctx := context.Background()
	require.NoError(t, queueUniqueOps(ctx, NewQueue(cc, "q", WithPrefix(uniq(t)), WithShards(8))))
	require.NoError(t, topicUniqueOps(ctx, NewTopic(cc, "t", WithPrefix(uniq(t)))))
}

// A resent Enqueue with WithUniqueFor reports success once, and a message
// dead-lettered inside its window keeps the id taken too; the window's set
// expires with the window.
func TestUniqueForResendAndExpiry(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	q := newQueue(t, c, WithMaxAttempts(1))
	s := q.shards[0]
	for range 2 {
		codes, err := ints(enqueueScript.Run(ctx, c, s.keys, 0, 200, "token", "x", "p"), 1)
		require.NoError(t, err)
		require.Equal(t, []int64{codeOK}, codes)
	}
	wantStats(t, q, Stats{Ready: 1})
	m, err := q.Claim(ctx)
	require.NoError(t, err)
	require.NoError(t, m.Nack(ctx))
	if _, err := q.Enqueue(ctx, nil, WithID("x")); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("enqueue of a dead id inside its window: %v", err)
	}
	pttl, err := c.PTTL(ctx, s.unique).Result()
	require.NoError(t, err)
	require.True(t, pttl > 0 && pttl <= 200*time.Millisecond, "unique set's PTTL %v", pttl)
	require.NoError(t, redistest.Poll(5*time.Second, func() error {
		if c.Exists(ctx, s.unique).Val() != 0 {
			return errors.New("unique set still there")
		}
		return nil
	}))
}
