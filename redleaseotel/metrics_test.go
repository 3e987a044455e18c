package redleaseotel

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/redlease/redlease"
)

// queueAttrs are the attributes every measurement of queue name carries.
func queueAttrs(name string) []attribute.KeyValue {
	if name == "" {
		return []attribute.KeyValue{semconv.MessagingSystemKey.String("redlease")}
	}
	return []attribute.KeyValue{semconv.MessagingSystemKey.String("redlease"), semconv.MessagingDestinationName(name)}
}

// TestQueueCounters: 3 messages enqueued, 2 acked, 1 nacked then
// dead-lettered on its second attempt: every counter counts exactly, and
// the handler durations are recorded, failures apart.
func TestQueueCounters(t *testing.T) {
	mr := newRedis(t)
	s := newSide(t, mr.Addr())
	ctx := context.Background()
	q := redlease.NewQueue(s.client, "jobs", redlease.WithHook(s.hook), redlease.WithMaxAttempts(2),
		redlease.WithRetryBackoff(func(int) time.Duration { return time.Millisecond }))
	for _, id := range []string{"a", "b", "bad"} {
		if _, err := q.Enqueue(ctx, []byte(id), redlease.WithID(id)); err != nil {
			t.Fatal(err)
		}
	}
	const sleep = 20 * time.Millisecond
	consume(t, ctx, q, 4, func(_ context.Context, m *redlease.Message) error {
		time.Sleep(sleep)
		if m.ID == "bad" {
			return errors.New("bad")
		}
		return nil
	})
	rm := s.collect(t)
	qa := queueAttrs("jobs")
	for _, c := range []struct {
		name string
		want int64
		attr []attribute.KeyValue
	}{
		{"messaging.client.sent.messages", 3, append(qa, semconv.MessagingOperationName("send"))},
		{"messaging.client.consumed.messages", 4, qa},
		{"redlease.messages.acked", 2, qa},
		{"redlease.messages.nacked", 1, qa},
		{"redlease.messages.dead_lettered", 1, qa},
	} {
		if got, _ := sum(rm, c.name, c.attr...); got != c.want {
			t.Errorf("%s = %d, want %d", c.name, got, c.want)
		}
	}
	if n, ok := sum(rm, "redlease.messages.reclaimed"); ok && n != 0 {
		t.Errorf("redlease.messages.reclaimed = %d, want 0", n)
	}
	okAttrs := append(queueAttrs("jobs"), semconv.MessagingOperationName("process"))
	n, total, _ := histogram(rm, "messaging.process.duration", okAttrs...)
	nErr, _, _ := histogram(rm, "messaging.process.duration", append(okAttrs, semconv.ErrorTypeKey.String("_OTHER"))...)
	if n != 4 || nErr != 2 {
		t.Errorf("messaging.process.duration: %d calls of which %d failed, want 4 and 2", n, nErr)
	}
	if total < 4*sleep.Seconds() || total > 4*waitFor.Seconds() {
		t.Errorf("messaging.process.duration sums to %vs, want at least %vs", total, 4*sleep.Seconds())
	}
}

