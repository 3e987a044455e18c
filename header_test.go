package redlease

import (
	"context"
	"errors"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// Headers stay with a message through a retry, its death, RetryDead and a
// topic's subscriptions and listeners; a payload that looks like an
// envelope comes back as it was.
func TestHeadersTravelWithTheMessage(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		q := newQueue(t, c, WithRetryBackoff(func(int) time.Duration { return 0 }))
		h := map[string]string{"traceparent": "00-abc-def-01", "tenant": "", "k\x00": "v:1"}
		_, err := q.Enqueue(ctx, []byte("p"), WithHeaders(h), WithHeaders(map[string]string{"tenant": "acme"}))
		require.NoError(t, err)
		want := maps.Clone(h)
		want["tenant"] = "acme"
		h["tenant"] = "changed after the call" // WithHeaders copies

		m, err := q.Claim(ctx)
		require.NoError(t, err)
		require.Equal(t, want, m.Headers)
		require.Equal(t, "p", string(m.Payload))
		require.NoError(t, m.Nack(ctx))
		m, err = q.Claim(ctx)
		require.NoError(t, err)
		require.Equal(t, 2, m.Attempt)
		require.Equal(t, want, m.Headers, "after a retry")
		require.NoError(t, m.Nack(ctx, WithCause(ErrSkipRetry)))

		dead, err := q.DeadLetters(ctx, 10)
		require.NoError(t, err)
		require.Len(t, dead, 1)
		require.Equal(t, want, dead[0].Headers, "dead letter")
		require.Equal(t, "p", string(dead[0].Payload))
		n, err := q.RetryDead(ctx)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		m, err = q.Claim(ctx)
		require.NoError(t, err)
		require.Equal(t, want, m.Headers, "after RetryDead")
		require.NoError(t, m.Ack(ctx))

		// No headers: nil; a payload starting with the magic is kept whole.
		for _, p := range []string{"plain", envelopeMagic, envelopeMagic + "\x01\x01k\x01v"} {
			_, err = q.Enqueue(ctx, []byte(p))
			require.NoError(t, err)
			m, err = q.Claim(ctx)
			require.NoError(t, err)
			require.Equal(t, p, string(m.Payload))
			require.Nil(t, m.Headers)
			require.NoError(t, m.Ack(ctx))
		}
		// So does one in a batch.
		looks := envelopeMagic + "\x01\x01k\x01v"
		_, err = q.EnqueueBatch(ctx, [][]byte{[]byte(looks)})
		require.NoError(t, err)
		m, err = q.Claim(ctx)
		require.NoError(t, err)
		require.Equal(t, looks, string(m.Payload))
		require.Nil(t, m.Headers)
		tp := NewTopic(c, "t", WithPrefix(uniq(t)))
		sub, err := tp.Subscribe(ctx, "s")
		require.NoError(t, err)
		_, err = tp.PublishBatch(ctx, [][]byte{[]byte(looks)})
		require.NoError(t, err)
		m, err = sub.Claim(ctx)
		require.NoError(t, err)
		require.Equal(t, looks, string(m.Payload))
		require.Nil(t, m.Headers)
	})
}

func TestTopicHeaders(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		tp := NewTopic(c, "t", WithPrefix(uniq(t)))
		events, err := tp.Listen(ctx)
		require.NoError(t, err)
		subs := map[string]*Queue{}
		for _, name := range []string{"a", "b"} {
			subs[name], err = tp.Subscribe(ctx, name)
			require.NoError(t, err)
		}
		h := map[string]string{"traceparent": "00-1-2-01"}
		id, err := tp.Publish(ctx, []byte("hello"), WithHeaders(h))
		require.NoError(t, err)
		for name, q := range subs {
			m, err := q.Claim(ctx)
			require.NoError(t, err)
			require.Equal(t, h, m.Headers, name)
			require.Equal(t, "hello", string(m.Payload), name)
			require.NoError(t, m.Nack(ctx, WithCause(ErrSkipRetry)))
			dead, err := q.DeadLetters(ctx, 1)
			require.NoError(t, err)
			require.Equal(t, h, dead[0].Headers, name)
		}
		select {
		case ev := <-events:
			require.Equal(t, Event{ID: id, Payload: []byte("hello"), Headers: h}, ev)
		case <-ctx.Done():
			t.Fatal("no event")
		}
	})
}

// Headers past the bounds, or with an empty key, are refused with
// ErrInvalidArgument and nothing is written.
func TestHeadersBadInput(t *testing.T) {
	mr, c := newMini(t)
	ctx := context.Background()
	q := newQueue(t, c)
	tp := NewTopic(c, "t", WithPrefix(uniq(t)))
	_, err := tp.Subscribe(ctx, "s")
	require.NoError(t, err)
	keys := mr.Keys()
	many := map[string]string{}
	for i := range MaxHeaders + 1 {
		many[strings.Repeat("k", i+1)] = ""
	}
	for name, h := range map[string]map[string]string{
		"empty key": {"": "v"},
		"too many":  many,
		"too large": {"k": strings.Repeat("v", MaxHeaderBytes)},
	} {
		if _, err := q.Enqueue(ctx, nil, WithHeaders(h)); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("Enqueue with %s: %v, want ErrInvalidArgument", name, err)
		}
		if _, err := tp.Publish(ctx, nil, WithHeaders(h)); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("Publish with %s: %v, want ErrInvalidArgument", name, err)
		}
	}
	require.Equal(t, keys, mr.Keys(), "keys written")
	// At the bounds: accepted.
	exact := map[string]string{"k": strings.Repeat("v", MaxHeaderBytes-1)}
	_, err = q.Enqueue(ctx, nil, WithHeaders(exact))
	require.NoError(t, err)
	m, err := q.Claim(ctx)
	require.NoError(t, err)
	require.Equal(t, exact, m.Headers)
}

// A stored value that starts with the magic but is not a well-formed
// envelope (written before headers existed) reads as all payload.
func TestUnsealMalformed(t *testing.T) {
	for _, s := range []string{
		envelopeMagic,
		envelopeMagic + "\x01",
		envelopeMagic + "\x01\x05ab",
		envelopeMagic + "\x02\x01a\x01b\x01c",
		envelopeMagic + "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
		envelopeMagic + "\x7f",
	} {
		p, h := unseal(s)
		if string(p) != s || h != nil {
			t.Errorf("unseal(%q) = %q, %v; want it whole as payload", s, p, h)
		}
	}
}

// FuzzEnvelope: whatever the payload and headers, seal then unseal gives
// them back.
func FuzzEnvelope(f *testing.F) {
	f.Add([]byte("payload"), "k", "v", "k2", "v2")
	f.Add([]byte(envelopeMagic+"x"), "", "", "", "")
	f.Add([]byte{}, "traceparent", "00-1-2-01", "", "")
	f.Fuzz(func(t *testing.T, payload []byte, k1, v1, k2, v2 string) {
		h := map[string]string{}
		for _, kv := range [][2]string{{k1, v1}, {k2, v2}} {
			if kv[0] != "" {
				h[kv[0]] = kv[1]
			}
		}
		p, got := unseal(string(seal(payload, h)))
		if string(p) != string(payload) {
			t.Fatalf("payload %q came back %q", payload, p)
		}
		if len(h) == 0 {
			h = nil
		}
		if !maps.Equal(got, h) || (got == nil) != (h == nil) {
			t.Fatalf("headers %v came back %v", h, got)
		}
	})
}
