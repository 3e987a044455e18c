package redlease

// Regression tests for queue defects an outside review found: lost
// replies and resent scripts, retryable acks, sharding, blocking waits,
// delayed messages and handler exits.

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// idForShard returns an id that WithID routes to shard s of n.
func idForShard(prefix string, s, n int) string {
	for i := 0; ; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		h := fnv.New32a()
		h.Write([]byte(id))
		if int(h.Sum32()%uint32(n)) == s {
			return id
		}
	}
}

// An Ack that failed on a Redis error (here a cancelled context) leaves the
// claim as it was: a retried Ack with a good context acks the message.
func TestAckRetryableAfterRedisError(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	q := newQueue(t, c, WithLease(5*time.Second))
	m := claimedJob(t, q)
	cctx, cancel := context.WithCancel(ctx)
	cancel() // e.g. the request that did the work timed out
	if err := m.Ack(cctx); err == nil {
		t.Fatal("ack with a cancelled context succeeded")
	} else {
		t.Logf("first ack (transient failure): %v", err)
	}
	err := m.Ack(ctx) // retry with a good context: the claim is still valid
	t.Logf("retried ack: %v", err)
	eErr := m.Extend(ctx, time.Second)
	t.Logf("extend after that: %v", eErr)
	st, _ := q.Stats(ctx)
	t.Logf("stats after the retried ack: %+v", st)
	if err != nil || st.InFlight != 0 {
		t.Fatalf("a retried Ack of a still-valid claim was refused (%v); the message stays in flight (%+v) and will be redelivered", err, st)
	}
}

// lostReply loses the reply to a command sent through p: every chunk is
// delayed 100ms; once executed() sees the command's effect in Redis (the
// reply is then held in the proxy), every proxied connection is dropped, so
// go-redis gets EOF and resends the command on a new connection.
func lostReply(t *testing.T, p *redistest.FaultProxy, send func(), executed func() bool) {
	t.Helper()
	p.SetLatency(100 * time.Millisecond)
	go send()
	deadline := time.Now().Add(3 * time.Second)
	for !executed() {
		if time.Now().After(deadline) {
			t.Fatal("the command never reached Redis")
		}
		time.Sleep(time.Millisecond)
	}
	p.Drop()
	p.SetLatency(0)
}

func lostReplyClient(t *testing.T) (*redis.Client, *redistest.FaultProxy, *redis.Client) {
	direct := realRedis(t)
	p := redistest.NewFaultProxy(t, direct.Options().Addr)
	c := redis.NewClient(&redis.Options{Addr: p.Addr(), PoolSize: 1})
	t.Cleanup(func() { c.Close() })
	return c, p, direct
}

// An Enqueue whose reply is lost is resent by go-redis; the resend finds
// its own request done and reports success: the message is added once.
func TestEnqueueResentAfterLostReplyAddsOnce(t *testing.T) {
	c, p, direct := lostReplyClient(t)
	ctx := context.Background()
	q := NewQueue(c, "q", WithPrefix(uniq(t)))
	qd := NewQueue(direct, "q", WithPrefix(uniq(t)))
	// Warm up the connection and the script cache.
	if _, err := q.Enqueue(ctx, []byte("warm-up"), WithID("warm")); err != nil {
		t.Fatal(err)
	}
	m, _ := qd.Claim(ctx)
	m.Ack(ctx)
	errc := make(chan error, 1)
	var id string
	lostReply(t, p, func() {
		var err error
		id, err = q.Enqueue(ctx, []byte("order #1"))
		errc <- err
	}, func() bool { st, _ := qd.Stats(ctx); return st.Ready == 1 })
	err := <-errc
	st, _ := qd.Stats(ctx)
	t.Logf("Enqueue returned id %q err %v; stats %+v", id, err, st)
	if err != nil {
		t.Fatalf("Enqueue of a fresh random id failed (%v) although the message was added once (stats %+v): a caller retrying on error would enqueue it twice", err, st)
	}
}

