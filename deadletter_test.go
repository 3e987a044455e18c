package redlease

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// deadQueue is what deadLetterOps runs on: a way to get a Queue value
// with options (a plain or sharded queue, or a topic's subscription) and
// a way to add a message to it (Enqueue, or Publish).
type deadQueue struct {
	shards int
	open   func(opts ...QueueOption) (*Queue, error)
	add    func(ctx context.Context, payload []byte, opts ...EnqueueOption) (string, error)
}

// plainDeadQueue runs deadLetterOps on queue name with shards shards.
func plainDeadQueue(c redis.UniversalClient, prefix, name string, shards int) deadQueue {
	base := []QueueOption{WithPrefix(prefix), WithShards(shards)}
	return deadQueue{
		shards: shards,
		open: func(opts ...QueueOption) (*Queue, error) {
			q := NewQueue(c, name, append(slices.Clip(base), opts...)...)
			return q, q.check()
		},
		add: func(ctx context.Context, p []byte, opts ...EnqueueOption) (string, error) {
			return NewQueue(c, name, base...).Enqueue(ctx, p, opts...)
		},
	}
}

// topicDeadQueue runs deadLetterOps on subscription "s" of topic name,
// which has a second subscription "other" that must keep its copies.
func topicDeadQueue(ctx context.Context, c redis.UniversalClient, prefix, name string) (deadQueue, error) {
	tp := NewTopic(c, name, WithPrefix(prefix))
	if _, err := tp.Subscribe(ctx, "other"); err != nil {
		return deadQueue{}, err
	}
	return deadQueue{
		shards: 1,
		open:   func(opts ...QueueOption) (*Queue, error) { return tp.Subscribe(ctx, "s", opts...) },
		add:    tp.Publish,
	}, nil
}

