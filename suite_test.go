package redlease

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// Suites of basic lock and queue operations that run on any deployment
// (Cluster, Sentinel) through a redis.UniversalClient.

// lockSuite runs lockOps on every key, eight keys at a time, with a Locker
// on c and a competing one on c2 (another client of the same deployment).
// The locks are under the prefix uniq(t).
func lockSuite(t *testing.T, c, c2 redis.UniversalClient, keys []string) {
	t.Helper()
	ctx := context.Background()
	l := NewLocker(c, WithPrefix(uniq(t)))
	defer l.Close()
	l2 := NewLocker(c2, WithPrefix(uniq(t)))
	defer l2.Close()
	work := make(chan string)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for key := range work {
				if err := lockOps(ctx, c, l, l2, key); err != nil {
					t.Errorf("lock %q: %v", key, err)
				}
			}
		})
	}
	for _, k := range keys {
		work <- k
	}
	close(work)
	wg.Wait()
}

// lockSuiteFences is how many fences lockOps counts on a key: its slot's
// counter, shared with the other names in the slot, is at least that.
const lockSuiteFences = 5

// lockOps takes key through TryObtain, TTL, Refresh, Release, Obtain, Do
// and a contended Obtain woken by a release, checking each result.
func lockOps(ctx context.Context, c redis.UniversalClient, l, l2 *Locker, key string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	lk, err := l.TryObtain(ctx, key, WithTTL(5*time.Second))
	if err != nil {
		return fmt.Errorf("TryObtain: %w", err)
	}
	if lk.Fence() < 1 {
		return fmt.Errorf("first fence %d", lk.Fence())
	}
	first := lk.Fence()
	if _, err := l2.TryObtain(ctx, key); !errors.Is(err, ErrNotObtained) {
		return fmt.Errorf("TryObtain of a held lock: %v, want ErrNotObtained", err)
	}
	if d, err := lk.TTL(ctx); err != nil || d <= 0 || d > 5*time.Second {
		return fmt.Errorf("TTL %v %v", d, err)
	}
	if err := lk.Refresh(ctx, 20*time.Second); err != nil {
		return fmt.Errorf("Refresh: %w", err)
	}
	if d, err := lk.TTL(ctx); err != nil || d <= 15*time.Second {
		return fmt.Errorf("TTL %v %v after Refresh(20s)", d, err)
	}
	if err := lk.Release(ctx); err != nil {
		return fmt.Errorf("Release: %w", err)
	}
	if d, err := lk.TTL(ctx); err != nil || d != 0 || lk.Err() != nil {
		return fmt.Errorf("after Release: TTL %v %v, Err %v", d, err, lk.Err())
	}

	lk, err = l2.Obtain(ctx, key, WithTTL(5*time.Second))
	if err != nil || lk.Fence() <= first {
		return fmt.Errorf("Obtain of a free lock: %v (fence after %d)", err, first)
	}
	if err := lk.Release(ctx); err != nil {
		return fmt.Errorf("Release: %w", err)
	}

	ran := false
	err = l.Do(ctx, key, func(ctx context.Context) error {
		ran = true
		if _, err := l2.TryObtain(ctx, key); !errors.Is(err, ErrNotObtained) {
			return fmt.Errorf("TryObtain inside Do: %v, want ErrNotObtained", err)
		}
		return ctx.Err()
	})
	if err != nil || !ran {
		return fmt.Errorf("Do: ran %v, %v", ran, err)
	}

	// A waiter in the other Locker is handed the lock by the release.
	lk, err = l.TryObtain(ctx, key)
	if err != nil {
		return fmt.Errorf("TryObtain: %w", err)
	}
	got := make(chan error, 1)
	go func() {
		w, err := l2.Obtain(ctx, key, WithRetry(LinearBackoff(time.Minute)))
		if err == nil {
			if w.Fence() <= lk.Fence() {
				err = fmt.Errorf("fence %d after %d", w.Fence(), lk.Fence())
			}
			err = errors.Join(err, w.Release(ctx))
		}
		got <- err
	}()
	if err := redistest.Poll(5*time.Second, func() error {
		if !queuedIn(l2, key) {
			return errors.New("no waiter queued")
		}
		return nil
	}); err != nil {
		return err
	}
	if err := lk.Release(ctx); err != nil {
		return fmt.Errorf("Release: %w", err)
	}
	select {
	case err := <-got:
		if err != nil {
			return fmt.Errorf("contended Obtain: %w", err)
		}
	case <-time.After(5 * time.Second):
		return errors.New("waiter not woken by the release")
	}
	fence, err := c.Get(ctx, l.fenceKey(key)).Int64()
	if err != nil || fence < lockSuiteFences {
		return fmt.Errorf("fence counter %d %v, want at least %d", fence, err, lockSuiteFences)
	}
	return nil
}

