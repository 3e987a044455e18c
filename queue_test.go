package redlease

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

func newQueue(t *testing.T, c *redis.Client, opts ...QueueOption) *Queue {
	t.Helper()
	return NewQueue(c, "q", append([]QueueOption{WithPrefix(uniq(t))}, opts...)...)
}

func wantStats(t *testing.T, q *Queue, want Stats) {
	t.Helper()
	got, err := q.Stats(context.Background())
	require.NoError(t, err)
	if got.depth() != want {
		t.Fatalf("stats %+v, want %+v", got, want)
	}
}

// depth is s without its totals: the messages in each state.
func (s Stats) depth() Stats {
	return Stats{Ready: s.Ready, Delayed: s.Delayed, InFlight: s.InFlight, Dead: s.Dead}
}

func TestEnqueueClaimAck(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		q := newQueue(t, c)
		payloads := [][]byte{[]byte("hello"), {}, {0, 0xff, '\n', ':', 0}, bytes.Repeat([]byte("x"), 100_000)}
		var ids []string
		for _, p := range payloads {
			id, err := q.Enqueue(ctx, p)
			require.NoError(t, err)
			ids = append(ids, id)
		}
		wantStats(t, q, Stats{Ready: 4})
		for i, p := range payloads {
			m, err := q.Claim(ctx)
			require.NoError(t, err)
			if m.ID != ids[i] || !bytes.Equal(m.Payload, p) || m.Attempt != 1 {
				t.Fatalf("claimed %q %q attempt %d, want %q %q 1", m.ID, m.Payload[:min(len(m.Payload), 10)], m.Attempt, ids[i], p[:min(len(p), 10)])
			}
			wantStats(t, q, Stats{Ready: int64(len(payloads) - i - 1), InFlight: 1})
			require.NoError(t, m.Ack(ctx))
			if err := m.Ack(ctx); !errors.Is(err, ErrNotHeld) {
				t.Fatalf("second ack: %v", err)
			}
		}
		wantStats(t, q, Stats{})
		// Only the memory of recent requests (polls trim it) and the
		// totals stay.
		keys := c.Keys(ctx, uniq(t)+":*").Val()
		slices.Sort(keys)
		if !slices.Equal(keys, []string{q.shards[0].done, q.shards[0].messages}) {
			t.Fatalf("keys left after every message was acked: %v", keys)
		}
		want := map[string]string{"#enqueued": strconv.Itoa(len(payloads)), "#acked": strconv.Itoa(len(payloads))}
		if got := c.HGetAll(ctx, q.shards[0].messages).Val(); !maps.Equal(got, want) {
			t.Fatalf("messages hash after every message was acked: %v, want %v", got, want)
		}
	})
}

func TestEnqueueBatch(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		q := newQueue(t, c)
		var payloads [][]byte
		for i := range 2500 {
			payloads = append(payloads, []byte(fmt.Sprint(i)))
		}
		ids, err := q.EnqueueBatch(ctx, payloads)
		if err != nil || len(ids) != 2500 {
			t.Fatal(len(ids), err)
		}
		wantStats(t, q, Stats{Ready: 2500})
		for i := range 3 {
			m, err := q.Claim(ctx)
			require.NoError(t, err)
			if m.ID != ids[i] || string(m.Payload) != fmt.Sprint(i) {
				t.Fatalf("claim %d got %q, want FIFO order", i, m.Payload)
			}
		}
		if ids, err := q.EnqueueBatch(ctx, nil); err != nil || len(ids) != 0 {
			t.Fatal(ids, err)
		}
	})
}