// deadLetterOps takes a queue through every way a message dies (a handler
// error, ErrSkipRetry from Consume, Nack WithCause, an expired lease),
// DeadLetters and its pages, RetryDead (the message is consumed again from
// attempt 1), DeleteDead, both with no ids, and the dead-letter limit.
func deadLetterOps(ctx context.Context, dq deadQueue) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	noBackoff := WithRetryBackoff(func(int) time.Duration { return 0 })
	const limit = 4
	q, err := dq.open(WithMaxAttempts(2), noBackoff, WithDeadLetterLimit(limit*dq.shards))
	if err != nil {
		return err
	}
	claim := func(want string) (*Message, error) {
		m, err := q.Claim(ctx)
		if err != nil || m.ID != want {
			return nil, fmt.Errorf("claim: %+v %v, want %q", m, err, want)
		}
		return m, nil
	}
	start := time.Now()
	for _, id := range []string{"a", "b", "c", "d"} {
		if _, err := dq.add(ctx, []byte("p"+id), WithID(id)); err != nil {
			return fmt.Errorf("add %q: %w", id, err)
		}
		m, err := claim(id)
		if err != nil {
			return err
		}
		switch id {
		case "a": // skip-retry: dead after one attempt
			err = m.Nack(ctx, WithCause(fmt.Errorf("bad input: %w", ErrSkipRetry)))
		case "b": // two failures use up the attempts; the last cause is kept
			if err = m.Nack(ctx, WithCause(errors.New("first"))); err == nil {
				if m, err = claim(id); err == nil {
					err = m.Nack(ctx, WithCause(errors.New("second")))
				}
			}
		case "c": // a lease that ends, twice: no cause
			short, _ := dq.open(WithMaxAttempts(2), noBackoff, WithLease(20*time.Millisecond))
			if err = m.Nack(ctx); err == nil {
				if m, err = short.Claim(ctx); err == nil {
					time.Sleep(40 * time.Millisecond)
					_, err = short.Reclaim(ctx)
				}
			}
		case "d": // Consume: a handler error wrapping ErrSkipRetry
			err = m.Nack(ctx) // back to ready, attempt 1 used
			if err == nil {
				err = consumeOnce(ctx, q, func(context.Context, *Message) error {
					return fmt.Errorf("parse: %w", ErrSkipRetry)
				})
			}
		}
		if err != nil {
			return fmt.Errorf("killing %q: %w", id, err)
		}
	}
	if st, err := q.Stats(ctx); err != nil || st.depth() != (Stats{Dead: 4}) {
		return fmt.Errorf("stats %+v %v, want 4 dead", st, err)
	}
	want := []DeadLetter{
		{ID: "a", Payload: []byte("pa"), Attempts: 1, Err: "bad input: redlease: do not retry"},
		{ID: "b", Payload: []byte("pb"), Attempts: 2, Err: "second"},
		{ID: "c", Payload: []byte("pc"), Attempts: 2, Err: ""},
		{ID: "d", Payload: []byte("pd"), Attempts: 2, Err: "parse: redlease: do not retry"},
	}
	dead, err := q.DeadLetters(ctx, 10)
	if err != nil {
		return err
	}
	if err := sameDead(dead, want, start); err != nil {
		return fmt.Errorf("DeadLetters: %w", err)
	}
	// Pages of one, and a page after the last.
	var paged []DeadLetter
	page, err := q.DeadLetters(ctx, 1)
	for len(page) > 0 && err == nil && len(paged) < 10 {
		paged = append(paged, page...)
		page, err = q.DeadLettersAfter(ctx, page[len(page)-1], 1)
	}
	if err != nil {
		return err
	}
	if err := sameDead(paged, want, start); err != nil {
		return fmt.Errorf("DeadLetters in pages of one: %w", err)
	}

	// RetryDead: unknown ids count 0; the message comes back whole, at attempt 1.
	if n, err := q.RetryDead(ctx, "a", "nope", "a"); err != nil || n != 1 {
		return fmt.Errorf("RetryDead(a, nope, a) = %d %v, want 1", n, err)
	}
	m, err := claim("a")
	if err != nil {
		return err
	}
	if string(m.Payload) != "pa" || m.Attempt != 1 {
		return fmt.Errorf("retried dead letter claimed as %q attempt %d, want pa attempt 1", m.Payload, m.Attempt)
	}
	if err := m.Ack(ctx); err != nil {
		return err
	}
	// A page after a dead letter that is gone goes on from where it was.
	if n, err := q.DeleteDead(ctx, "b"); err != nil || n != 1 {
		return fmt.Errorf("DeleteDead(b) = %d %v, want 1", n, err)
	}
	if n, err := q.DeleteDead(ctx, "b"); err != nil || n != 0 {
		return fmt.Errorf("DeleteDead(b) again = %d %v, want 0", n, err)
	}
	if page, err := q.DeadLettersAfter(ctx, dead[1], 10); err != nil || sameDead(page, want[2:], start) != nil {
		return fmt.Errorf("DeadLettersAfter(deleted b) = %+v %v, want c, d", page, err)
	}

	// The limit keeps the newest: limit more deaths push c and d out.
	var newest []DeadLetter
	for i := range limit * dq.shards {
		id := fmt.Sprintf("n%03d", i)
		if _, err := dq.add(ctx, []byte("p"+id), WithID(id)); err != nil {
			return err
		}
		m, err := q.Claim(ctx)
		if err != nil {
			return err
		}
		if err := m.Nack(ctx, WithCause(ErrSkipRetry)); err != nil {
			return err
		}
		newest = append(newest, DeadLetter{ID: m.ID, Payload: m.Payload, Attempts: 1, Err: ErrSkipRetry.Error()})
	}
	dead, err = q.DeadLetters(ctx, 100)
	if err != nil {
		return err
	}
	if dq.shards == 1 {
		if err := sameDead(dead, newest, start); err != nil {
			return fmt.Errorf("after %d more deaths with a limit of %d: %w", limit, limit, err)
		}
	} else if len(dead) > limit*dq.shards || len(dead) < limit {
		// Each shard keeps its newest 4 (ids pick the shards).
		return fmt.Errorf("%d dead letters with a limit of %d over %d shards: %+v", len(dead), limit*dq.shards, dq.shards, dead)
	}

	// No ids: all of them, back to ready, consumed again.
	n, err := q.RetryDead(ctx)
	if err != nil || n != len(dead) {
		return fmt.Errorf("RetryDead() = %d %v, want %d", n, err, len(dead))
	}
	for range n {
		m, err := q.Claim(ctx)
		if err != nil || m.Attempt != 1 {
			return fmt.Errorf("claim after RetryDead(): %+v %v", m, err)
		}
		if err := m.Nack(ctx, WithCause(ErrSkipRetry)); err != nil {
			return err
		}
	}
	if n2, err := q.DeleteDead(ctx); err != nil || n2 != n {
		return fmt.Errorf("DeleteDead() = %d %v, want %d", n2, err, n)
	}
	if st, err := q.Stats(ctx); err != nil || st.depth() != (Stats{}) {
		return fmt.Errorf("stats %+v %v, want empty", st, err)
	}
	return nil
}

