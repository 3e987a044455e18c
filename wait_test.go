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

// waitFor starts l.Obtain(key) in a goroutine and returns once the waiter
// is queued in Redis; the channel yields its lock (nil on error).
func waitFor(t *testing.T, ctx context.Context, l *Locker, key string, opts ...LockOption) <-chan *Lock {
	t.Helper()
	got := make(chan *Lock, 1)
	go func() {
		lk, err := l.Obtain(ctx, key, opts...)
		if err != nil && ctx.Err() == nil {
			t.Error(err)
		}
		got <- lk
	}()
	redistest.Eventually(t, 5*time.Second, "waiter queued", func() bool { return queuedIn(l, key) })
	return got
}

func receive(t *testing.T, got <-chan *Lock, within time.Duration) *Lock {
	t.Helper()
	select {
	case lk := <-got:
		if lk == nil {
			t.Fatal("Obtain failed")
		}
		return lk
	case <-time.After(within):
		t.Fatalf("Obtain still waiting after %v", within)
	}
	return nil
}

// lockers returns n Lockers under one prefix, each on a client of its own,
// as n processes would be.
func lockers(t *testing.T, addr string, n int) []*Locker {
	prefix := uniq(t)
	var ls []*Locker
	for range n {
		c := redis.NewClient(&redis.Options{Addr: addr})
		l := NewLocker(c, WithPrefix(prefix))
		t.Cleanup(func() { l.Close(); c.Close() })
		ls = append(ls, l)
	}
	return ls
}

// Waiters of different Lockers get the lock in the order they queued, and
// each release hands it over in the same step: when Release returns, Redis
// holds the next waiter's lease, and nobody else can take the lock.
func TestWaitersAreServedInArrivalOrder(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		ls := lockers(t, c.Options().Addr, 5)
		holder, err := ls[0].TryObtain(ctx, "k")
		require.NoError(t, err)
		var waits []<-chan *Lock
		for _, l := range ls[1:] {
			waits = append(waits, waitFor(t, ctx, l, "k", WithRetry(LinearBackoff(time.Minute))))
		}
		prev := holder
		for i, got := range waits {
			require.NoError(t, prev.Release(ctx))
			v := c.Get(ctx, prev.rkey).Val()
			if v == "" || v == prev.Token() {
				t.Fatalf("hand-over %d: after Release, Redis holds %q", i, v)
			}
			if _, err := ls[0].TryObtain(ctx, "k"); !errors.Is(err, ErrNotObtained) {
				t.Fatalf("hand-over %d: a newcomer's TryObtain: %v, want ErrNotObtained", i, err)
			}
			lk := receive(t, got, 5*time.Second)
			if lk.l != ls[i+1] || lk.Token() != v {
				t.Fatalf("hand-over %d went to another waiter than the oldest (Redis holds %q)", i, v)
			}
			if lk.Fence() <= prev.Fence() {
				t.Fatalf("hand-over %d: fence %d after %d", i, lk.Fence(), prev.Fence())
			}
			prev = lk
		}
		require.NoError(t, prev.Release(ctx))
		if n := c.Exists(ctx, prev.rkey, ls[0].lockKeys("k")[2]).Val(); n != 0 {
			t.Fatalf("%d of the lock and its queue left after the last release", n)
		}
	})
}

// The uncontended cycle pays nothing for the queue: the acquire and the
// release scripts send 7 commands between them, and no PUBLISH.
func TestUncontendedCycleCost(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	l := NewLocker(c, WithPrefix(uniq(t)))
	defer l.Close()
	lk, err := l.TryObtain(ctx, "k") // loads the scripts
	require.NoError(t, err)
	require.NoError(t, lk.Release(ctx))
	const cycles = 100
	before := commandStats(t, c)
	for range cycles {
		lk, err := l.TryObtain(ctx, "k")
		require.NoError(t, err)
		require.NoError(t, lk.Release(ctx))
	}
	delta, total := commandsSince(t, c, before)
	t.Logf("%d cycles: %v", cycles, delta)
	if delta["publish"] != 0 || total != 7*cycles {
		t.Fatalf("%d commands for %d cycles (%d PUBLISH), want %d and none", total, cycles, delta["publish"], 7*cycles)
	}
}