func TestStaleAckRefused(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	q := newQueue(t, c, WithLease(100*time.Millisecond))
	a := claimedJob(t, q)
	time.Sleep(150 * time.Millisecond)
	// Expired but not yet given back: still refused.
	if err := a.Extend(ctx, time.Second); !errors.Is(err, ErrNotHeld) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("extend after expiry: %v", err)
	}
	if n, err := q.Reclaim(ctx); err != nil || n != 1 {
		t.Fatalf("reclaim: %d %v", n, err)
	}
	b, err := q.Claim(ctx)
	require.NoError(t, err)
	if b.ID != a.ID || b.Attempt != 2 {
		t.Fatalf("redelivery %q attempt %d", b.ID, b.Attempt)
	}
	a2 := *a // a copy that still believes in the old claim
	a2.lease = newLease(a.ID, a.ID, a.token, a.ttl, false, nil)
	if err := a2.Ack(ctx); !errors.Is(err, ErrNotHeld) || !strings.Contains(err.Error(), "another") {
		t.Fatalf("stale ack: %v", err)
	}
	a3 := a2
	a3.lease = newLease(a.ID, a.ID, a.token, a.ttl, false, nil)
	if err := a3.Nack(ctx); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("stale nack: %v", err)
	}
	wantStats(t, q, Stats{InFlight: 1})
	require.NoError(t, b.Ack(ctx))
	wantStats(t, q, Stats{})
}

func TestExpiredClaimCannotAck(t *testing.T) {
	mr, c := newMini(t)
	ctx := context.Background()
	mr.SetTime(time.Now())
	q := NewQueue(c, "q", WithLease(time.Second))
	q.Enqueue(ctx, []byte("job"))
	m, err := q.Claim(ctx)
	require.NoError(t, err)
	mr.SetTime(time.Now().Add(2 * time.Second))
	if err := m.Ack(ctx); !errors.Is(err, ErrNotHeld) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("ack after expiry: %v", err)
	}
	if n, _ := q.Reclaim(ctx); n != 1 {
		t.Fatalf("reclaimed %d", n)
	}
	wantStats(t, q, Stats{Ready: 1})
}

func TestExtendKeepsClaim(t *testing.T) {
	mr, c := newMini(t)
	ctx := context.Background()
	now := time.Now()
	mr.SetTime(now)
	q := NewQueue(c, "q", WithLease(time.Second))
	q.Enqueue(ctx, []byte("job"))
	m, _ := q.Claim(ctx)
	for _, bad := range []time.Duration{0, -time.Second, time.Microsecond} {
		if err := m.Extend(ctx, bad); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("Extend(%v): %v", bad, err)
		}
	}
	require.NoError(t, m.Extend(ctx, 10*time.Second))
	mr.SetTime(now.Add(5 * time.Second))
	if n, _ := q.Reclaim(ctx); n != 0 {
		t.Fatal("an extended claim was reclaimed")
	}
	require.NoError(t, m.Ack(ctx))
}

func TestPoisonMessageDeadLettered(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		defer redistest.NoLeaks(t, 0)()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		q := newQueue(t, c, WithMaxAttempts(3), WithRetryBackoff(func(int) time.Duration { return 0 }))
		id, _ := q.Enqueue(ctx, []byte("poison"))
		q.Enqueue(ctx, []byte("fine"))
		var calls, fine atomic.Int32
		done := make(chan error)
		go func() {
			done <- q.Consume(ctx, func(_ context.Context, m *Message) error {
				if string(m.Payload) == "fine" {
					fine.Add(1)
					return nil
				}
				if calls.Add(1)%2 == 0 {
					panic("handler crashed")
				}
				return errors.New("cannot handle")
			}, WithConcurrency(2))
		}()
		redistest.Eventually(t, 5*time.Second, "dead letter", func() bool { s, _ := q.Stats(ctx); return s.Dead == 1 })
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
		if calls.Load() != 3 || fine.Load() != 1 {
			t.Fatalf("poison handled %d times, want 3; fine %d", calls.Load(), fine.Load())
		}
		ctx = context.Background()
		dead, err := q.DeadLetters(ctx, 10)
		if err != nil || len(dead) != 1 || dead[0].ID != id || string(dead[0].Payload) != "poison" || dead[0].Attempts != 3 {
			t.Fatalf("dead letters %+v %v", dead, err)
		}
		wantStats(t, q, Stats{Dead: 1})
		if _, err := q.Enqueue(ctx, []byte("again"), WithID(id)); err != nil {
			t.Fatalf("a dead-lettered id is free again: %v", err)
		}
	})
}

