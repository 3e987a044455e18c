package redlease

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func newTopic(t *testing.T, c redis.UniversalClient, opts ...QueueOption) *Topic {
	t.Helper()
	return NewTopic(c, "t", append([]QueueOption{WithPrefix(uniq(t))}, opts...)...)
}

func subscribe(t *testing.T, tp *Topic, name string, opts ...QueueOption) *Queue {
	t.Helper()
	q, err := tp.Subscribe(context.Background(), name, opts...)
	require.NoError(t, err)
	return q
}

func publish(t *testing.T, tp *Topic, payload string, opts ...EnqueueOption) string {
	t.Helper()
	id, err := tp.Publish(context.Background(), []byte(payload), opts...)
	require.NoError(t, err)
	return id
}

// drainQueue claims and acks everything q has now, returning the payloads
// in the order claimed.
func drainQueue(t *testing.T, q *Queue) []string {
	t.Helper()
	var got []string
	for range 100_000 {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		m, err := q.Claim(ctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			return got
		}
		require.NoError(t, err)
		got = append(got, string(m.Payload))
		require.NoError(t, m.Ack(context.Background()))
	}
	t.Fatal("queue never emptied")
	return nil
}

// payloadFields returns the topic's stored payloads and counts, without
// its sequence counter: empty once every copy is acked or gone.
func payloadFields(t *testing.T, c redis.UniversalClient, tp *Topic) map[string]string {
	t.Helper()
	h, err := c.HGetAll(context.Background(), tp.keys.payloads).Result()
	require.NoError(t, err)
	delete(h, "seq")
	return h
}

// checkRefs asserts the reference counts match the subscriptions: every
// stored payload's count is the number of "p" fields that refer to it in
// the subscriptions named, and every such field refers to a payload.
func checkRefs(t *testing.T, c redis.UniversalClient, tp *Topic, subs ...string) {
	t.Helper()
	ctx := context.Background()
	refs := map[string]int{}
	for _, name := range subs {
		h := c.HGetAll(ctx, newSubscriptionShard(tp.prefix, tp.name, name).messages).Val()
		for f, v := range h {
			if strings.HasPrefix(f, "p") {
				refs[v]++
			}
		}
	}
	stored := payloadFields(t, c, tp)
	for ref, n := range refs {
		if stored["n"+ref] != strconv.Itoa(n) {
			t.Fatalf("payload %s: count %q, want %d", ref, stored["n"+ref], n)
		}
		if _, ok := stored["p"+ref]; !ok {
			t.Fatalf("payload %s is referred to but missing", ref)
		}
	}
	require.Len(t, stored, 2*len(refs), "stored payloads nobody refers to: %v", stored)
}

func TestTopicFanOut(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		tp := newTopic(t, c)
		// With no subscription, a publish succeeds and stores nothing.
		publish(t, tp, "before")
		require.Empty(t, payloadFields(t, c, tp))
		a, b := subscribe(t, tp, "a"), subscribe(t, tp, "b")
		subs, err := tp.Subscriptions(ctx)
		require.NoError(t, err)
		require.Equal(t, []string{"a", "b"}, subs)
		id := publish(t, tp, "one")
		ids, err := tp.PublishBatch(ctx, [][]byte{[]byte("two"), {}, bytes.Repeat([]byte{0, ':', 0xff}, 1000)})
		require.NoError(t, err)
		require.Len(t, ids, 3)
		checkRefs(t, c, tp, "a", "b")
		require.Len(t, payloadFields(t, c, tp), 8, "each payload stored once")
		for _, q := range []*Queue{a, b} {
			m, err := q.Claim(ctx)
			require.NoError(t, err)
			require.Equal(t, id, m.ID, "one id per message in every subscription")
			require.Equal(t, "one", string(m.Payload))
			require.Equal(t, 1, m.Attempt)
			require.NoError(t, m.Ack(ctx))
		}
		require.Equal(t, []string{"two", "", strings.Repeat("\x00:\xff", 1000)}, drainQueue(t, a))
		checkRefs(t, c, tp, "a", "b")
		require.Len(t, payloadFields(t, c, tp), 6, "b still refers to three payloads")
		require.Equal(t, []string{"two", "", strings.Repeat("\x00:\xff", 1000)}, drainQueue(t, b))
		require.Empty(t, payloadFields(t, c, tp), "the last ack frees each payload")
		wantStats(t, a, Stats{})
		wantStats(t, b, Stats{})
	})
}