// listenInstead swaps the queue entry of l's waiter on key for one that
// carries the same token but a channel that only a test subscription
// hears: a release then grants the waiter the lock, and its notice is lost.
func listenInstead(t *testing.T, ctx context.Context, c *redis.Client, l *Locker, key string) {
	t.Helper()
	queue := l.lockKeys(key)[2]
	entries, err := c.ZRangeWithScores(ctx, queue, 0, -1).Result()
	require.NoError(t, err)
	for _, e := range entries {
		entry := e.Member.(string)
		if !strings.Contains(entry, l.waits.id) {
			continue
		}
		ms, rest, _ := strings.Cut(entry, " ")
		token := rest[strings.LastIndex(rest, " ")+1:]
		deaf := uniq(t) + ":deaf"
		ps := c.Subscribe(ctx, deaf)
		_, err := ps.Receive(ctx)
		require.NoError(t, err)
		t.Cleanup(func() { ps.Close() })
		require.NoError(t, c.ZRem(ctx, queue, entry).Err())
		require.NoError(t, c.ZAdd(ctx, queue, redis.Z{Score: e.Score, Member: ms + " " + deaf + " " + token}).Err())
		return
	}
	t.Fatal("no entry of the Locker queued")
}

// A grant whose notice never arrives does not strand the waiter: its
// checks find the lease granted to it and take it (the first leaves it to
// the notice), with a fence above the last holder's.
func TestLostGrantNoticeIsFoundByChecks(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		ls := lockers(t, c.Options().Addr, 2)
		holder, err := ls[0].TryObtain(ctx, "k")
		require.NoError(t, err)
		const every = 50 * time.Millisecond
		got := waitFor(t, ctx, ls[1], "k", WithRetry(LinearBackoff(every)))
		listenInstead(t, ctx, c, ls[1], "k")
		start := time.Now()
		require.NoError(t, holder.Release(ctx))
		lk := receive(t, got, 5*time.Second)
		defer lk.Release(ctx)
		took := time.Since(start)
		t.Logf("the waiter took the lease granted without notice after %v (checks every %v)", took, every)
		if took > 20*every {
			t.Errorf("took %v: the checks did not find the grant", took)
		}
		if v := c.Get(ctx, lk.rkey).Val(); v != lk.Token() || lk.Fence() <= holder.Fence() {
			t.Fatalf("Redis holds %q for token %q; fence %d after %d", v, lk.Token(), lk.Fence(), holder.Fence())
		}
		if d, err := lk.TTL(ctx); err != nil || d <= DefaultGrantTTL {
			t.Fatalf("the lease taken has TTL %v %v: want it renewed to the full TTL", d, err)
		}
	})
}

// A waiter whose Locker no longer listens (its process died, say) is
// skipped by the release at once: the next live waiter gets the lock in
// the same step, and the dead entry is gone.
func TestReleaseSkipsWaitersNobodyListensFor(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		ls := lockers(t, c.Options().Addr, 2)
		holder, err := ls[0].TryObtain(ctx, "k")
		require.NoError(t, err)
		keys := ls[0].lockKeys("k")
		queue := keys[2]
		// Dead waiters ahead of the live one: lower tickets.
		require.NoError(t, c.Set(ctx, keys[1], 1000, 0).Err())
		var dead []any
		for i := range maxSkippedWaiters + 3 {
			dead = append(dead, redis.Z{Score: float64(i + 1), Member: fmt.Sprintf("2000 %s:gone:%d tok%d", uniq(t), i, i)})
		}
		require.NoError(t, c.ZAdd(ctx, queue, toZ(dead)...).Err())
		got := waitFor(t, ctx, ls[1], "k", WithRetry(LinearBackoff(100*time.Millisecond)))
		start := time.Now()
		require.NoError(t, holder.Release(ctx))
		// The release skips maxSkippedWaiters of them and deletes the lock;
		// the live waiter's next check skips the rest and takes it.
		lk := receive(t, got, 5*time.Second)
		defer lk.Release(ctx)
		t.Logf("%d dead waiters ahead: the live one got the lock after %v, at its first check", len(dead), time.Since(start))
		if lk.Fence() <= holder.Fence() {
			t.Fatalf("fence %d after %d", lk.Fence(), holder.Fence())
		}
		if n := c.ZCard(ctx, queue).Val(); n != 0 {
			t.Fatalf("%d entries left in the queue", n)
		}
	})
}