func TestDelayedMessage(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	q := newQueue(t, c)
	start := time.Now()
	if _, err := q.Enqueue(ctx, []byte("later"), WithDelay(300*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	q.Enqueue(ctx, []byte("now"))
	wantStats(t, q, Stats{Ready: 1, Delayed: 1})
	m, _ := q.Claim(ctx)
	if string(m.Payload) != "now" {
		t.Fatalf("got %q first", m.Payload)
	}
	m.Ack(ctx)
	m, err := q.Claim(ctx)
	require.NoError(t, err)
	waited := time.Since(start)
	if string(m.Payload) != "later" || waited < 290*time.Millisecond || waited > 800*time.Millisecond {
		t.Fatalf("got %q after %v, want \"later\" after about 300ms", m.Payload, waited)
	}
	m.Ack(ctx)
	wantStats(t, q, Stats{})
}

func TestDedupe(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		q := newQueue(t, c)
		id, err := q.Enqueue(ctx, []byte("a"), WithID("order-1"))
		if err != nil || id != "order-1" {
			t.Fatal(id, err)
		}
		id, err = q.Enqueue(ctx, []byte("b"), WithID("order-1"))
		if !errors.Is(err, ErrDuplicate) || id != "order-1" {
			t.Fatalf("duplicate enqueue: %q %v", id, err)
		}
		if _, err := q.Enqueue(ctx, []byte("c"), WithID("order-1"), WithDelay(time.Hour)); !errors.Is(err, ErrDuplicate) {
			t.Fatalf("duplicate delayed enqueue: %v", err)
		}
		m, _ := q.Claim(ctx)
		if _, err := q.Enqueue(ctx, []byte("d"), WithID("order-1")); !errors.Is(err, ErrDuplicate) {
			t.Fatalf("enqueue of an id in flight: %v", err)
		}
		if string(m.Payload) != "a" {
			t.Fatalf("payload %q", m.Payload)
		}
		m.Ack(ctx)
		if _, err := q.Enqueue(ctx, []byte("e"), WithID("order-1")); err != nil {
			t.Fatalf("an acked id is free again: %v", err)
		}
		wantStats(t, q, Stats{Ready: 1})
	})
}

func TestQueueBadInput(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	q := NewQueue(c, "q")
	h := func(context.Context, *Message) error { return nil }
	var nilClient *redis.Client
	cases := map[string]func() error{
		"nil client":       func() error { _, err := NewQueue(nil, "q").Enqueue(ctx, nil); return err },
		"typed nil client": func() error { _, err := NewQueue(nilClient, "q").Claim(ctx); return err },
		"empty name":       func() error { _, err := NewQueue(c, "").Enqueue(ctx, nil); return err },
		"brace in name":    func() error { _, err := NewQueue(c, "a}b").Stats(ctx); return err },
		"bad prefix":       func() error { _, err := NewQueue(c, "q", WithPrefix("")).Enqueue(ctx, nil); return err },
		"zero lease":       func() error { _, err := NewQueue(c, "q", WithLease(0)).Claim(ctx); return err },
		"zero attempts":    func() error { _, err := NewQueue(c, "q", WithMaxAttempts(0)).Reclaim(ctx); return err },
		"nil backoff":      func() error { return NewQueue(c, "q", WithRetryBackoff(nil)).Consume(ctx, h) },
		"negative delay":   func() error { _, err := q.Enqueue(ctx, nil, WithDelay(-time.Second)); return err },
		"empty id":         func() error { _, err := q.Enqueue(ctx, nil, WithID("")); return err },
		"long id":          func() error { _, err := q.Enqueue(ctx, nil, WithID(strings.Repeat("i", MaxIDLength+1))); return err },
		"huge payload":     func() error { _, err := q.Enqueue(ctx, make([]byte, MaxPayload+1)); return err },
		"huge in batch": func() error {
			_, err := q.EnqueueBatch(ctx, [][]byte{[]byte("ok"), make([]byte, MaxPayload+1)})
			return err
		},
		"nil handler":      func() error { return q.Consume(ctx, nil) },
		"zero concurrency": func() error { return q.Consume(ctx, h, WithConcurrency(0)) },
		"dead letters n":   func() error { _, err := q.DeadLetters(ctx, 0); return err },
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			if err := f(); !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("got %v, want ErrInvalidArgument", err)
			}
		})
	}
	wantStats(t, q, Stats{})
	if _, err := q.Enqueue(ctx, make([]byte, MaxPayload)); err != nil {
		t.Fatalf("a payload of exactly MaxPayload: %v", err)
	}
}

