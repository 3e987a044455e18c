package redlease

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// Defects found by review, each shown failing before its fix.

// A resent Publish of an id live in every subscription reports
// ErrDuplicate again, as a resent Enqueue does: only a publish that did
// something is remembered.
func TestTopicResentDuplicatePublish(t *testing.T) {
	srv := redistest.Own(t)
	c, hooks := hookedClient(t, srv.Addr)
	ctx := context.Background()
	tp := NewTopic(c, "t")
	a := subscribe(t, tp, "a")
	publish(t, tp, "first", WithID("x"))
	hooks.loseReplyTo("evalsha")
	_, err := tp.Publish(ctx, []byte("again"), WithID("x"))
	require.Equal(t, 1, hooks.firedCount(), "the reply was lost and the call resent")
	require.ErrorIs(t, err, ErrDuplicate)
	wantStats(t, a, Stats{Ready: 1})
}

// batchOf returns n payloads "0", "1", ...
func batchOf(n int) [][]byte {
	b := make([][]byte, n)
	for i := range b {
		b[i] = []byte(strconv.Itoa(i))
	}
	return b
}

// hookedTopic returns topic "t" on a server of the test's own, through a
// client whose connections hooks steer, with a subscription "a" the Topic
// has published to, so its next publish is one round trip.
func hookedTopic(t *testing.T) (*redistest.Server, *redis.Client, *connHooks, *Topic, *Queue) {
	t.Helper()
	srv := redistest.Own(t)
	c, hooks := hookedClient(t, srv.Addr)
	tp := NewTopic(c, "t")
	a := subscribe(t, tp, "a")
	publish(t, tp, "learn")
	drainQueue(t, a)
	return srv, c, hooks, tp, a
}

// A batch of several script calls reaches a subscription in order even
// when Redis lacks the script and another client loads it between the
// calls: a call refused with NOSCRIPT and sent again would land after
// the ones that ran.
func TestTopicBatchInOrderAfterScriptFlush(t *testing.T) {
	srv, c, hooks, tp, a := hookedTopic(t)
	ctx := context.Background()
	require.NoError(t, c.ScriptFlush(ctx).Err())
	admin := srv.Client(t)
	hooks.splitAt("\r\neval\r\n", func() { _ = publishScript.Load(ctx, admin).Err() }) // between the batch's first two script calls
	ids, err := tp.PublishBatch(ctx, batchOf(enqueueChunk+5))
	require.NoError(t, err)
	require.Equal(t, 1, hooks.firedCount(), "the batch's calls were split")
	got, err := c.LRange(ctx, a.shards[0].ready, 0, -1).Result()
	require.NoError(t, err)
	require.Equal(t, ids, got)
}

// When the subscriptions change between a batch's calls, the calls
// refused as stale, and only those, are sent again for the new
// subscriptions: no message twice, none to a subscription that did not
// exist when its call ran.
func TestTopicBatchResendsOnlyStaleCalls(t *testing.T) {
	srv, c, hooks, tp, a := hookedTopic(t)
	ctx := context.Background()
	admin := NewTopic(srv.Client(t), "t")
	hooks.splitAt("\r\neval\r\n", func() { _, _ = admin.Subscribe(ctx, "b") }) // between the batch's first two script calls
	ids, err := tp.PublishBatch(ctx, batchOf(enqueueChunk+5))
	require.NoError(t, err)
	require.Equal(t, 1, hooks.firedCount(), "the batch's calls were split")
	gotA, err := c.LRange(ctx, a.shards[0].ready, 0, -1).Result()
	require.NoError(t, err)
	require.Equal(t, ids, gotA, "a: the whole batch, once, in order")
	b := subscribe(t, admin, "b")
	gotB, err := c.LRange(ctx, b.shards[0].ready, 0, -1).Result()
	require.NoError(t, err)
	require.Equal(t, ids[enqueueChunk:], gotB, "b: only what was published after it subscribed")
	checkRefs(t, c, tp, "a", "b")
}

// The version is random, not a counter that Redis losing writes (a
// failover to a lagging replica) could bring back to a value a publisher
// cached with other subscriptions.
func TestTopicVersionNeverRepeats(t *testing.T) {
	srv := redistest.Own(t)
	c := srv.Client(t)
	ctx := context.Background()
	admin, pub := NewTopic(c, "t"), NewTopic(c, "t")
	subscribe(t, admin, "a")
	before := c.Get(ctx, admin.keys.version).Val()
	subscribe(t, admin, "b")
	publish(t, pub, "learn") // pub caches {a, b}
	// What a replica that missed Subscribe "b" holds after a failover.
	require.NoError(t, c.SRem(ctx, admin.keys.subs, "b").Err())
	require.NoError(t, c.Set(ctx, admin.keys.version, before, 0).Err())
	for _, k := range newSubscriptionShard(admin.prefix, "t", "b").keys[:8] {
		require.NoError(t, c.Del(ctx, k).Err())
	}
	qc := subscribe(t, admin, "c")
	publish(t, pub, "after")
	wantStats(t, qc, Stats{Ready: 1})
	require.Empty(t, c.Keys(ctx, "*:sub:b:*").Val(), "the removed subscription came back")
}