// consumeOnce runs Consume with h until h has run once and its message is
// settled (nothing in flight).
func consumeOnce(ctx context.Context, q *Queue, h func(context.Context, *Message) error) error {
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	var ran atomic.Int32
	done := make(chan error, 1)
	go func() {
		done <- q.Consume(cctx, func(ctx context.Context, m *Message) error { ran.Add(1); return h(ctx, m) })
	}()
	err := redistest.Poll(10*time.Second, func() error {
		st, err := q.Stats(ctx)
		if err == nil && (ran.Load() == 0 || st.InFlight > 0) {
			err = errors.New("handler not yet settled")
		}
		return err
	})
	stop()
	<-done
	if ran.Load() != 1 {
		return fmt.Errorf("handler ran %d times, want once", ran.Load())
	}
	return err
}

// sameDead compares dead letters with want, in order, and checks each
// died between start and now.
func sameDead(got, want []DeadLetter, start time.Time) error {
	if len(got) != len(want) {
		return fmt.Errorf("%d dead letters %+v, want %d", len(got), got, len(want))
	}
	for i, g := range got {
		w := want[i]
		if g.ID != w.ID || string(g.Payload) != string(w.Payload) || g.Attempts != w.Attempts || g.Err != w.Err {
			return fmt.Errorf("dead letter %d is %+v, want %+v", i, g, w)
		}
		// The Redis clock is this machine's; DiedAt has ms resolution.
		if g.DiedAt.Before(start.Add(-time.Second)) || g.DiedAt.After(time.Now().Add(time.Second)) {
			return fmt.Errorf("dead letter %q died at %v, outside the test (%v to now)", g.ID, g.DiedAt, start)
		}
	}
	return nil
}

func TestDeadLetterOps(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		t.Run("queue", func(t *testing.T) {
			require.NoError(t, deadLetterOps(ctx, plainDeadQueue(c, uniq(t), "q", 1)))
		})
		t.Run("sharded", func(t *testing.T) {
			require.NoError(t, deadLetterOps(ctx, plainDeadQueue(c, uniq(t), "q", 4)))
		})
		t.Run("subscription", func(t *testing.T) {
			dq, err := topicDeadQueue(ctx, c, uniq(t), "t")
			require.NoError(t, err)
			require.NoError(t, deadLetterOps(ctx, dq))
			// The other subscription still has every message.
			other, err := NewTopic(c, "t", WithPrefix(uniq(t))).Subscribe(ctx, "other")
			require.NoError(t, err)
			st, err := other.Stats(ctx)
			require.NoError(t, err)
			require.Equal(t, Stats{Ready: 8}, st.depth())
		})
	})
}

func TestClusterDeadLetterOps(t *testing.T) {
	cc := startCluster(t)
	ctx := context.Background()
	// Eight shards land on every master.
	require.NoError(t, deadLetterOps(ctx, plainDeadQueue(cc, uniq(t), "q", 8)))
	dq, err := topicDeadQueue(ctx, cc, uniq(t), "t")
	require.NoError(t, err)
	require.NoError(t, deadLetterOps(ctx, dq))
}

// Dead letters that died in the same millisecond sort by id, and a page
// after one that is gone starts at the first id after it.
func TestDeadLetterPagesThroughTies(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		q := newQueue(t, c, WithMaxAttempts(1), WithLease(20*time.Millisecond))
		var ids []string
		for _, id := range []string{"m", "a", "z", "b\xff", "b", "b\x00", "y"} {
			_, err := q.Enqueue(ctx, nil, WithID(id))
			require.NoError(t, err)
			ids = append(ids, id)
		}
		for range ids {
			_, err := q.Claim(ctx)
			require.NoError(t, err)
		}
		time.Sleep(40 * time.Millisecond)
		// One reclaim script buries them all: one Redis time for all.
		n, err := q.Reclaim(ctx)
		require.NoError(t, err)
		require.Equal(t, len(ids), n)
		slices.Sort(ids) // byte order, as Go compares strings
		all, err := q.DeadLetters(ctx, 100)
		require.NoError(t, err)
		require.Len(t, all, len(ids))
		for i, d := range all {
			require.Equal(t, ids[i], d.ID)
			require.True(t, d.DiedAt.Equal(all[0].DiedAt), "one reclaim, one time")
		}
		// Page by deleting each page's last one before asking for the next.
		var paged []string
		page, err := q.DeadLetters(ctx, 2)
		for len(page) > 0 && err == nil && len(paged) < 20 {
			for _, d := range page {
				paged = append(paged, d.ID)
			}
			last := page[len(page)-1]
			_, err = q.DeleteDead(ctx, last.ID)
			require.NoError(t, err)
			page, err = q.DeadLettersAfter(ctx, last, 2)
		}
		require.NoError(t, err)
		require.Equal(t, ids, paged)
	})
}