// A handler slower than the lease keeps its claim: Consume renews it.
func TestSlowHandlerKeptAlive(t *testing.T) {
	c := realRedis(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	q := newQueue(t, c, WithLease(300*time.Millisecond))
	q.Enqueue(ctx, []byte("slow"))
	var runs atomic.Int32
	var errs []error
	var mu sync.Mutex
	done := make(chan error)
	go func() {
		done <- q.Consume(ctx, func(hctx context.Context, m *Message) error {
			runs.Add(1)
			select {
			case <-time.After(1200 * time.Millisecond):
				return nil
			case <-hctx.Done():
				return context.Cause(hctx)
			}
		}, WithConcurrency(2), WithErrorHandler(func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() }))
	}()
	redistest.Eventually(t, 5*time.Second, "message acked", func() bool { s, _ := q.Stats(ctx); return s.depth() == Stats{} && runs.Load() == 1 })
	time.Sleep(400 * time.Millisecond) // a redelivery would show by now
	cancel()
	<-done
	if runs.Load() != 1 || len(errs) != 0 {
		t.Fatalf("handler ran %d times, errors %v", runs.Load(), errs)
	}
}

// Consumers on separate clients, some of which crash (claim and never
// ack): every message is acked exactly once, none is lost.
func TestCrashingConsumers(t *testing.T) {
	c := realRedis(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 600
	prefix := uniq(t)
	producer := NewQueue(c, "q", WithPrefix(prefix))
	var payloads [][]byte
	for i := range n {
		payloads = append(payloads, []byte(fmt.Sprint(i)))
	}
	if _, err := producer.EnqueueBatch(ctx, payloads); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	acked := map[string]int{}
	crashed := 0
	var wg sync.WaitGroup
	for w := range 4 {
		cl := redis.NewClient(&redis.Options{Addr: c.Options().Addr})
		defer cl.Close()
		q := NewQueue(cl, "q", WithPrefix(prefix), WithLease(200*time.Millisecond), WithMaxAttempts(10))
		if w == 0 {
			// The crashing consumer: claims a message now and then and drops it.
			wg.Go(func() {
				for i := 0; i < 25 && ctx.Err() == nil; i++ {
					cctx, ccancel := context.WithTimeout(ctx, time.Second)
					if _, err := q.Claim(cctx); err == nil {
						mu.Lock()
						crashed++
						mu.Unlock()
					}
					ccancel()
					time.Sleep(5 * time.Millisecond)
				}
			})
			continue
		}
		wg.Go(func() {
			q.Consume(ctx, func(_ context.Context, m *Message) error {
				if err := m.Ack(context.Background()); err != nil {
					return nil // lost the claim: someone else will ack it
				}
				mu.Lock()
				acked[string(m.Payload)]++
				mu.Unlock()
				return errAlreadyAcked
			}, WithConcurrency(4), WithErrorHandler(func(error) {}))
		})
	}
	redistest.Eventually(t, 30*time.Second, "every message acked", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) == n
	})
	cancel()
	wg.Wait()
	for p, k := range acked {
		if k != 1 {
			t.Errorf("message %s acked %d times", p, k)
		}
	}
	if crashed == 0 {
		t.Fatal("the crashing consumer claimed nothing: the test proves little")
	}
	t.Logf("%d messages, %d claims dropped by a crashing consumer, all acked once", n, crashed)
	wantStats(t, producer, Stats{})
}

// errAlreadyAcked makes Consume's own ack fail harmlessly after the handler
// acked the message itself, so the test can count successful acks.
var errAlreadyAcked = errors.New("acked by the handler")

// With no lease expiring, no message is delivered twice.
func TestNoDuplicateDelivery(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		q := newQueue(t, c)
		const n = 1000
		var payloads [][]byte
		for i := range n {
			payloads = append(payloads, []byte(fmt.Sprint(i)))
		}
		q.EnqueueBatch(ctx, payloads)
		var mu sync.Mutex
		seen := map[string]int{}
		var handled atomic.Int32
		done := make(chan error)
		go func() {
			done <- q.Consume(ctx, func(_ context.Context, m *Message) error {
				mu.Lock()
				seen[m.ID]++
				mu.Unlock()
				handled.Add(1)
				return nil
			}, WithConcurrency(16))
		}()
		redistest.Eventually(t, 20*time.Second, "all handled", func() bool { return handled.Load() >= n })
		redistest.Eventually(t, 5*time.Second, "all acked", func() bool { s, _ := q.Stats(ctx); return s.depth() == Stats{} })
		cancel()
		<-done
		if len(seen) != n || handled.Load() != n {
			t.Fatalf("%d distinct, %d deliveries, want %d each", len(seen), handled.Load(), n)
		}
	})
}

