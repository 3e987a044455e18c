package redlease

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestPeek(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		q := NewQueue(c, "jobs", WithPrefix(uniq(t)), WithRetryBackoff(func(int) time.Duration { return 0 }))
		got, err := q.Peek(ctx, 10)
		require.NoError(t, err)
		require.Empty(t, got)

		for _, id := range []string{"a", "b", "c"} {
			_, err := q.Enqueue(ctx, []byte("payload "+id), WithID(id), WithHeaders(map[string]string{"trace": id}))
			require.NoError(t, err)
		}
		m, err := q.Claim(ctx) // a
		require.NoError(t, err)
		require.NoError(t, m.Nack(ctx)) // back to ready, behind c, after one attempt

		got, err = q.Peek(ctx, 10)
		require.NoError(t, err)
		require.Equal(t, []ReadyMessage{
			{ID: "b", Payload: []byte("payload b"), Headers: map[string]string{"trace": "b"}},
			{ID: "c", Payload: []byte("payload c"), Headers: map[string]string{"trace": "c"}},
			{ID: "a", Payload: []byte("payload a"), Headers: map[string]string{"trace": "a"}, Attempts: 1},
		}, got)

		got, err = q.Peek(ctx, 2)
		require.NoError(t, err)
		require.Len(t, got, 2)

		// Nothing was claimed: the next claim takes the head.
		st, err := q.Stats(ctx)
		require.NoError(t, err)
		require.Equal(t, int64(3), st.Ready)
		m, err = q.Claim(ctx)
		require.NoError(t, err)
		require.Equal(t, "b", m.ID)
	})
}

func TestPeekShardsAndTopics(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		q := NewQueue(c, "sharded", WithPrefix(uniq(t)), WithShards(3))
		var ids []string
		for range 7 {
			id, err := q.Enqueue(ctx, []byte("x"))
			require.NoError(t, err)
			ids = append(ids, id)
		}
		got, err := q.Peek(ctx, 100)
		require.NoError(t, err)
		var seen []string
		for _, m := range got {
			seen = append(seen, m.ID)
		}
		require.ElementsMatch(t, ids, seen)

		topic := NewTopic(c, "news", WithPrefix(uniq(t)))
		sub, err := topic.Subscribe(ctx, "mail")
		require.NoError(t, err)
		id, err := topic.Publish(ctx, []byte("hello"))
		require.NoError(t, err)
		got, err = sub.Peek(ctx, 5)
		require.NoError(t, err)
		require.Equal(t, []ReadyMessage{{ID: id, Payload: []byte("hello")}}, got)
	})
}

func TestPeekBounds(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	q := NewQueue(c, "many", WithPrefix(uniq(t)))
	_, err := q.Peek(ctx, 0)
	require.ErrorIs(t, err, ErrInvalidArgument)
	payloads := make([][]byte, MaxPeek+10)
	for i := range payloads {
		payloads[i] = []byte{byte(i)}
	}
	_, err = q.EnqueueBatch(ctx, payloads)
	require.NoError(t, err)
	got, err := q.Peek(ctx, MaxPeek*2)
	require.NoError(t, err)
	require.Len(t, got, MaxPeek)
	_, err = NewQueue(c, "").Peek(ctx, 1)
	require.ErrorIs(t, err, ErrInvalidArgument)
}

func TestTopicSubscriptionCreatesNothing(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		topic := NewTopic(c, "news", WithPrefix(uniq(t)))
		q, err := topic.Subscription("gone")
		require.NoError(t, err)
		require.Equal(t, "news/gone", q.Name())
		subs, err := topic.Subscriptions(ctx)
		require.NoError(t, err)
		require.Empty(t, subs)

		_, err = topic.Subscribe(ctx, "mail")
		require.NoError(t, err)
		_, err = topic.Publish(ctx, []byte("hi"))
		require.NoError(t, err)
		q, err = topic.Subscription("mail")
		require.NoError(t, err)
		st, err := q.Stats(ctx)
		require.NoError(t, err)
		require.Equal(t, int64(1), st.Ready)
		_, err = topic.Subscription("a{b")
		require.ErrorIs(t, err, ErrInvalidArgument)
	})
}