// A subscription's Queue keeps every Queue behaviour: retries, dead
// letters with their payload, stale acks refused, direct Enqueue.
func TestTopicSubscriptionIsAQueue(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		tp := newTopic(t, c, WithLease(time.Second), WithRetryBackoff(func(int) time.Duration { return 0 }))
		a := subscribe(t, tp, "a", WithMaxAttempts(2))
		b := subscribe(t, tp, "b")
		id := publish(t, tp, "job")
		m, err := a.Claim(ctx)
		require.NoError(t, err)
		require.NoError(t, m.Nack(ctx))
		m2, err := a.Claim(ctx)
		require.NoError(t, err)
		require.Equal(t, 2, m2.Attempt)
		require.ErrorIs(t, m.Ack(ctx), ErrNotHeld, "a stale claim cannot ack")
		require.NoError(t, m2.Nack(ctx)) // the last attempt: dead
		dead, err := a.DeadLetters(ctx, 10)
		require.NoError(t, err)
		require.Len(t, dead, 1)
		require.Equal(t, id, dead[0].ID)
		require.Equal(t, "job", string(dead[0].Payload))
		require.Equal(t, 2, dead[0].Attempts)
		wantStats(t, a, Stats{Dead: 1})
		checkRefs(t, c, tp, "a", "b")
		require.Equal(t, []string{"job"}, drainQueue(t, b))
		require.Empty(t, payloadFields(t, c, tp), "a dead letter keeps its own copy")

		// Enqueue on a subscription adds to it alone.
		_, err = a.Enqueue(ctx, []byte("direct"))
		require.NoError(t, err)
		wantStats(t, b, Stats{})
		checkRefs(t, c, tp, "a", "b")
		require.Equal(t, []string{"direct"}, drainQueue(t, a))
		require.Empty(t, payloadFields(t, c, tp))

		// Consume works on it, and Reclaim.
		publish(t, tp, "consumed")
		cctx, cancel := context.WithCancel(ctx)
		var got atomic.Value
		err = b.Consume(cctx, func(_ context.Context, m *Message) error {
			got.Store(string(m.Payload))
			cancel()
			return nil
		})
		require.ErrorIs(t, err, context.Canceled)
		require.Equal(t, "consumed", got.Load())
		n, err := a.Reclaim(ctx)
		require.NoError(t, err)
		require.Zero(t, n)
		require.Equal(t, []string{"consumed"}, drainQueue(t, a))
		require.Empty(t, payloadFields(t, c, tp))
	})
}