// A Claim whose reply is lost is resent by go-redis; the resend returns the
// claim the first run made, so no message is left in flight unseen (with
// WithMaxAttempts(1) such an orphan would be dead-lettered).
func TestClaimResentAfterLostReplyGetsSameClaim(t *testing.T) {
	c, p, direct := lostReplyClient(t)
	ctx := context.Background()
	opts := []QueueOption{WithPrefix(uniq(t)), WithLease(time.Second), WithMaxAttempts(1)}
	q := NewQueue(c, "q", opts...)
	qd := NewQueue(direct, "q", opts...)
	q.Enqueue(ctx, []byte("warm-up"))
	m, err := q.Claim(ctx) // warms the claim script and the connection
	require.NoError(t, err)
	m.Ack(ctx)
	qd.Enqueue(ctx, []byte("first"))
	qd.Enqueue(ctx, []byte("second"))
	type res struct {
		m   *Message
		err error
	}
	rc := make(chan res, 1)
	lostReply(t, p, func() { m, err := q.Claim(ctx); rc <- res{m, err} },
		func() bool { st, _ := qd.Stats(ctx); return st.InFlight >= 1 })
	r := <-rc
	if r.err != nil {
		t.Fatal(r.err)
	}
	st, _ := qd.Stats(ctx)
	t.Logf("one Claim returned %q (attempt %d); stats %+v", r.m.Payload, r.m.Attempt, st)
	r.m.Ack(ctx)
	time.Sleep(1100 * time.Millisecond)
	n, _ := qd.Reclaim(ctx)
	dead, _ := qd.DeadLetters(ctx, 10)
	t.Logf("after the lease: reclaimed %d, dead letters %+v", n, dead)
	if st.InFlight != 1 || len(dead) != 0 {
		t.Fatalf("one Claim call left %d claims in flight; the orphan was dead-lettered unseen: %d dead letters", st.InFlight, len(dead))
	}
}