// RetryDead and DeleteDead run twice with one token (go-redis resending
// after a lost reply) do the work once and answer the same both times.
func TestDeadLetterScriptsAreSafeToResend(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		q := newQueue(t, c, WithMaxAttempts(1))
		for _, id := range []string{"a", "b", "c"} {
			_, err := q.Enqueue(ctx, []byte(id), WithID(id))
			require.NoError(t, err)
			m, err := q.Claim(ctx)
			require.NoError(t, err)
			require.NoError(t, m.Nack(ctx))
		}
		for _, tc := range []struct {
			script *redis.Script
			args   []any
			want   int64
			after  Stats
		}{
			{retryDeadScript, []any{"t1", "a", "b"}, 2, Stats{Ready: 2, Dead: 1}},
			{deleteDeadScript, []any{"t2"}, 1, Stats{Ready: 2}},
		} {
			for range 2 {
				n, err := tc.script.Run(ctx, c, q.shards[0].keys, tc.args...).Int64()
				require.NoError(t, err)
				require.Equal(t, tc.want, n)
				wantStats(t, q, tc.after)
			}
		}
		// A new token is a new request.
		n, err := q.RetryDead(ctx, "a")
		require.NoError(t, err)
		require.Zero(t, n)
	})
}

// A dead letter whose id was enqueued again since stays dead; the live
// message is untouched.
func TestRetryDeadKeepsALiveID(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		q := newQueue(t, c, WithMaxAttempts(1))
		_, err := q.Enqueue(ctx, []byte("old"), WithID("x"))
		require.NoError(t, err)
		m, err := q.Claim(ctx)
		require.NoError(t, err)
		require.NoError(t, m.Nack(ctx))
		_, err = q.Enqueue(ctx, []byte("new"), WithID("x"))
		require.NoError(t, err)
		n, err := q.RetryDead(ctx, "x")
		require.NoError(t, err)
		require.Zero(t, n)
		wantStats(t, q, Stats{Ready: 1, Dead: 1})
		m, err = q.Claim(ctx)
		require.NoError(t, err)
		require.Equal(t, "new", string(m.Payload))
		// The same id dying again replaces its older dead letter.
		require.NoError(t, m.Nack(ctx, WithCause(errors.New("again"))))
		dead, err := q.DeadLetters(ctx, 10)
		require.NoError(t, err)
		require.Len(t, dead, 1)
		require.Equal(t, "new", string(dead[0].Payload))
		require.Equal(t, "again", dead[0].Err)
	})
}

// A long error is cut to MaxErrLength bytes, on a rune boundary.
func TestDeadLetterErrIsBounded(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	q := newQueue(t, c, WithMaxAttempts(1))
	m := claimedJob(t, q)
	long := strings.Repeat("é", MaxErrLength) // 2 bytes each
	require.NoError(t, m.Nack(ctx, WithCause(errors.New("x"+long))))
	dead, err := q.DeadLetters(ctx, 1)
	require.NoError(t, err)
	require.Len(t, dead, 1)
	require.Equal(t, "x"+long[:MaxErrLength-2], dead[0].Err)
}