// Bad input gets ErrInvalidArgument and writes nothing.
func TestTopicBadInput(t *testing.T) {
	mr, c := newMini(t)
	ctx := context.Background()
	var nilClient *redis.Client
	for name, tp := range map[string]*Topic{
		"nil client":    NewTopic(nil, "t"),
		"typed nil":     NewTopic(nilClient, "t"),
		"empty name":    NewTopic(c, ""),
		"brace":         NewTopic(c, "a{b"),
		"shards":        NewTopic(c, "t", WithShards(2)),
		"bad prefix":    NewTopic(c, "t", WithPrefix("")),
		"nil logger":    NewTopic(c, "t", WithLogger(nil)),
		"zero lease":    NewTopic(c, "t", WithLease(0)),
		"zero attempts": NewTopic(c, "t", WithMaxAttempts(0)),
	} {
		_, err := tp.Subscribe(ctx, "s")
		require.ErrorIs(t, err, ErrInvalidArgument, name)
		_, err = tp.Publish(ctx, []byte("x"))
		require.ErrorIs(t, err, ErrInvalidArgument, name)
		_, err = tp.PublishBatch(ctx, [][]byte{[]byte("x")})
		require.ErrorIs(t, err, ErrInvalidArgument, name)
		require.ErrorIs(t, tp.Unsubscribe(ctx, "s"), ErrInvalidArgument, name)
		_, err = tp.Subscriptions(ctx)
		require.ErrorIs(t, err, ErrInvalidArgument, name)
		_, err = tp.Listen(ctx)
		require.ErrorIs(t, err, ErrInvalidArgument, name)
	}
	tp := NewTopic(c, "t")
	for name, call := range map[string]func() error{
		"empty subscription": func() error { _, err := tp.Subscribe(ctx, ""); return err },
		"brace subscription": func() error { _, err := tp.Subscribe(ctx, "}"); return err },
		"sharded":            func() error { _, err := tp.Subscribe(ctx, "s", WithShards(3)); return err },
		"other prefix":       func() error { _, err := tp.Subscribe(ctx, "s", WithPrefix("other")); return err },
		"bad option":         func() error { _, err := tp.Subscribe(ctx, "s", WithLease(-1)); return err },
		"empty unsubscribe":  func() error { return tp.Unsubscribe(ctx, "") },
		"big payload":        func() error { _, err := tp.Publish(ctx, make([]byte, MaxPayload+1)); return err },
		"empty id":           func() error { _, err := tp.Publish(ctx, nil, WithID("")); return err },
		"negative delay":     func() error { _, err := tp.Publish(ctx, nil, WithDelay(-time.Second)); return err },
		"big batch payload": func() error {
			_, err := tp.PublishBatch(ctx, [][]byte{nil, make([]byte, MaxPayload+1)})
			return err
		},
		"ring listen": func() error {
			ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": mr.Addr()}})
			defer ring.Close()
			_, err := NewTopic(ring, "t").Listen(ctx)
			return err
		},
	} {
		require.ErrorIs(t, call(), ErrInvalidArgument, name)
	}
	require.Empty(t, mr.Keys(), "bad input wrote keys")
	// An empty batch publishes nothing and succeeds.
	ids, err := tp.PublishBatch(ctx, nil)
	require.NoError(t, err)
	require.Empty(t, ids)
	require.Empty(t, mr.Keys())
}

func TestTopicSubscribeIsIdempotent(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		tp := newTopic(t, c)
		a1 := subscribe(t, tp, "a")
		publish(t, tp, "one")
		a2 := subscribe(t, tp, "a")
		publish(t, tp, "two")
		subs, err := tp.Subscriptions(ctx)
		require.NoError(t, err)
		require.Equal(t, []string{"a"}, subs)
		wantStats(t, a1, Stats{Ready: 2})
		require.Equal(t, []string{"one", "two"}, drainQueue(t, a2))
	})
}

// A publisher whose view of the subscriptions is stale learns them in the
// same call: a subscription made through another Topic value gets every
// message published after Subscribe returned.
func TestTopicStaleView(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		pub, admin := newTopic(t, c), newTopic(t, c)
		a := subscribe(t, admin, "a")
		publish(t, pub, "one")
		b := subscribe(t, admin, "b")
		publish(t, pub, "two")
		require.NoError(t, admin.Unsubscribe(ctx, "a"))
		publish(t, pub, "three")
		wantStats(t, a, Stats{})
		require.Equal(t, []string{"two", "three"}, drainQueue(t, b))
		require.Empty(t, payloadFields(t, c, pub))
	})
}