// TestReclaimCounter: a claim whose lease ended is counted when Reclaim
// takes it back.
func TestReclaimCounter(t *testing.T) {
	mr := newRedis(t)
	s := newSide(t, mr.Addr())
	ctx := context.Background()
	const lease = 100 * time.Millisecond
	q := redlease.NewQueue(s.client, "jobs", redlease.WithHook(s.hook), redlease.WithLease(lease))
	if _, err := q.Enqueue(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
	m, err := q.Claim(ctx)
	if err != nil || m == nil {
		t.Fatalf("Claim: %v, %v", m, err)
	}
	time.Sleep(2 * lease) // the claim's lease ends (by the Redis clock: real time here)
	if n, err := q.Reclaim(ctx); err != nil || n != 1 {
		t.Fatalf("Reclaim: %d, %v; want 1", n, err)
	}
	if got, _ := sum(s.collect(t), "redlease.messages.reclaimed", queueAttrs("jobs")...); got != 1 {
		t.Errorf("redlease.messages.reclaimed = %d, want 1", got)
	}
}

// TestDepthGauges: ObserveQueues reports Stats' counts per state and its
// totals, for each queue registered, until stopped.
func TestDepthGauges(t *testing.T) {
	mr := newRedis(t)
	s := newSide(t, mr.Addr())
	ctx := context.Background()
	jobs := redlease.NewQueue(s.client, "jobs")
	mail := redlease.NewQueue(s.client, "mail")
	for range 3 {
		if _, err := jobs.Enqueue(ctx, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := jobs.Enqueue(ctx, []byte("x"), redlease.WithDelay(time.Hour)); err != nil {
		t.Fatal(err)
	}
	// Of the 3 ready, one is acked and one stays claimed.
	for i := range 2 {
		m, err := jobs.Claim(ctx)
		if err != nil || m == nil {
			t.Fatalf("Claim: %v, %v", m, err)
		}
		if i == 0 {
			if err := m.Ack(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := mail.Enqueue(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
	stop, err := s.hook.ObserveQueues(jobs, mail)
	if err != nil {
		t.Fatal(err)
	}
	rm := s.collect(t)
	for _, c := range []struct {
		queue, gauge string
		want         int64
	}{
		{"jobs", "redlease.queue.ready", 1}, {"jobs", "redlease.queue.delayed", 1},
		{"jobs", "redlease.queue.in_flight", 1}, {"jobs", "redlease.queue.dead", 0},
		{"mail", "redlease.queue.ready", 1}, {"mail", "redlease.queue.in_flight", 0},
		{"jobs", "redlease.queue.enqueued", 4}, {"jobs", "redlease.queue.acked", 1},
		{"jobs", "redlease.queue.nacked", 0}, {"jobs", "redlease.queue.dead_lettered", 0},
		{"mail", "redlease.queue.enqueued", 1},
	} {
		if got, ok := sum(rm, c.gauge, queueAttrs(c.queue)...); !ok || got != c.want {
			t.Errorf("%s of %s = %d (reported: %v), want %d", c.gauge, c.queue, got, ok, c.want)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatalf("second stop: %v", err)
	}
	if _, ok := sum(s.collect(t), "redlease.queue.ready"); ok {
		t.Error("gauges still reported after stop")
	}
	if _, err := s.hook.ObserveQueues(jobs, nil); err == nil {
		t.Error("ObserveQueues took a nil queue")
	}
}

// TestDepthGaugesTimeout: a queue whose Stats does not answer reports
// nothing, within the timeout, and the others still report.
func TestDepthGaugesTimeout(t *testing.T) {
	mr := newRedis(t)
	s := newSide(t, mr.Addr(), WithStatsTimeout(200*time.Millisecond))
	dead := newSide(t, mr.Addr())
	ctx := context.Background()
	ok := redlease.NewQueue(s.client, "ok")
	if _, err := ok.Enqueue(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
	gone := redlease.NewQueue(dead.client, "gone")
	dead.client.Close() // its Stats fails at once
	stop, err := s.hook.ObserveQueues(gone, ok)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	start := time.Now()
	var rm metricdata.ResourceMetrics
	err = s.reader.Collect(ctx, &rm)
	if err == nil || !strings.Contains(err.Error(), `"gone"`) {
		t.Errorf("collect: %v, want the failed Stats' error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("collection took %v", d)
	}
	if got, reported := sum(rm, "redlease.queue.ready", queueAttrs("ok")...); !reported || got != 1 {
		t.Errorf("ready of ok = %d (reported: %v), want 1", got, reported)
	}
	if _, reported := sum(rm, "redlease.queue.ready", queueAttrs("gone")...); reported {
		t.Error("a queue whose Stats failed reported a depth")
	}
}

// TestObserveAllocs: once a name was seen, Observe allocates no more than
// the SDK's own measurement with a ready attribute set does.
func TestObserveAllocs(t *testing.T) {
	mr := newRedis(t)
	s := newSide(t, mr.Addr())
	ctx := context.Background()
	o := redlease.Observation{Kind: redlease.MessageAcked, Name: "jobs", ID: "a", Attempt: 1}
	s.hook.Observe(ctx, o)
	got := testing.AllocsPerRun(1000, func() { s.hook.Observe(ctx, o) })
	opt := metric.WithAttributeSet(attribute.NewSet(queueAttrs("jobs")...))
	base := testing.AllocsPerRun(1000, func() { s.hook.acked.Add(ctx, 1, opt) })
	t.Logf("acked: Observe %v allocs, SDK Add %v", got, base)
	if got > base {
		t.Errorf("Observe allocates %v per call, the SDK's Add alone %v", got, base)
	}
	lock := redlease.Observation{Kind: redlease.LockAcquired, Name: "k", Latency: time.Millisecond}
	s.hook.Observe(ctx, lock)
	lockOpt := s.hook.lockOpts[0]
	base = testing.AllocsPerRun(1000, func() {
		s.hook.lockLatency.Record(ctx, 0.001, lockOpt)
		s.hook.lockWait.Record(ctx, 0, lockOpt)
	})
	if got := testing.AllocsPerRun(1000, func() { s.hook.Observe(ctx, lock) }); got > base {
		t.Errorf("Observe of a lock allocates %v per call, the SDK's Records alone %v", got, base)
	}
}

// TestCacheBounded: past maxCached names the cache stops growing, and
// measurements of further names still carry their own attributes.
func TestCacheBounded(t *testing.T) {
	mr := newRedis(t)
	s := newSide(t, mr.Addr())
	ctx := context.Background()
	for i := range maxCached + 10 {
		s.hook.Observe(ctx, redlease.Observation{Kind: redlease.MessageAcked, Name: "q" + itoa(i)})
	}
	if n := len(*s.hook.dests.m.Load()); n != maxCached {
		t.Errorf("%d names cached, want %d", n, maxCached)
	}
	last := "q" + itoa(maxCached+9)
	if got, _ := sum(s.collect(t), "redlease.messages.acked", queueAttrs(last)...); got != 1 {
		t.Errorf("acked of %s = %d, want 1", last, got)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