// Bad input to the dead-letter calls and options is refused, writing
// nothing.
func TestDeadLetterBadInput(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		q := newQueue(t, c)
		for name, call := range map[string]func() error{
			"limit 0":  func() error { _, err := newQueue(t, c, WithDeadLetterLimit(0)).Enqueue(ctx, nil); return err },
			"limit -1": func() error { _, err := newQueue(t, c, WithDeadLetterLimit(-1)).Enqueue(ctx, nil); return err },
			"limit over max": func() error {
				_, err := newQueue(t, c, WithDeadLetterLimit(MaxDeadLetterLimit+1)).Enqueue(ctx, nil)
				return err
			},
			"retry empty id": func() error { _, err := q.RetryDead(ctx, "a", ""); return err },
			"delete long id": func() error { _, err := q.DeleteDead(ctx, strings.Repeat("x", MaxIDLength+1)); return err },
			"too many ids":   func() error { _, err := q.RetryDead(ctx, make([]string, MaxDeadLetterLimit+1)...); return err },
			"dead after n 0": func() error { _, err := q.DeadLettersAfter(ctx, DeadLetter{ID: "a"}, 0); return err },
			"shutdown -1ns": func() error {
				return q.Consume(ctx, func(context.Context, *Message) error { return nil }, WithShutdownTimeout(-1))
			},
			"unique without id": func() error { _, err := q.Enqueue(ctx, nil, WithUniqueFor(time.Second)); return err },
			"unique 0":          func() error { _, err := q.Enqueue(ctx, nil, WithID("a"), WithUniqueFor(0)); return err },
			"unique -1s":        func() error { _, err := q.Enqueue(ctx, nil, WithID("a"), WithUniqueFor(-time.Second)); return err },
			"unique 1us":        func() error { _, err := q.Enqueue(ctx, nil, WithID("a"), WithUniqueFor(time.Microsecond)); return err },
		} {
			if err := call(); !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("%s: %v, want ErrInvalidArgument", name, err)
			}
		}
		if keys := c.Keys(ctx, uniq(t)+":*").Val(); len(keys) != 0 {
			t.Fatalf("bad input wrote %v", keys)
		}
	})
}

// DeadLetters with any n >= 1 is valid: a huge n gets every dead letter,
// not a Redis error about the range.
func TestDeadLettersHugeN(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		q := newQueue(t, c, WithMaxAttempts(1))
		require.NoError(t, claimedJob(t, q).Nack(ctx))
		for _, n := range []int{1e15, 1e17, math.MaxInt} {
			dead, err := q.DeadLetters(ctx, n)
			require.NoError(t, err, "DeadLetters(%d)", n)
			require.Len(t, dead, 1)
			after, err := q.DeadLettersAfter(ctx, DeadLetter{DiedAt: dead[0].DiedAt.Add(-time.Millisecond)}, n)
			require.NoError(t, err, "DeadLettersAfter(%d)", n)
			require.Len(t, after, 1)
		}
	})
}

// A dead-letter list an older version left under the shard's old "dead"
// key does not get in the way: a message dies as usual.
func TestOldDeadListIsLeftAlone(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		q := newQueue(t, c, WithMaxAttempts(1))
		old := strings.TrimSuffix(q.shards[0].dead, "deadletters") + "dead"
		require.NoError(t, c.RPush(ctx, old, "1:1764500000000:1:xold").Err())
		require.NoError(t, claimedJob(t, q).Nack(ctx))
		wantStats(t, q, Stats{Dead: 1})
	})
}

// RetryDead of a full list, MaxDeadLetterLimit dead letters
// of 1 KiB on one shard, in one script; the log says how long it took.
func TestDeadLetterLimitInOneScript(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	q := newQueue(t, c, WithDeadLetterLimit(MaxDeadLetterLimit))
	s := q.shards[0]
	body := "1:" + strconv.FormatInt(time.Now().UnixMilli(), 10) + ":4:boom" + strings.Repeat("x", 1024)
	for i := 0; i < MaxDeadLetterLimit; i += 1000 {
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j := i; j < i+1000; j++ {
				id := fmt.Sprintf("id-%05d", j)
				p.HSet(ctx, s.messages, "d"+id, body)
				p.ZAdd(ctx, s.dead, redis.Z{Member: id})
			}
			return nil
		})
		require.NoError(t, err)
	}
	start := time.Now()
	n, err := q.RetryDead(ctx)
	retry := time.Since(start)
	require.NoError(t, err)
	require.Equal(t, MaxDeadLetterLimit, n)
	wantStats(t, q, Stats{Ready: MaxDeadLetterLimit})
	_, err = c.Del(ctx, s.ready, s.messages).Result()
	require.NoError(t, err)
	t.Logf("RetryDead() of %d dead letters of 1 KiB: %v", n, retry.Round(time.Millisecond))
}