// Subscribing while publishers run: every message is in every subscription
// that existed when it was published, or in none (never half); a new
// subscription gets every message published after Subscribe returned, so
// each publisher's messages in it are a suffix of what it published.
func TestTopicSubscribeMidStream(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		const publishers, each = 3, 150
		early := subscribe(t, newTopic(t, c), "early")
		var lateSubscribed atomic.Bool
		var firstAfter [publishers]atomic.Int64 // first message published after Subscribe returned
		var wg sync.WaitGroup
		for p := range publishers {
			firstAfter[p].Store(-1)
			tp := newTopic(t, c) // a Topic value per publisher: each view goes stale
			wg.Go(func() {
				for i := range each {
					if lateSubscribed.Load() && firstAfter[p].Load() < 0 {
						firstAfter[p].Store(int64(i))
					}
					if _, err := tp.Publish(ctx, fmt.Appendf(nil, "%d:%d", p, i)); err != nil {
						t.Error(err)
						return
					}
					if i%10 == 0 {
						time.Sleep(time.Millisecond)
					}
				}
			})
		}
		time.Sleep(20 * time.Millisecond)
		late := subscribe(t, newTopic(t, c), "late")
		lateSubscribed.Store(true)
		wg.Wait()
		want := map[string]bool{}
		for p := range publishers {
			for i := range each {
				want[fmt.Sprintf("%d:%d", p, i)] = true
			}
		}
		got := drainQueue(t, early)
		require.Len(t, got, len(want))
		for _, s := range got {
			require.True(t, want[s], s)
		}
		seen := [publishers][]int{}
		for _, s := range drainQueue(t, late) {
			var p, i int
			_, err := fmt.Sscanf(s, "%d:%d", &p, &i)
			require.NoError(t, err)
			seen[p] = append(seen[p], i)
		}
		for p := range publishers {
			first := int(firstAfter[p].Load())
			if first < 0 {
				first = each // it had finished before Subscribe returned
			}
			s := seen[p]
			require.True(t, slices.IsSorted(s), "publisher %d out of order: %v", p, s)
			if len(s) > 0 {
				require.Equal(t, each-s[0], len(s), "publisher %d: not a suffix: %v", p, s)
			}
			require.GreaterOrEqual(t, len(s), each-first, "publisher %d: missed messages published after Subscribe returned", p)
		}
	})
}

// Unsubscribe deletes the subscription and its whole backlog, in every
// state, and frees the payloads only it referred to; other subscriptions
// keep theirs.
func TestTopicUnsubscribeBacklog(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		tp := newTopic(t, c, WithRetryBackoff(func(int) time.Duration { return 0 }))
		a := subscribe(t, tp, "a", WithMaxAttempts(1))
		b := subscribe(t, tp, "b")
		const many = 2*drainBatch + 37 // several drain steps
		batch := make([][]byte, many)
		for i := range batch {
			batch[i] = fmt.Appendf(nil, "m%d", i)
		}
		_, err := tp.PublishBatch(ctx, batch)
		require.NoError(t, err)
		publish(t, tp, "later", WithDelay(time.Hour))
		held, err := a.Claim(ctx) // in flight
		require.NoError(t, err)
		dying, err := a.Claim(ctx)
		require.NoError(t, err)
		require.NoError(t, dying.Nack(ctx)) // dead
		wantStats(t, a, Stats{Ready: many - 2, Delayed: 1, InFlight: 1, Dead: 1})
		checkRefs(t, c, tp, "a", "b")

		require.NoError(t, tp.Unsubscribe(ctx, "a"))
		subs, err := tp.Subscriptions(ctx)
		require.NoError(t, err)
		require.Equal(t, []string{"b"}, subs)
		keys, err := c.Keys(ctx, tp.prefix+":topic:{t}:sub:a:*").Result()
		require.NoError(t, err)
		require.Empty(t, keys)
		require.Empty(t, c.HKeys(ctx, tp.keys.trashes).Val())
		wantStats(t, a, Stats{})
		require.ErrorIs(t, held.Ack(ctx), ErrNotHeld)
		checkRefs(t, c, tp, "b")
		wantStats(t, b, Stats{Ready: many, Delayed: 1})

		// The name is free at once: a new "a" gets only new messages.
		a = subscribe(t, tp, "a")
		publish(t, tp, "new")
		require.Equal(t, []string{"new"}, drainQueue(t, a))
		wantStats(t, b, Stats{Ready: many + 1, Delayed: 1})
		m, err := b.Claim(ctx)
		require.NoError(t, err)
		require.Equal(t, "m0", string(m.Payload))
		require.NoError(t, m.Ack(ctx))
		checkRefs(t, c, tp, "a", "b")
		require.NoError(t, tp.Unsubscribe(ctx, "b"))
		require.Empty(t, payloadFields(t, c, tp), "no payload outlives its subscriptions")
		require.NoError(t, tp.Unsubscribe(ctx, "never-was"))
	})
}