// Claims go round the shards on a counter of their own: a handler that
// enqueues follow-ups onto the same sharded queue starves no shard.
func TestShardedClaimsRotateDespiteEnqueues(t *testing.T) {
	c := realRedis(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	q := newQueue(t, c, WithShards(3))
	// A message waiting in shard 0, and one seed in shard 2.
	if _, err := q.Enqueue(ctx, []byte("victim"), WithID(idForShard("victim", 0, 3))); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Enqueue(ctx, []byte("seed"), WithID(idForShard("seed", 2, 3))); err != nil {
		t.Fatal(err)
	}
	var handled atomic.Int32
	victimAt := atomic.Int32{}
	done := make(chan error)
	go func() {
		done <- q.Consume(ctx, func(hctx context.Context, m *Message) error {
			n := handled.Add(1)
			if string(m.Payload) == "victim" {
				victimAt.Store(n)
				return nil
			}
			// Fan out: two follow-ups on the same queue.
			q.Enqueue(hctx, []byte("child"))
			q.Enqueue(hctx, []byte("child"))
			return nil
		})
	}()
	redistest.Eventually(t, 20*time.Second, "300 messages handled", func() bool { return handled.Load() >= 300 || victimAt.Load() > 0 })
	cancel()
	<-done
	var lens []int64
	for s := range 3 {
		lens = append(lens, c.LLen(context.Background(), q.shards[s].ready).Val())
	}
	t.Logf("handled %d; victim handled as #%d; ready per shard %v", handled.Load(), victimAt.Load(), lens)
	if victimAt.Load() == 0 {
		t.Fatalf("a message ready in shard 0 from the start was never claimed in %d claims; shard lengths %v", handled.Load(), lens)
	}
}

// Shard i of queue "jobs" shares no key with a one-shard queue named
// "jobs:i".
func TestShardKeysNeverCollideWithAnotherQueue(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	jobs := NewQueue(c, "jobs", WithPrefix("p"), WithShards(2))
	other := NewQueue(c, "jobs:1", WithPrefix("p"))
	if _, err := other.Enqueue(ctx, []byte("meant for queue jobs:1")); err != nil {
		t.Fatal(err)
	}
	st, _ := jobs.Stats(ctx)
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	m, err := jobs.Claim(cctx)
	if err == nil {
		t.Fatalf("queue \"jobs\" (2 shards) counted %+v and claimed %q, a message of queue \"jobs:1\"", st, m.Payload)
	}
}

// On a client whose ReadTimeout is under the blocking wait, Claim on an
// idle queue waits until its context ends instead of failing with an i/o
// timeout.
func TestClaimWaitsWithinShortReadTimeout(t *testing.T) {
	direct := realRedis(t)
	// The wait blocks for half of it: a margin of 200ms for a busy machine.
	c := redis.NewClient(&redis.Options{Addr: direct.Options().Addr, ReadTimeout: 400 * time.Millisecond})
	defer c.Close()
	q := NewQueue(c, "q", WithPrefix(uniq(t)))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err := q.Claim(ctx)
	t.Logf("Claim on an idle queue returned after %v: %v", time.Since(start).Round(time.Millisecond), err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Claim failed with %v instead of waiting until its context ended", err)
	}
}

// A Nack for immediate retry wakes a consumer blocked in another process
// at once, with one shard or several (where idle consumers block on a
// wake key apart from the shards).
func TestNackWakesBlockedConsumerAtOnce(t *testing.T) {
	c := realRedis(t)
	for _, shards := range []int{1, 2} {
		t.Run(fmt.Sprintf("shards=%d", shards), func(t *testing.T) {
			ctx := context.Background()
			opts := []QueueOption{WithPrefix(uniq(t)), WithShards(shards), WithRetryBackoff(func(int) time.Duration { return 0 })}
			qa := NewQueue(c, "q", opts...) // one process
			qb := NewQueue(c, "q", opts...) // another
			qa.Enqueue(ctx, []byte("job"))
			m, err := qa.Claim(ctx)
			require.NoError(t, err)
			got := make(chan time.Time, 1)
			go func() {
				m, err := qb.Claim(ctx)
				if err == nil {
					got <- time.Now()
					m.Ack(ctx)
				}
			}()
			time.Sleep(100 * time.Millisecond) // qb is blocked by now
			start := time.Now()
			require.NoError(t, m.Nack(ctx))
			lat := (<-got).Sub(start)
			t.Logf("%d shard(s): nacked message picked up by the blocked consumer after %v", shards, lat.Round(time.Millisecond))
			// Woken by its block timeout, it would come about 400ms after.
			if lat > 250*time.Millisecond {
				t.Fatalf("%d shards: a message nacked for immediate retry reached the idle consumer after %v (its block timeout), not at once", shards, lat)
			}
		})
	}
}

// (ID, Attempt) orders deliveries while the id is live; an id reused after
// its message was acked starts over at 1, as Message.Attempt documents.
func TestAttemptGrowsWhileLiveAndRestartsOnReuse(t *testing.T) {
	mr, c := newMini(t)
	ctx := context.Background()
	now := time.Now()
	mr.SetTime(now)
	q := NewQueue(c, "q", WithLease(time.Second))
	if _, err := q.Enqueue(ctx, []byte("v1"), WithID("order-42")); err != nil {
		t.Fatal(err)
	}
	a, err := q.Claim(ctx) // attempt 1, the consumer stalls
	require.NoError(t, err)
	mr.SetTime(now.Add(2 * time.Second))
	b, err := q.Claim(ctx) // the expired claim comes back: attempt 2
	require.NoError(t, err)
	if a.Attempt != 1 || b.Attempt != 2 || b.ID != a.ID {
		t.Fatalf("deliveries of one live id: attempts %d then %d", a.Attempt, b.Attempt)
	}
	if err := a.Ack(ctx); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("ack of the expired delivery: %v, want ErrNotHeld", err)
	}
	require.NoError(t, b.Ack(ctx))
	if _, err := q.Enqueue(ctx, []byte("v2"), WithID("order-42")); err != nil {
		t.Fatal(err)
	}
	cm, err := q.Claim(ctx)
	if err != nil || cm.Attempt != 1 || string(cm.Payload) != "v2" {
		t.Fatalf("reused id: %+v %v, want attempt 1 of v2", cm, err)
	}
}

