package redlease

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// Stats' totals count each message added, acked, retried and
// dead-lettered once: not a refused duplicate, not a resent script.
func TestStatsTotals(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		for _, shards := range []int{1, 3} {
			q := NewQueue(c, "q"+string(rune('0'+shards)), WithPrefix(uniq(t)), WithShards(shards),
				WithRetryBackoff(func(int) time.Duration { return 0 }))
			_, err := q.Enqueue(ctx, []byte("a"), WithID("a"))
			require.NoError(t, err)
			_, err = q.Enqueue(ctx, []byte("a"), WithID("a"))
			require.ErrorIs(t, err, ErrDuplicate)
			_, err = q.EnqueueBatch(ctx, [][]byte{[]byte("b"), []byte("c")})
			require.NoError(t, err)
			for _, settle := range []func(*Message) error{
				func(m *Message) error { return m.Ack(ctx) },
				func(m *Message) error { return m.Nack(ctx) },
				func(m *Message) error { return m.Nack(ctx, WithCause(ErrSkipRetry)) },
			} {
				m, err := q.Claim(ctx)
				require.NoError(t, err)
				require.NoError(t, settle(m))
			}
			st, err := q.Stats(ctx)
			require.NoError(t, err)
			require.Equal(t, Stats{Ready: 1, Dead: 1, Enqueued: 3, Acked: 1, Nacked: 1, DeadLettered: 1}, st, "%d shards", shards)
		}

		// A resent enqueue or ack counts once.
		q := NewQueue(c, "resend", WithPrefix(uniq(t)))
		s := q.shards[0]
		for range 2 {
			require.NoError(t, enqueueScript.Run(ctx, c, s.keys, 0, randomIDs, "token", "id", "p").Err())
		}
		m, err := q.Claim(ctx)
		require.NoError(t, err)
		for range 2 {
			require.NoError(t, ackScript.Run(ctx, c, s.keys, m.ID, m.token).Err())
		}
		st, err := q.Stats(ctx)
		require.NoError(t, err)
		require.Equal(t, Stats{Enqueued: 1, Acked: 1}, st)

		// A publish counts in every subscription that took it.
		tp := NewTopic(c, "t", WithPrefix(uniq(t)))
		a, err := tp.Subscribe(ctx, "a")
		require.NoError(t, err)
		_, err = tp.Publish(ctx, nil, WithID("x"))
		require.NoError(t, err)
		b, err := tp.Subscribe(ctx, "b")
		require.NoError(t, err)
		_, err = tp.Publish(ctx, nil, WithID("x")) // live in a, new in b
		require.NoError(t, err)
		_, err = tp.PublishBatch(ctx, [][]byte{nil, nil})
		require.NoError(t, err)
		for q, want := range map[*Queue]int64{a: 3, b: 3} {
			st, err := q.Stats(ctx)
			require.NoError(t, err)
			require.Equal(t, want, st.Enqueued, q.Name())
		}
	})
}