func toZ(zs []any) []redis.Z {
	out := make([]redis.Z, len(zs))
	for i, z := range zs {
		out[i] = z.(redis.Z)
	}
	return out
}

// A waiter that gives up leaves the queue; if the lock was granted to it
// as it gave up (its notice lost here), it passes on to the next waiter.
func TestWaiterGivingUpPassesAGrantOn(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		ls := lockers(t, c.Options().Addr, 3)
		holder, err := ls[0].TryObtain(ctx, "k")
		require.NoError(t, err)
		quitting, quit := context.WithCancel(ctx)
		gaveUp := waitFor(t, quitting, ls[1], "k", WithRetry(LinearBackoff(time.Minute)))
		next := waitFor(t, ctx, ls[2], "k", WithRetry(LinearBackoff(time.Minute)))
		listenInstead(t, ctx, c, ls[1], "k")
		require.NoError(t, holder.Release(ctx)) // granted to the waiter that gives up
		quit()
		if lk := <-gaveUp; lk != nil {
			t.Fatal("the waiter that gave up got a lock")
		}
		lk := receive(t, next, 5*time.Second)
		require.NoError(t, lk.Release(ctx))
		ls[1].waits.cleanups.Wait()
		if n := c.Exists(ctx, lk.rkey, ls[0].lockKeys("k")[2]).Val(); n != 0 {
			t.Fatalf("%d of the lock and its queue left", n)
		}
	})
}

// Lockers on clients of their own (as processes would be) contend for one
// lock: every one gets its fair share (first come, first served), and an
// acquisition costs a queued attempt and a granting release, 9 commands,
// with 8 Lockers as with 64.
func TestFairAcrossLockers(t *testing.T) {
	c := realRedis(t)
	for _, n := range []int{8, 64} {
		t.Run(strconv.Itoa(n), func(t *testing.T) { fairAcross(t, c, n) })
	}
}

func fairAcross(t *testing.T, c *redis.Client, n int) {
	ctx := context.Background()
	const hold, run = time.Millisecond, time.Second
	ls := lockers(t, c.Options().Addr, n)
	var wg sync.WaitGroup
	for _, l := range ls { // each Locker subscribes before the count starts
		wg.Go(func() {
			if lk, err := l.Obtain(ctx, "k"); err == nil {
				lk.Release(ctx)
			}
		})
	}
	wg.Wait()
	counts := make([]int, n)
	before := commandStats(t, c)
	end := time.Now().Add(run)
	for i, l := range ls {
		wg.Go(func() {
			for k := 0; k < 10_000 && time.Now().Before(end); k++ {
				octx, cancel := context.WithTimeout(ctx, 10*time.Second)
				lk, err := l.Obtain(octx, "k")
				cancel()
				if err != nil {
					t.Error(err)
					return
				}
				counts[i]++
				time.Sleep(hold)
				if err := lk.Release(ctx); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	delta, total := commandsSince(t, c, before)
	sum := 0
	for _, k := range counts {
		sum += k
	}
	per := float64(total) / float64(sum)
	t.Logf("%d acquisitions by %d Lockers (fewest %d, most %d): %.2f commands each %v", sum, n, slices.Min(counts), slices.Max(counts), per, delta)
	for i, k := range counts {
		if share := float64(k) * float64(n) / float64(sum); share < 0.5 || share > 1.5 {
			t.Errorf("Locker %d got %d of %d acquisitions: %.0f%% of its fair share", i, k, sum, 100*share)
		}
	}
	if per > 9.5 {
		t.Errorf("%.2f commands per acquisition", per)
	}
}