// A handler that ends its goroutine with runtime.Goexit (t.FailNow, for
// one) neither stops the worker nor strands its claim: the message is
// nacked at once and delivered again.
func TestGoexitHandlerNacksItsMessage(t *testing.T) {
	c := realRedis(t)
	defer redistest.NoLeaks(t, 0)()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	q := newQueue(t, c, WithLease(300*time.Millisecond), WithRetryBackoff(func(int) time.Duration { return 0 }))
	if _, err := q.Enqueue(ctx, []byte("job")); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	var reported atomic.Value
	done := make(chan error)
	go func() {
		done <- q.Consume(ctx, func(_ context.Context, m *Message) error {
			if calls.Add(1) == 1 {
				runtime.Goexit()
			}
			return nil
		}, WithErrorHandler(func(err error) {
			if errors.Is(err, errGoexit) {
				reported.Store(err)
			}
		}))
	}()
	redistest.Eventually(t, 5*time.Second, "the message delivered again and acked", func() bool {
		st, _ := q.Stats(ctx)
		return calls.Load() == 2 && st.depth() == Stats{}
	})
	cancel()
	<-done
	if reported.Load() == nil {
		t.Error("the Goexit was not reported to the error handler")
	}
	time.Sleep(3 * idleLinger) // the watchdog's loop lingers, then ends
}

// DeadLetters of a sharded queue is oldest first across shards.
func TestShardedDeadLettersOldestFirst(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	q := NewQueue(c, "q", WithShards(2), WithMaxAttempts(1))
	old := idForShard("old", 1, 2)
	young := idForShard("young", 0, 2)
	for _, id := range []string{old, young} {
		q.Enqueue(ctx, []byte(id), WithID(id))
		for {
			m, err := q.Claim(ctx)
			require.NoError(t, err)
			m.Nack(ctx)
			if m.ID == id {
				break
			}
		}
	}
	dl, err := q.DeadLetters(ctx, 1)
	if err != nil || len(dl) != 1 {
		t.Fatal(dl, err)
	}
	if dl[0].ID != old {
		t.Fatalf("DeadLetters(1) returned %q, dead-lettered after %q", dl[0].ID, old)
	}
}