// queueSuite runs queueOps on every queue name at once; the queues are
// under the prefix uniq(t). It returns the errors Consume reported.
func queueSuite(t *testing.T, c redis.UniversalClient, names []string) {
	t.Helper()
	var wg sync.WaitGroup
	for _, name := range names {
		wg.Go(func() {
			if err := queueOps(context.Background(), c, uniq(t), name); err != nil {
				t.Errorf("queue %q: %v", name, err)
			}
		})
	}
	wg.Wait()
}

// queueSuiteDelay is how long the suite's delayed message waits.
const queueSuiteDelay = 2 * time.Second

// queueSuiteBatch is more than one enqueue script call, so EnqueueBatch
// sends a pipeline.
const queueSuiteBatch = 1500

// queueOps takes one queue through Enqueue (plain, WithID, duplicate,
// WithDelay), EnqueueBatch, Claim, Extend, Ack, Nack, Reclaim, Stats,
// Consume and DeadLetters. It leaves one dead letter, the payload "b7".
func queueOps(ctx context.Context, c redis.UniversalClient, prefix, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	noBackoff := WithRetryBackoff(func(int) time.Duration { return 0 })
	q := NewQueue(c, name, WithPrefix(prefix), WithLease(10*time.Second), WithMaxAttempts(2), noBackoff)
	stats := func(want Stats) error {
		got, err := q.Stats(ctx)
		if err != nil || got.depth() != want {
			return fmt.Errorf("stats %+v %v, want %+v", got, err, want)
		}
		return nil
	}

	id1, err := q.Enqueue(ctx, []byte("one"))
	if err != nil {
		return fmt.Errorf("Enqueue: %w", err)
	}
	id2, err := q.Enqueue(ctx, []byte("two"), WithID("fixed"))
	if err != nil || id2 != "fixed" {
		return fmt.Errorf("Enqueue WithID: %q %v", id2, err)
	}
	if _, err := q.Enqueue(ctx, []byte("dup"), WithID("fixed")); !errors.Is(err, ErrDuplicate) {
		return fmt.Errorf("duplicate Enqueue: %v, want ErrDuplicate", err)
	}
	// Delayed past the checks of Delayed below, however slow the machine.
	if _, err := q.Enqueue(ctx, []byte("later"), WithDelay(queueSuiteDelay)); err != nil {
		return fmt.Errorf("Enqueue WithDelay: %w", err)
	}
	var payloads [][]byte
	for i := range queueSuiteBatch {
		payloads = append(payloads, []byte(fmt.Sprint("b", i)))
	}
	batch, err := q.EnqueueBatch(ctx, payloads)
	if err != nil || len(batch) != queueSuiteBatch {
		return fmt.Errorf("EnqueueBatch: %d ids, %v", len(batch), err)
	}
	if err := stats(Stats{Ready: 2 + queueSuiteBatch, Delayed: 1}); err != nil {
		return err
	}

	m, err := q.Claim(ctx)
	if err != nil || m.ID != id1 || string(m.Payload) != "one" || m.Attempt != 1 {
		return fmt.Errorf("Claim: %+v %v", m, err)
	}
	if err := m.Extend(ctx, 20*time.Second); err != nil {
		return fmt.Errorf("Extend: %w", err)
	}
	if err := m.Ack(ctx); err != nil {
		return fmt.Errorf("Ack: %w", err)
	}
	if err := m.Ack(ctx); !errors.Is(err, ErrNotHeld) {
		return fmt.Errorf("second Ack: %v, want ErrNotHeld", err)
	}
	m, err = q.Claim(ctx)
	if err != nil || m.ID != id2 {
		return fmt.Errorf("Claim: %+v %v", m, err)
	}
	if err := m.Nack(ctx); err != nil { // back to ready at once, behind the batch
		return fmt.Errorf("Nack: %w", err)
	}
	if err := stats(Stats{Ready: 1 + queueSuiteBatch, Delayed: 1}); err != nil {
		return err
	}

	short := NewQueue(c, name, WithPrefix(prefix), WithLease(50*time.Millisecond))
	m, err = short.Claim(ctx)
	if err != nil || m.ID != batch[0] {
		return fmt.Errorf("Claim: %+v %v", m, err)
	}
	time.Sleep(100 * time.Millisecond)
	if n, err := q.Reclaim(ctx); err != nil || n != 1 {
		return fmt.Errorf("Reclaim: %d %v, want 1", n, err)
	}
	if err := m.Ack(ctx); !errors.Is(err, ErrNotHeld) {
		return fmt.Errorf("Ack of a reclaimed message: %v, want ErrNotHeld", err)
	}

	var mu sync.Mutex
	seen := map[string]int{}
	var errs []error
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- q.Consume(cctx, func(_ context.Context, m *Message) error {
			mu.Lock()
			defer mu.Unlock()
			seen[m.ID]++
			if string(m.Payload) == "b7" {
				return errors.New("poison")
			}
			return nil
		}, WithConcurrency(4), WithErrorHandler(func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() }))
	}()
	err = redistest.Poll(20*time.Second, func() error { return stats(Stats{Dead: 1}) })
	stop()
	if cerr := <-done; !errors.Is(cerr, context.Canceled) {
		return fmt.Errorf("Consume returned %v", cerr)
	}
	if err != nil {
		return fmt.Errorf("consuming everything: %w", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, err := range errs {
		if !strings.Contains(err.Error(), "poison") {
			return fmt.Errorf("Consume reported %w", err)
		}
	}
	if len(seen) != queueSuiteBatch+2 || seen[batch[7]] != 2 || seen[batch[0]] != 1 {
		return fmt.Errorf("handled %d ids (b0 %d times, b7 %d), want %d", len(seen), seen[batch[0]], seen[batch[7]], queueSuiteBatch+2)
	}
	dead, err := q.DeadLetters(ctx, 10)
	if err != nil || len(dead) != 1 || dead[0].ID != batch[7] || string(dead[0].Payload) != "b7" || dead[0].Attempts != 2 {
		return fmt.Errorf("DeadLetters: %+v %v", dead, err)
	}
	return nil
}

// quantileDur is quantile for latencies in ns, as a Duration.
func quantileDur(lat []float64, q float64) time.Duration {
	return time.Duration(quantile(lat, q)).Round(time.Microsecond)
}

// sortedKeys lists a map's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// pinName is a lock name in the hash slot of "k": a waiter on it keeps up
// the subscription that grants of "k" arrive on (one per slot on a Cluster).
var pinName = func() string {
	for i := 0; ; i++ {
		if name := "pin-" + strconv.Itoa(i); nameSlot(name) == nameSlot("k") {
			return name
		}
	}
}()

// pinnedLockers returns a Locker on each client, under prefix, each with
// a waiter on a lock that a third Locker (on pinner) holds until the test
// ends: their grant subscriptions for "k" stay up meanwhile.
func pinnedLockers(t *testing.T, clients [2]redis.UniversalClient, pinner redis.UniversalClient, prefix string) [2]*Locker {
	t.Helper()
	ctx := context.Background()
	var lockers [2]*Locker
	for i, c := range clients {
		lockers[i] = NewLocker(c, WithPrefix(prefix))
		t.Cleanup(func() { lockers[i].Close() })
	}
	pl := NewLocker(pinner, WithPrefix(prefix))
	pin, err := pl.TryObtain(ctx, pinName, WithTTL(time.Minute))
	require.NoError(t, err)
	pctx, unpin := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, l := range lockers {
		// Retries only when the pin's lease ends, so an outage meanwhile
		// does not end the wait.
		wg.Go(func() { _, _ = l.Obtain(pctx, pinName, WithRetry(LinearBackoff(time.Hour))) })
	}
	t.Cleanup(func() {
		unpin()
		wg.Wait()
		_ = pin.Release(ctx)
		pl.Close()
	})
	for _, l := range lockers {
		redistest.Eventually(t, 5*time.Second, "a waiter on the pinned lock", func() bool { return queuedIn(l, pin.name) })
	}
	return lockers
}

// settledHandoffs passes the lock "k" back and forth between two Lockers n
// times and returns each hand-off's latency in ns. The holder releases
// settle after the waiter queued, so that only the grant's notice (or the
// waiter's check, 250ms at first) can end the wait; gap spaces the
// hand-offs. Each Obtain is bounded to 10s. It may run in any goroutine.
func settledHandoffs(ctx context.Context, lockers [2]*Locker, n int, settle, gap time.Duration) ([]float64, error) {
	held, err := lockers[0].TryObtain(ctx, "k")
	if err != nil {
		return nil, err
	}
	var lat []float64
	for i := range n {
		waiter := lockers[(i+1)%2]
		type result struct {
			lk  *Lock
			err error
		}
		got := make(chan result, 1)
		go func() {
			octx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			lk, err := waiter.Obtain(octx, "k")
			got <- result{lk, err}
		}()
		for deadline := time.Now().Add(5 * time.Second); !queuedIn(waiter, held.name); {
			if time.Now().After(deadline) {
				_ = held.Release(ctx)
				if r := <-got; r.lk != nil {
					_ = r.lk.Release(ctx)
				}
				return lat, errors.New("waiter not queued after 5s")
			}
			time.Sleep(20 * time.Microsecond)
		}
		time.Sleep(settle)
		start := time.Now()
		relErr := held.Release(ctx)
		r := <-got
		if r.err != nil || relErr != nil {
			if r.lk != nil {
				_ = r.lk.Release(ctx)
			}
			return lat, fmt.Errorf("hand-off %d: %w", i, errors.Join(relErr, r.err))
		}
		lat = append(lat, float64(time.Since(start)))
		held = r.lk
		time.Sleep(gap)
	}
	return lat, held.Release(ctx)
}