// An Unsubscribe cut short leaves its trash to the next one.
func TestTopicUnsubscribeFinishesEarlierWork(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		tp := newTopic(t, c)
		subscribe(t, tp, "a")
		subscribe(t, tp, "b")
		_, err := tp.PublishBatch(ctx, make([][]byte, 3*drainBatch))
		require.NoError(t, err)
		cut, cancel := context.WithCancel(ctx)
		cancel()
		// The first script runs on a live context; cut the drain short by
		// running the unsubscribe script alone.
		s := newSubscriptionShard(tp.prefix, tp.name, "a")
		keys := []string{tp.keys.version, tp.keys.subs, tp.keys.done, tp.keys.trashes, tp.keys.payloads + ":trash-test",
			s.messages, s.ready, s.delayed, s.inflight, s.dead, s.marker, s.reclaimer, s.done}
		require.NoError(t, run(ctx, c, unsubscribeScript, keys, "a", "tok", "v-unsub").Err())
		require.Error(t, tp.drain(cut))
		require.Equal(t, []string{keys[4]}, c.HKeys(ctx, tp.keys.trashes).Val())
		require.NoError(t, tp.Unsubscribe(ctx, "b"))
		require.Empty(t, c.HKeys(ctx, tp.keys.trashes).Val())
		require.Empty(t, payloadFields(t, c, tp))
		require.Empty(t, c.Keys(ctx, tp.prefix+":*trash*").Val())
	})
}

// WithID dedupes per subscription; WithDelay delays each copy.
func TestTopicPublishOptions(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		tp := newTopic(t, c)
		a, b := subscribe(t, tp, "a"), subscribe(t, tp, "b")
		require.Equal(t, "x", publish(t, tp, "first", WithID("x")))
		require.Equal(t, []string{"first"}, drainQueue(t, a)) // frees x in a only
		require.Equal(t, "x", publish(t, tp, "second", WithID("x")))
		id, err := tp.Publish(ctx, []byte("third"), WithID("x"))
		require.ErrorIs(t, err, ErrDuplicate, "x is live in every subscription")
		require.Equal(t, "x", id)
		require.Equal(t, []string{"second"}, drainQueue(t, a))
		require.Equal(t, []string{"first"}, drainQueue(t, b))
		require.Empty(t, payloadFields(t, c, tp))

		publish(t, tp, "later", WithDelay(300*time.Millisecond))
		wantStats(t, a, Stats{Delayed: 1})
		wantStats(t, b, Stats{Delayed: 1})
		start := time.Now()
		for _, q := range []*Queue{a, b} {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			m, err := q.Claim(cctx)
			cancel()
			require.NoError(t, err)
			require.Equal(t, "later", string(m.Payload))
			require.NoError(t, m.Ack(ctx))
		}
		require.GreaterOrEqual(t, time.Since(start), 250*time.Millisecond)
		require.Empty(t, payloadFields(t, c, tp))
	})
}