// Each drain step goes on from where the last one stopped, so its work
// stays bounded however much the steps before it deleted (an HSCAN from 0
// would walk the emptied buckets again every step: quadratic overall).
func TestTopicDrainStepsStayBounded(t *testing.T) {
	srv := redistest.Own(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: 30 * time.Second})
	defer c.Close()
	ctx := context.Background()
	const n = 200 * drainBatch
	fill := redis.NewScript(`for i = ARGV[1], ARGV[2] do redis.call('HSET', KEYS[1], 'p' .. i, i) end return 1`)
	for i := 0; i < n; i += 50_000 {
		require.NoError(t, fill.Run(ctx, c, []string{"{t}:trash"}, i, min(i+50_000, n)-1).Err())
	}
	require.NoError(t, c.HSet(ctx, "{t}:trashes", "{t}:trash", 0).Err())
	keys := []string{"{t}:payloads", "{t}:trashes", "{t}:trash"}
	var scans []int64
	for step := 0; step < 2*n/drainBatch; step++ {
		before := commandStats(t, c)
		done, err := run(ctx, c, drainScript, keys, drainBatch).Int64()
		require.NoError(t, err)
		delta, _ := commandsSince(t, c, before)
		scans = append(scans, delta["hscan"])
		if done == 1 {
			break
		}
	}
	require.Zero(t, c.Exists(ctx, "{t}:trash", "{t}:trashes").Val(), "drained")
	require.LessOrEqual(t, len(scans), n/drainBatch+2, "steps")
	worst := slices.Max(scans)
	t.Logf("%d drain steps; HSCANs per step: first %d, worst %d", len(scans), scans[0], worst)
	require.LessOrEqual(t, worst, 3*scans[0]+2, "a step's work grows with how much earlier steps deleted")
}

// Under a storm of subscription changes, a Publish either publishes or
// fails with ErrBusy, having published nothing.
func TestTopicPublishUnderChurn(t *testing.T) {
	c := realRedis(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pub := newTopic(t, c)
	stable := subscribe(t, pub, "stable")
	var stop atomic.Bool
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			tp := newTopic(t, c)
			name := "churn" + strconv.Itoa(g)
			for i := 0; i < 100_000 && !stop.Load() && ctx.Err() == nil; i++ {
				_, _ = tp.Subscribe(ctx, name)
				_ = tp.Unsubscribe(ctx, name)
			}
		})
	}
	want := map[string]bool{}
	busy := 0
	const publishes = 12 // a Publish that gives up takes up to about a second
	for i := range publishes {
		id, err := pub.Publish(ctx, []byte(strconv.Itoa(i)))
		if err != nil {
			require.ErrorIs(t, err, ErrBusy)
			busy++
			continue
		}
		want[id] = true
	}
	stop.Store(true)
	wg.Wait()
	got, err := c.LRange(ctx, stable.shards[0].ready, 0, -1).Result()
	require.NoError(t, err)
	require.Len(t, got, len(want), "the stable subscription has every published message, once")
	for _, id := range got {
		require.True(t, want[id], "a message whose Publish failed was published: %s", id)
	}
	t.Logf("%d of %d publishes gave up with ErrBusy", busy, publishes)
}

// A batch far larger than a listener's output buffer in Redis reaches a
// listener that keeps up: the batch goes in round trips of at most
// enqueueChunkBytes, not in one pipeline that Redis would answer by
// dropping the listener (client-output-buffer-limit pubsub, 32 MB).
func TestTopicBigBatchReachesListener(t *testing.T) {
	srv := redistest.Own(t)
	c := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tp := NewTopic(c, "t")
	events, err := tp.Listen(ctx)
	require.NoError(t, err)
	const count = 128 // 128 MiB
	heard := make(chan int)
	go func() {
		n := 0
		for n < count {
			select {
			case <-events:
				n++
				continue
			case <-time.After(5 * time.Second):
			}
			break
		}
		heard <- n
	}()
	batch := make([][]byte, count)
	for i := range batch {
		batch[i] = make([]byte, MaxPayload)
	}
	_, err = tp.PublishBatch(ctx, batch)
	require.NoError(t, err)
	require.Equal(t, count, <-heard, "events heard")
}

// gapHook times each command a client sends.
type gapHook struct {
	mu           sync.Mutex
	starts, ends []time.Time
}

func (*gapHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *gapHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.mu.Lock()
		h.starts = append(h.starts, time.Now())
		h.mu.Unlock()
		err := next(ctx, cmd)
		h.mu.Lock()
		h.ends = append(h.ends, time.Now())
		h.mu.Unlock()
		return err
	}
}
func (*gapHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A Topic's first Publish, which learns the subscriptions, sends its
// second call at once: only later tries back off.
func TestTopicFirstRelearnDoesNotWait(t *testing.T) {
	srv := redistest.Own(t)
	c := srv.Client(t)
	ctx := context.Background()
	subscribe(t, NewTopic(c, "t"), "a")
	smallest := time.Hour
	for range 20 {
		pc := redis.NewClient(c.Options()) // hooks cannot be removed: a client each
		require.NoError(t, pc.Ping(ctx).Err())
		h := &gapHook{}
		pc.AddHook(h)
		_, err := NewTopic(pc, "t").Publish(ctx, []byte("x"))
		pc.Close()
		require.NoError(t, err)
		n := len(h.starts) // 2, or 3 when Redis lacked the script
		require.GreaterOrEqual(t, n, 2, "the stale call, then the resend")
		smallest = min(smallest, h.starts[n-1].Sub(h.ends[n-2]))
	}
	require.Less(t, smallest, 400*time.Microsecond, "the first Publish slept before its second round trip")
}