// Cancelling Consume lets running handlers finish and acks their messages;
// the rest stay ready.
func TestGracefulShutdown(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		defer redistest.NoLeaks(t, 0)()
		ctx, cancel := context.WithCancel(context.Background())
		q := newQueue(t, c)
		const n = 50
		for i := range n {
			q.Enqueue(context.Background(), []byte(fmt.Sprint(i)))
		}
		var started, finished atomic.Int32
		done := make(chan error)
		go func() {
			done <- q.Consume(ctx, func(hctx context.Context, m *Message) error {
				started.Add(1)
				time.Sleep(100 * time.Millisecond)
				if hctx.Err() != nil {
					return hctx.Err()
				}
				finished.Add(1)
				return nil
			}, WithConcurrency(4))
		}()
		redistest.Eventually(t, 5*time.Second, "handlers running", func() bool { return started.Load() >= 4 })
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Consume did not return after cancel")
		}
		if started.Load() != finished.Load() {
			t.Fatalf("%d handlers started, %d finished", started.Load(), finished.Load())
		}
		wantStats(t, q, Stats{Ready: int64(n) - int64(finished.Load())})
	})
}

func TestClaimHonoursContext(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		q := newQueue(t, c)
		ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := q.Claim(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("claim on an empty queue: %v", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("claim returned %v after its deadline", d)
		}
	})
}

// A waiting consumer picks up a message enqueued into an idle queue at once,
// not on a polling tick.
func TestIdlePickup(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	q := newQueue(t, c)
	var lat []float64
	for range 30 {
		got := make(chan time.Time)
		go func() {
			m, err := q.Claim(ctx)
			if err != nil {
				t.Error(err)
			}
			got <- time.Now()
			m.Ack(ctx)
		}()
		time.Sleep(20 * time.Millisecond) // the consumer is blocked by now
		start := time.Now()
		if _, err := q.Enqueue(ctx, []byte("x")); err != nil {
			t.Fatal(err)
		}
		lat = append(lat, float64((<-got).Sub(start)))
	}
	p50 := time.Duration(quantile(lat, 0.5))
	t.Logf("idle pick-up p50 %v p99 %v", p50, time.Duration(quantile(lat, 0.99)))
	if p50 > 50*time.Millisecond {
		t.Fatalf("pick-up p50 %v: the consumer polled instead of being woken", p50)
	}
}