// A batch larger than one script call reaches every subscription whole and
// in order.
func TestTopicBigBatchInOrder(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		tp := newTopic(t, c)
		const subs = 12 // maxPublishDeliveries/12 messages per call
		var qs []*Queue
		var names []string
		for i := range subs {
			names = append(names, strconv.Itoa(i))
			qs = append(qs, subscribe(t, tp, names[i]))
		}
		n := 3*maxPublishDeliveries/subs + 5
		batch := make([][]byte, n)
		for i := range batch {
			batch[i] = []byte(strconv.Itoa(i))
		}
		ids, err := tp.PublishBatch(ctx, batch)
		require.NoError(t, err)
		for _, q := range qs {
			got, err := c.LRange(ctx, q.shards[0].ready, 0, -1).Result()
			require.NoError(t, err)
			require.Equal(t, ids, got)
		}
		checkRefs(t, c, tp, names...)
		for _, q := range qs {
			m, err := q.Claim(ctx)
			require.NoError(t, err)
			require.Equal(t, "0", string(m.Payload))
		}
	})
}

// Publish is one round trip once the Topic knows its subscriptions.
func TestTopicPublishCost(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	tp := newTopic(t, c)
	for i := range 10 {
		subscribe(t, tp, strconv.Itoa(i))
	}
	publish(t, tp, "learn") // learns the subscriptions
	var trips atomic.Int64
	counted := redis.NewClient(c.Options())
	defer counted.Close()
	counted.AddHook(countTrips{&trips})
	tp2 := NewTopic(counted, "t", WithPrefix(uniq(t)))
	publish(t, tp2, "learn")
	trips.Store(0)
	before := commandStats(t, c)
	publish(t, tp2, "x")
	delta, total := commandsSince(t, c, before)
	require.Equal(t, int64(1), trips.Load(), "round trips")
	require.Equal(t, int64(1), delta["evalsha"], "%v", delta)
	t.Logf("publish to 10 subscriptions: %d commands %v", total, delta)
	_, err := tp2.PublishBatch(ctx, make([][]byte, 100))
	require.NoError(t, err)
	require.Equal(t, int64(2), trips.Load(), "a batch is one round trip")
}

// countTrips counts the round trips a client makes.
type countTrips struct{ n *atomic.Int64 }

func (countTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h countTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.n.Add(1); return next(ctx, cmd) }
}
func (h countTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { h.n.Add(1); return next(ctx, cmds) }
}

