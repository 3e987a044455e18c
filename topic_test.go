package redlease

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func newTopic(t *testing.T, c redis.UniversalClient, opts ...QueueOption) *Topic {
	t.Helper()
	return NewTopic(c, "t", append([]QueueOption{WithPrefix(uniq(t))}, opts...)...)
}

// claimAll claims and acks everything ready in q, returning the payloads
// in order.
func claimAll(t *testing.T, q *Queue) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	var got []string
	for {
		m, err := q.Claim(ctx)
		if errors.Is(err, context.DeadlineExceeded) {
			return got
		}
		require.NoError(t, err)
		got = append(got, string(m.Payload))
		require.NoError(t, m.Ack(context.Background()))
	}
}

func TestTopicFanOut(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		tp := newTopic(t, c)
		id0, err := tp.Publish(ctx, []byte("before"))
		require.NoError(t, err)
		require.NotEmpty(t, id0)
		a, err := tp.Subscribe(ctx, "a")
		require.NoError(t, err)
		b, err := tp.Subscribe(ctx, "b")
		require.NoError(t, err)
		subs, err := tp.Subscriptions(ctx)
		require.NoError(t, err)
		require.Equal(t, []string{"a", "b"}, subs)
		id1, err := tp.Publish(ctx, []byte("one"))
		require.NoError(t, err)
		_, err = tp.PublishBatch(ctx, [][]byte{[]byte("two"), []byte("three")})
		require.NoError(t, err)
		m, err := a.Claim(ctx)
		require.NoError(t, err)
		require.Equal(t, id1, m.ID)
		require.NoError(t, m.Ack(ctx))
		require.Equal(t, []string{"two", "three"}, claimAll(t, a))
		require.Equal(t, []string{"one", "two", "three"}, claimAll(t, b))
		require.NoError(t, tp.Unsubscribe(ctx, "a"))
		_, err = tp.Publish(ctx, []byte("four"))
		require.NoError(t, err)
		_, err = tp.Publish(ctx, []byte("five"))
		require.NoError(t, err)
		require.NoError(t, tp.Unsubscribe(ctx, "b"))
	})
}