func TestDecodeDeadLetter(t *testing.T) {
	died := time.UnixMilli(1764500000123)
	for in, want := range map[string]DeadLetter{
		"3:1764500000123:0:payload":      {Payload: []byte("payload"), Attempts: 3, DiedAt: died},
		"1:0:0:":                         {Payload: []byte{}, Attempts: 1, DiedAt: time.UnixMilli(0)},
		"5:1764500000123:3:a:b:c":        {Err: "a:b", Payload: []byte(":c"), Attempts: 5, DiedAt: died},
		"2:1764500000123:4:boom\x00\xff": {Err: "boom", Payload: []byte{0, 0xff}, Attempts: 2, DiedAt: died},
	} {
		got, err := decodeDeadLetter("id", in)
		if err != nil || got.ID != "id" || got.Err != want.Err || !bytes.Equal(got.Payload, want.Payload) || got.Attempts != want.Attempts || !got.DiedAt.Equal(want.DiedAt) {
			t.Errorf("decode(%q) = %+v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "3", "3:", "3:1:", "x:1:1:a", "1:x:1:a", "1:1:x:a", "1:1:5:abc", "-1:0:0:", "1:-1:0:", "1:0:-1:", "1:5:abc"} {
		if _, err := decodeDeadLetter("id", bad); err == nil {
			t.Errorf("decode(%q) accepted", bad)
		}
	}
}

func TestShardedQueue(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		q := newQueue(t, c, WithShards(4), WithMaxAttempts(1))
		var payloads [][]byte
		for i := range 200 {
			payloads = append(payloads, []byte(fmt.Sprint(i)))
		}
		if _, err := q.EnqueueBatch(ctx, payloads); err != nil {
			t.Fatal(err)
		}
		for s := range 4 {
			if n := c.LLen(ctx, q.shards[s].ready).Val(); n != 50 {
				t.Fatalf("shard %d holds %d of 200", s, n)
			}
		}
		if _, err := q.Enqueue(ctx, []byte("dup"), WithID("once")); err != nil {
			t.Fatal(err)
		}
		if _, err := q.Enqueue(ctx, []byte("dup"), WithID("once")); !errors.Is(err, ErrDuplicate) {
			t.Fatalf("duplicate on a sharded queue: %v", err)
		}
		wantStats(t, q, Stats{Ready: 201})
		// Claims go round the shards: none waits for another to drain.
		perShard := map[string]int{}
		for range 40 {
			m, err := q.Claim(ctx)
			require.NoError(t, err)
			perShard[q.shards[m.shard].ready]++
			if string(m.Payload) == "dup" {
				m.Nack(ctx) // one attempt: dead-lettered
			} else {
				m.Ack(ctx)
			}
		}
		for s := range 4 {
			if perShard[q.shards[s].ready] < 5 {
				t.Fatalf("shard %d got %d of 40 claims: %v", s, perShard[q.shards[s].ready], perShard)
			}
		}
		var handled atomic.Int32
		done := make(chan error)
		go func() {
			done <- q.Consume(ctx, func(_ context.Context, m *Message) error {
				handled.Add(1)
				if string(m.Payload) == "dup" {
					return errors.New("poison")
				}
				return nil
			}, WithConcurrency(8))
		}()
		redistest.Eventually(t, 10*time.Second, "all handled", func() bool { s, _ := q.Stats(ctx); return s.Ready == 0 && s.InFlight == 0 })
		cancel()
		<-done
		st, _ := q.Stats(context.Background())
		dead, _ := q.DeadLetters(context.Background(), 10)
		if st.depth() != (Stats{Dead: 1}) || len(dead) != 1 || dead[0].ID != "once" {
			t.Fatalf("stats %+v, dead %+v", st, dead)
		}
		if got := int(handled.Load()) + 40; got != 201 {
			t.Fatalf("%d deliveries for 201 messages", got)
		}
	})
}

func TestShardedIdlePickup(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	q := newQueue(t, c, WithShards(3))
	for i := range 6 {
		got := make(chan time.Duration)
		go func() {
			start := time.Now()
			m, err := q.Claim(ctx)
			if err != nil {
				t.Error(err)
				got <- 0
				return
			}
			m.Ack(ctx)
			got <- time.Since(start)
		}()
		time.Sleep(30 * time.Millisecond)
		q.Enqueue(ctx, []byte(fmt.Sprint(i)))
		if waited := <-got; waited > 200*time.Millisecond {
			t.Fatalf("pick-up took %v: the consumer was not woken", waited)
		}
	}
	if err := NewQueue(c, "q", WithShards(0)).Consume(ctx, func(context.Context, *Message) error { return nil }); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("zero shards: %v", err)
	}
}

// A clean shutdown reports no errors.
func TestConsumeShutdownIsQuiet(t *testing.T) {
	c := realRedis(t)
	q := newQueue(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var errs []error
	done := make(chan error)
	go func() {
		done <- q.Consume(ctx, func(context.Context, *Message) error { return nil },
			WithConcurrency(64), WithErrorHandler(func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() }))
	}()
	time.Sleep(200 * time.Millisecond)
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if len(errs) > 0 {
		t.Fatalf("%d errors on a clean shutdown, first: %v", len(errs), errs[0])
	}
}

// claimedJob enqueues the payload "job" on q and claims it.
func claimedJob(t testing.TB, q *Queue) *Message {
	t.Helper()
	ctx := context.Background()
	_, err := q.Enqueue(ctx, []byte("job"))
	require.NoError(t, err)
	m, err := q.Claim(ctx)
	require.NoError(t, err)
	return m
}