// Every topic script is safe to run twice: the second run repeats nothing.
func TestTopicScriptsAreSafeToResend(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		tp := newTopic(t, c)
		a := subscribe(t, tp, "a")
		publish(t, tp, "learn")
		drainQueue(t, a)
		v := tp.view.Load()
		calls, _, _ := tp.publishCalls(v, publishOptions{}, [][]any{{"id1", []byte("p")}}, []int{0})
		require.Len(t, calls, 1)
		for range 2 {
			res, err := publishScript.call(ctx, c, calls[0].keys, calls[0].args...).Slice()
			require.NoError(t, err)
			require.Equal(t, int64(1), res[0])
		}
		wantStats(t, a, Stats{Ready: 1})
		checkRefs(t, c, tp, "a")

		// Subscribe twice: one change of version. The second run, arriving
		// after an Unsubscribe, does not bring the subscription back.
		sub := []string{tp.keys.version, tp.keys.subs, tp.keys.done}
		require.NoError(t, run(ctx, c, subscribeScript, sub, "b", "tok-b", "v1").Err())
		require.NoError(t, run(ctx, c, subscribeScript, sub, "b", "tok-b", "v2").Err())
		require.Equal(t, "v1", c.Get(ctx, tp.keys.version).Val())
		require.NoError(t, tp.Unsubscribe(ctx, "b"))
		require.NoError(t, run(ctx, c, subscribeScript, sub, "b", "tok-b", "v3").Err())
		subs, err := tp.Subscriptions(ctx)
		require.NoError(t, err)
		require.Equal(t, []string{"a"}, subs)
		require.NoError(t, run(ctx, c, subscribeScript, sub, "b", "tok-b2", "v4").Err())

		// Unsubscribe resent after the name was subscribed and published to
		// again: the resend deletes nothing new.
		s := newSubscriptionShard(tp.prefix, tp.name, "a")
		keys := []string{tp.keys.version, tp.keys.subs, tp.keys.done, tp.keys.trashes, tp.keys.payloads + ":trash-1",
			s.messages, s.ready, s.delayed, s.inflight, s.dead, s.marker, s.reclaimer, s.done}
		require.NoError(t, run(ctx, c, unsubscribeScript, keys, "a", "tok", "v-unsub").Err())
		a = subscribe(t, tp, "a")
		publish(t, tp, "kept")
		keys[4] = tp.keys.payloads + ":trash-2"
		require.NoError(t, run(ctx, c, unsubscribeScript, keys, "a", "tok", "v-unsub").Err())
		wantStats(t, a, Stats{Ready: 1})
		subs, err = tp.Subscriptions(ctx)
		require.NoError(t, err)
		require.Equal(t, []string{"a", "b"}, subs)

		// Drain twice: the second finds the work done.
		drain := []string{tp.keys.payloads, tp.keys.trashes, tp.keys.payloads + ":trash-1"}
		for range 2 {
			require.NoError(t, run(ctx, c, drainScript, drain, drainBatch).Err())
		}
		require.Empty(t, c.HKeys(ctx, tp.keys.trashes).Val())
		checkRefs(t, c, tp, "a", "b")
		require.Equal(t, []string{"kept"}, drainQueue(t, a))
	})
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	require.NoError(t, err)
	return n
}

// Random operations on a topic keep every reference count exact.
func TestTopicRefcountsStayExact(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(1, 2))
		tp := newTopic(t, c, WithMaxAttempts(2), WithRetryBackoff(func(int) time.Duration { return 0 }))
		names := []string{"a", "b", "c"}
		qs := map[string]*Queue{}
		for _, n := range names {
			qs[n] = subscribe(t, tp, n)
		}
		var held []*Message
		for step := range 600 {
			q := qs[names[rng.IntN(len(names))]]
			switch op := rng.IntN(10); {
			case op < 3:
				opts := []EnqueueOption{}
				if rng.IntN(3) == 0 {
					opts = append(opts, WithID(strconv.Itoa(rng.IntN(20))))
				}
				if _, err := tp.Publish(ctx, fmt.Appendf(nil, "p%d", step), opts...); err != nil {
					require.ErrorIs(t, err, ErrDuplicate)
				}
			case op == 3:
				_, err := q.Enqueue(ctx, fmt.Appendf(nil, "e%d", step))
				require.NoError(t, err)
			case op < 6:
				cctx, cancel := context.WithTimeout(ctx, 5*time.Millisecond)
				m, err := q.Claim(cctx)
				cancel()
				if err == nil {
					held = append(held, m)
				}
			case op < 9 && len(held) > 0:
				i := rng.IntN(len(held))
				m := held[i]
				held = slices.Delete(held, i, i+1)
				if rng.IntN(2) == 0 {
					_ = m.Ack(ctx)
				} else {
					_ = m.Nack(ctx)
				}
			case op == 9 && rng.IntN(8) == 0:
				n := names[rng.IntN(len(names))]
				require.NoError(t, tp.Unsubscribe(ctx, n))
				qs[n] = subscribe(t, tp, n)
			}
			if step%50 == 0 {
				checkRefs(t, c, tp, names...)
			}
		}
		checkRefs(t, c, tp, names...)
		for _, n := range names {
			require.NoError(t, tp.Unsubscribe(ctx, n))
		}
		require.Empty(t, payloadFields(t, c, tp))
	})
}
