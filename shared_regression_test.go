package redlease

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// listener subscribes a test client to a fresh channel, as a live Locker
// would be: a PUBLISH to it reaches somebody.
func listener(t *testing.T, ctx context.Context, c *redis.Client, name string) (string, *redis.PubSub) {
	t.Helper()
	ch := uniq(t) + ":grant:" + name
	ps := c.Subscribe(ctx, ch)
	_, err := ps.Receive(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { ps.Close() })
	return ch, ps
}

// A refused shared attempt never reports a lease it did not take. It once
// did: its reply, -3 - (the earliest shared lease's remaining ms), was read
// from an ended entry left in the shared set (a release that found only
// ended ones deleted the lock key but kept them), and came out positive: a
// "fence". Ended entries now go with the lock key, and the reply counts
// only live ones; here an ended entry is also put back by hand.
func TestRefusedSharedAttemptReportsNoLease(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	ls := lockers(t, c.Options().Addr, 3)
	keys := ls[0].lockKeys("k")
	// A stale share (ended) next to a live one, then the live one released:
	// LOCK is deleted, SHARED keeps the ended entry with the live one's TTL.
	_, err := ls[0].TryObtainShared(ctx, "k", WithTTL(50*time.Millisecond), WithoutWatchdog())
	require.NoError(t, err)
	s2, err := ls[0].TryObtainShared(ctx, "k")
	require.NoError(t, err)
	time.Sleep(120 * time.Millisecond) // the first share ended
	require.NoError(t, s2.Release(ctx))
	require.Zero(t, c.Exists(ctx, keys[0], keys[3]).Val(), "the last live share's release left keys")
	require.NoError(t, c.ZAdd(ctx, keys[3], redis.Z{Score: float64(time.Now().Add(-time.Second).UnixMilli()), Member: newToken()}).Err())
	// An exclusive lease that expires with a (live) shared waiter queued.
	_, err = ls[1].TryObtain(ctx, "k", WithTTL(100*time.Millisecond), WithoutWatchdog())
	require.NoError(t, err)
	ch, _ := listener(t, ctx, c, "w")
	ticket := c.Incr(ctx, keys[1]).Val()
	require.NoError(t, c.ZAdd(ctx, keys[2], redis.Z{Score: float64(ticket), Member: "2000:1 " + ch + " " + newToken()}).Err())
	redistest.Eventually(t, 2*time.Second, "exclusive lease expired", func() bool { return c.Exists(ctx, keys[0]).Val() == 0 })
	time.Sleep(20 * time.Millisecond)
	// The newcomer lets the waiter in, then does not fit its limit.
	_, err = ls[2].TryObtainShared(ctx, "k", WithLimit(1))
	require.ErrorIs(t, err, ErrNotObtained)
	require.Equal(t, int64(1), c.ZCard(ctx, keys[3]).Val(), "only the waiter's share")
}

// A writer that gives up lets in the shared waiters it held back, in the
// call that takes it out of the queue, not at their next check (here a
// minute away).
func TestWriterGivingUpLetsReadersIn(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ls := lockers(t, c.Options().Addr, 3)
		r1, err := ls[0].TryObtainShared(ctx, "k")
		require.NoError(t, err)
		defer r1.Release(ctx)
		wctx, quit := context.WithCancel(ctx)
		writer := waitFor(t, wctx, ls[1], "k", WithRetry(LinearBackoff(time.Minute)))
		reader := waitForShared(t, ctx, ls[2], "k", WithRetry(LinearBackoff(time.Minute)))
		time.Sleep(50 * time.Millisecond) // the reader's first check (its subscription up) is done
		quit()
		require.Nil(t, <-writer)
		ls[1].waits.cleanups.Wait() // the writer left the queue
		lk := receive(t, reader, 3*time.Second)
		require.NoError(t, lk.Release(ctx))
	})
}

// A shared waiter held back by WithLimit checks again when the earliest
// shared lease ends (a crashed holder's permit frees then), not when the
// latest does, which renewals keep pushing back, nor at its retry wait.
func TestCrashedPermitIsTakenWhenItEnds(t *testing.T) {
	c := realRedis(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ls := lockers(t, c.Options().Addr, 2)
	live, err := ls[0].TryObtainShared(ctx, "k", WithLimit(2))
	require.NoError(t, err)
	defer live.Release(ctx)
	_, err = ls[0].TryObtainShared(ctx, "k", WithLimit(2), WithTTL(500*time.Millisecond), WithoutWatchdog())
	require.NoError(t, err)
	start := time.Now()
	lk, err := ls[1].ObtainShared(ctx, "k", WithLimit(2), WithRetry(firstSoonThenRarely{}))
	require.NoError(t, err)
	require.Less(t, time.Since(start), 3*time.Second, "the waiter missed the crashed permit's end")
	require.NoError(t, lk.Release(ctx))
}

// firstSoonThenRarely checks after 50ms, then every 10s: a waiter that gets
// in sooner than 10s after its first check learned when to look again.
type firstSoonThenRarely struct{}

func (firstSoonThenRarely) NextBackoff(n int) (time.Duration, bool) {
	if n == 1 {
		return 50 * time.Millisecond, true
	}
	return 10 * time.Second, true
}