// Claim takes back a claim whose consumer died, without anyone calling
// Reclaim.
func TestClaimTakesBackExpiredClaims(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	q := newQueue(t, c, WithLease(100*time.Millisecond))
	q.Enqueue(ctx, []byte("job"))
	if _, err := q.Claim(ctx); err != nil { // this consumer then crashes
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err := q.Claim(cctx)
	st, _ := q.Stats(ctx)
	if err != nil {
		t.Fatalf("a claim expired 100ms+ ago was not redelivered by Claim within 1s (%v); stats %+v", err, st)
	}
}

// A delayed message that is due is claimed before messages enqueued after
// it fell due, however long the ready backlog.
func TestDueDelayedMessagesComeBeforeLaterOnes(t *testing.T) {
	c := realRedis(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	q := newQueue(t, c) // default lease 30s: Consume reclaims every second
	for i := range 300 {
		if _, err := q.Enqueue(ctx, []byte(fmt.Sprint("due-", i)), WithDelay(time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(50 * time.Millisecond) // all 300 are due now
	var later [][]byte
	for i := range 3000 {
		later = append(later, []byte(fmt.Sprint("later-", i)))
	}
	if _, err := q.EnqueueBatch(ctx, later); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var dueSeen, laterSeen int
	done := make(chan error)
	go func() {
		done <- q.Consume(ctx, func(_ context.Context, m *Message) error {
			time.Sleep(500 * time.Microsecond)
			mu.Lock()
			if strings.HasPrefix(string(m.Payload), "due-") {
				dueSeen++
			} else {
				laterSeen++
			}
			mu.Unlock()
			return nil
		})
	}()
	redistest.Eventually(t, 30*time.Second, "1000 later messages handled", func() bool { mu.Lock(); defer mu.Unlock(); return laterSeen >= 1000 })
	st, _ := q.Stats(ctx)
	cancel()
	<-done
	t.Logf("after %d messages enqueued later: %d of 300 due messages handled; stats %+v", laterSeen, dueSeen, st)
	if dueSeen < 300 {
		t.Fatalf("%d messages enqueued after 300 delayed messages fell due were handled first; only %d of those 300 were (stats %+v)", laterSeen, dueSeen, st)
	}
}

// Odd ids and payloads survive enqueue, claim, dead-lettering and
// DeadLetters decoding; 1 MiB payloads in a batch.
func TestOddIDsAndPayloadsRoundTrip(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	q := newQueue(t, c, WithMaxAttempts(1))
	ids := []string{"3:", "0:0:", "{q}", "}{", "a\x00b", "\xff\xfe", strings.Repeat(":", MaxIDLength), "p", "s", "12:ab"}
	payloads := [][]byte{{}, []byte("3:x"), {0, 0xff}, []byte(strings.Repeat("9:", 10)), nil, []byte("p"), []byte(":"), {0}, []byte("{}"), []byte("1:1:")}
	for i, id := range ids {
		if _, err := q.Enqueue(ctx, payloads[i], WithID(id)); err != nil {
			t.Fatalf("enqueue %q: %v", id, err)
		}
	}
	for range ids {
		m, err := q.Claim(ctx)
		require.NoError(t, err)
		require.NoError(t, m.Nack(ctx))
	}
	dl, err := q.DeadLetters(ctx, 100)
	if err != nil || len(dl) != len(ids) {
		t.Fatal(len(dl), err)
	}
	// Those that died in the same millisecond sort by id: match by id.
	sent := map[string][]byte{}
	for i, id := range ids {
		sent[id] = payloads[i]
	}
	for i, d := range dl {
		p, ok := sent[d.ID]
		if !ok || string(d.Payload) != string(p) || d.Attempts != 1 {
			t.Fatalf("dead letter %d: %q %q %d, want one of the ids sent, with its payload", i, d.ID, d.Payload, d.Attempts)
		}
		delete(sent, d.ID)
	}
	big := make([][]byte, 9)
	for i := range big {
		big[i] = make([]byte, MaxPayload)
		big[i][0] = byte(i)
	}
	bids, err := q.EnqueueBatch(ctx, big)
	require.NoError(t, err)
	for i := range big {
		m, err := q.Claim(ctx)
		if err != nil || m.ID != bids[i] || len(m.Payload) != MaxPayload || m.Payload[0] != byte(i) {
			t.Fatalf("big %d: %v", i, err)
		}
		m.Ack(ctx)
	}
}

// parseClaim allocates the payload copy and little else.
func TestParseClaimCopiesPayloadOnce(t *testing.T) {
	q := NewQueue(nil, "q") // parseClaim needs no client
	payload := strings.Repeat("x", MaxPayload)
	res := []any{int64(1), "id", payload, int64(1), int64(0), int64(0)}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const n = 20
	for range n {
		if m, _, _, err := q.parseClaim(res, "tok", false, nil); err != nil || m == nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	per := (after.TotalAlloc - before.TotalAlloc) / n
	t.Logf("parseClaim of a 1 MiB payload allocates %d bytes (the payload copy is %d)", per, MaxPayload)
	if per > 3*MaxPayload/2 {
		t.Fatalf("parseClaim allocates %.1f MiB per claim of a 1 MiB message", float64(per)/(1<<20))
	}
}

// An Ack or Nack whose reply is lost is resent by go-redis; the resend
// finds its work done and reports success, not ErrNotHeld.
func TestSettleResentAfterLostReplySucceeds(t *testing.T) {
	for _, verb := range []string{"ack", "nack"} {
		t.Run(verb, func(t *testing.T) {
			c, p, direct := lostReplyClient(t)
			ctx := context.Background()
			opts := []QueueOption{WithPrefix(uniq(t)), WithRetryBackoff(func(int) time.Duration { return time.Hour })}
			q := NewQueue(c, "q", opts...)
			qd := NewQueue(direct, "q", opts...)
			m := claimedJob(t, q)
			errc := make(chan error, 1)
			lostReply(t, p, func() {
				if verb == "ack" {
					errc <- m.Ack(ctx)
				} else {
					errc <- m.Nack(ctx)
				}
			}, func() bool { st, _ := qd.Stats(ctx); return st.InFlight == 0 })
			if err := <-errc; err != nil {
				t.Fatalf("%s resent after a lost reply: %v", verb, err)
			}
			want := Stats{}
			if verb == "nack" {
				want.Delayed = 1
			}
			wantStats(t, qd, want)
		})
	}
}

// With several shards, an Enqueue whose script Redis refused with NOSCRIPT
// is sent again with its wake-up after it, so an idle consumer is woken
// by the message, not by its block timeout.
func TestShardedWakeFollowsResentScript(t *testing.T) {
	c := realRedis(t)
	q := newQueue(t, c, WithShards(2))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 3 {
		got := make(chan time.Duration, 1)
		var start atomic.Int64
		go func() {
			m, err := q.Claim(ctx)
			if err != nil {
				t.Error(err)
				got <- 0
				return
			}
			got <- time.Since(time.Unix(0, start.Load()))
			_ = m.Ack(ctx)
		}()
		time.Sleep(100 * time.Millisecond) // idle, blocked on the wake key
		require.NoError(t, c.ScriptFlush(ctx).Err())
		start.Store(time.Now().UnixNano())
		if _, err := q.Enqueue(ctx, []byte("x")); err != nil {
			t.Fatal(err)
		}
		if d := <-got; d >= maxBlock {
			t.Errorf("the idle consumer woke %v after the enqueue: by its timeout", d)
		}
	}
}

// A burst spread over the shards wakes every idle consumer it has work
// for, not just the first: a consumer that was idle and finds work passes
// the wake-up on.
func TestShardedBurstWakesEveryIdleConsumer(t *testing.T) {
	c := realRedis(t)
	q := newQueue(t, c, WithShards(2))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 3 {
		got := make(chan time.Duration, 2)
		var start atomic.Int64
		for range 2 {
			go func() {
				m, err := q.Claim(ctx)
				if err != nil {
					t.Error(err)
					got <- 0
					return
				}
				got <- time.Since(time.Unix(0, start.Load()))
				_ = m.Ack(ctx)
			}()
		}
		time.Sleep(100 * time.Millisecond) // both idle
		start.Store(time.Now().UnixNano())
		if _, err := q.EnqueueBatch(ctx, [][]byte{[]byte("a"), []byte("b")}); err != nil {
			t.Fatal(err)
		}
		if d := max(<-got, <-got); d >= maxBlock {
			t.Errorf("an idle consumer slept %v while a message was ready in another shard", d)
		}
	}
}

// A claim script that reaches Redis after its resend's claim was acked
// (the first copy delayed on a dead connection) claims nothing: its reply
// reaches nobody, so a claim would strand a message until its lease ends.
func TestLateClaimCopyClaimsNothing(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		q := newQueue(t, c)
		if _, err := q.EnqueueBatch(ctx, [][]byte{[]byte("first"), []byte("second")}); err != nil {
			t.Fatal(err)
		}
		m, err := q.Claim(ctx)
		require.NoError(t, err)
		require.NoError(t, m.Ack(ctx))
		res, err := claimScript.Run(ctx, c, q.shards[0].keys, q.lease.Milliseconds(), m.token, q.maxAttempts, q.deadLimit).Slice()
		require.NoError(t, err)
		if ok, _ := res[0].(int64); ok != 0 {
			t.Fatalf("a late copy of an acked claim claimed %v", res)
		}
		wantStats(t, q, Stats{Ready: 1})
	})
}

// runUnanswered runs a settle script (ack or nack) on m's claim directly,
// as a call whose reply was lost would have: Redis did the work, and the
// Message does not know it.
func runUnanswered(t *testing.T, s *redis.Script, m *Message, extra ...any) {
	t.Helper()
	args := append([]any{m.ID, m.token}, extra...)
	require.NoError(t, s.Run(context.Background(), m.q.client, m.q.shards[m.shard].keys, args...).Err())
}

// A Nack that ran in Redis but whose reply never came (client-side error)
// leaves the Message unsettled; the caller may then Ack. Meanwhile another
// consumer has claimed the message. The stale Ack must not report success.
func TestStaleAckAfterUnansweredNackRefused(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	q := newQueue(t, c, WithRetryBackoff(func(int) time.Duration { return 0 }))
	a := claimedJob(t, q)
	runUnanswered(t, nackScript, a, 0, q.maxAttempts, q.deadLimit, 0, "")
	b, err := q.Claim(ctx)
	require.NoError(t, err)
	err = a.Ack(ctx)
	st, _ := q.Stats(ctx)
	t.Logf("stale Ack by A while B holds %q: err=%v stats=%+v", b.ID, err, st)
	if !errors.Is(err, ErrNotHeld) {
		t.Fatalf("A's Ack reported %v although B holds the claim and the message was not deleted (%+v)", err, st)
	}
}

// Same, with the unanswered Nack dead-lettering the message: the Ack must
// not report success.
func TestAckAfterUnansweredBuryingNackRefused(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	q := newQueue(t, c, WithMaxAttempts(1))
	a := claimedJob(t, q)
	runUnanswered(t, nackScript, a, 0, q.maxAttempts, q.deadLimit, 0, "")
	err := a.Ack(ctx)
	dead, _ := q.DeadLetters(ctx, 10)
	t.Logf("Ack after unanswered burying Nack: err=%v dead=%d", err, len(dead))
	if err == nil {
		t.Fatalf("Ack succeeded but the message is in the dead-letter list")
	}
}

// A Nack after an Ack that ran but whose reply was lost does not report a
// scheduled retry: the message was deleted.
func TestNackAfterUnansweredAckRefused(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	q := newQueue(t, c)
	a := claimedJob(t, q)
	runUnanswered(t, ackScript, a)
	err := a.Nack(ctx)
	st, _ := q.Stats(ctx)
	t.Logf("Nack after unanswered Ack: %v, stats %+v", err, st)
	if err == nil {
		t.Errorf("Nack reported a scheduled retry, but the message was deleted")
	}
}

// The memory of done requests of a queue nobody uses any more expires.
func TestDoneMemoryOfStoppedQueueExpires(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	q := newQueue(t, c)
	for range 3 {
		if _, err := q.Enqueue(ctx, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		m, err := q.Claim(ctx)
		require.NoError(t, err)
		require.NoError(t, m.Ack(ctx))
	}
	key := q.shards[0].done
	n, _ := c.ZCard(ctx, key).Result()
	ttl, _ := c.PTTL(ctx, key).Result()
	t.Logf("done: %d entries, ttl %v", n, ttl)
	if n == 0 {
		t.Fatal("nothing remembered: the test proves nothing")
	}
	if ttl < 0 || ttl > doneMemory {
		t.Errorf("done set of a queue nobody uses any more has %d entries and TTL %v", n, ttl)
	}
}

// No path that ends a claim (ack, nack, dead-lettering, reclaim, a claim of
// an expired claim) leaves the claim's token field behind.

// No path that ends a claim (ack, nack, dead-lettering, reclaim, a claim of
// an expired claim) leaves the claim's token field behind.
func TestNoClaimFieldOutlivesItsClaim(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	q := newQueue(t, c, WithLease(50*time.Millisecond), WithMaxAttempts(2), WithRetryBackoff(func(int) time.Duration { return 0 }))
	for range 10 {
		q.Enqueue(ctx, []byte("x"))
	}
	// expire some, reclaim some, claim-of-expired, nack, bury, ack.
	var ms []*Message
	for range 6 {
		m, _ := q.Claim(ctx)
		ms = append(ms, m)
	}
	ms[0].Nack(ctx)
	ms[1].Ack(ctx)
	time.Sleep(80 * time.Millisecond)
	q.Reclaim(ctx)
	for {
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		m, err := q.Claim(cctx)
		cancel()
		if err != nil {
			break
		}
		if m.Attempt%2 == 0 {
			m.Nack(ctx)
		} else {
			time.Sleep(60 * time.Millisecond) // expire: next claim takes it
		}
	}
	q.Reclaim(ctx)
	fields, _ := c.HKeys(ctx, q.shards[0].messages).Result()
	st, _ := q.Stats(ctx)
	t.Logf("fields %v stats %+v", fields, st)
	for _, f := range fields {
		if f[0] == 'c' {
			t.Errorf("claim field left: %q", f)
		}
	}
}

// A batch of several script calls lands in order even when Redis lacks
// the script and another client loads it between the calls: a call
// refused with NOSCRIPT and sent again would land after the ones that ran.
func TestEnqueueBatchInOrderAfterScriptFlush(t *testing.T) {
	srv := redistest.Own(t)
	c, hooks := hookedClient(t, srv.Addr)
	ctx := context.Background()
	q := NewQueue(c, "q")
	require.NoError(t, c.ScriptFlush(ctx).Err())
	admin := srv.Client(t)
	hooks.splitAt("\r\neval\r\n", func() { _ = enqueueScript.Load(ctx, admin).Err() }) // between the batch's first two script calls
	ids, err := q.EnqueueBatch(ctx, batchOf(enqueueChunk+5))
	require.NoError(t, err)
	require.Equal(t, 1, hooks.firedCount(), "the batch's calls were split")
	got, err := c.LRange(ctx, q.shards[0].ready, 0, -1).Result()
	require.NoError(t, err)
	require.Equal(t, ids, got)
}
