package redlease

import (
	"context"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// Shared leases hold a lock together, and exclude an exclusive lease both
// ways.
func TestSharedLeasesExcludeExclusive(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		ls := lockers(t, c.Options().Addr, 2)
		var held []*Lock
		for i := range 3 {
			lk, err := ls[i%2].TryObtainShared(ctx, "k")
			require.NoError(t, err)
			require.True(t, lk.Shared())
			held = append(held, lk)
		}
		_, err := ls[0].TryObtain(ctx, "k")
		require.ErrorIs(t, err, ErrNotObtained)
		for _, lk := range held {
			require.NoError(t, lk.Release(ctx))
		}
		ex, err := ls[1].TryObtain(ctx, "k")
		require.NoError(t, err)
		require.False(t, ex.Shared())
		_, err = ls[0].TryObtainShared(ctx, "k")
		require.ErrorIs(t, err, ErrNotObtained)
		require.NoError(t, ex.Release(ctx))
		lk, err := ls[0].TryObtainShared(ctx, "k")
		require.NoError(t, err)
		require.NoError(t, lk.Release(ctx))
		keys := ls[0].lockKeys("k")
		require.Zero(t, c.Exists(ctx, keys[0], keys[2], keys[3]).Val(), "a free lock leaves no key but its fence counter")
	})
}

// WithLimit(n) is a semaphore of n permits: the n+1st waits for a release.
func TestSharedLimit(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		ls := lockers(t, c.Options().Addr, 2)
		a, err := ls[0].TryObtainShared(ctx, "k", WithLimit(2))
		require.NoError(t, err)
		_, err = ls[1].TryObtainShared(ctx, "k", WithLimit(2))
		require.NoError(t, err)
		_, err = ls[0].TryObtainShared(ctx, "k", WithLimit(2))
		require.ErrorIs(t, err, ErrNotObtained)
		got := waitForShared(t, ctx, ls[1], "k", WithLimit(2), WithRetry(LinearBackoff(time.Minute)))
		require.NoError(t, a.Release(ctx))
		lk := receive(t, got, 2*time.Second)
		require.True(t, lk.Shared())
		require.Equal(t, int64(2), c.ZCard(ctx, ls[0].lockKeys("k")[3]).Val())
	})
}

// waitForShared is waitFor for ObtainShared.
func waitForShared(t *testing.T, ctx context.Context, l *Locker, key string, opts ...LockOption) <-chan *Lock {
	t.Helper()
	got := make(chan *Lock, 1)
	go func() {
		lk, err := l.ObtainShared(ctx, key, opts...)
		if err != nil && ctx.Err() == nil {
			t.Error(err)
		}
		got <- lk
	}()
	redistest.Eventually(t, 5*time.Second, "shared waiter queued", func() bool { return queuedIn(l, key) })
	return got
}

// A waiting exclusive Obtain holds back new shared leases, from every
// Locker, its own included; the last shared release hands it the lock, and
// its release lets every shared waiter in at once.
func TestWriterPreference(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		ls := lockers(t, c.Options().Addr, 3)
		r1, err := ls[0].TryObtainShared(ctx, "k")
		require.NoError(t, err)
		r2, err := ls[1].TryObtainShared(ctx, "k")
		require.NoError(t, err)
		slow := WithRetry(LinearBackoff(time.Minute)) // only a release can hand it over in time
		writer := waitFor(t, ctx, ls[2], "k", slow)
		for _, l := range ls {
			_, err := l.TryObtainShared(ctx, "k")
			require.ErrorIs(t, err, ErrNotObtained, "a shared lease overtook the waiting writer")
		}
		var readers []<-chan *Lock
		for _, l := range ls[:2] {
			readers = append(readers, waitForShared(t, ctx, l, "k", slow))
		}
		require.NoError(t, r1.Release(ctx))
		select {
		case <-writer:
			t.Fatal("writer got the lock while a shared lease held it")
		case <-time.After(50 * time.Millisecond):
		}
		require.NoError(t, r2.Release(ctx))
		w := receive(t, writer, 2*time.Second)
		require.False(t, w.Shared())
		require.NoError(t, w.Release(ctx))
		for _, got := range readers {
			lk := receive(t, got, 2*time.Second)
			require.Greater(t, lk.Fence(), w.Fence()-1)
		}
	})
}

// A waiting writer whose process died stops holding back shared leases at
// the next shared attempt, which finds nobody listening for it.
func TestDeadWriterStopsBlockingReaders(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		ls := lockers(t, c.Options().Addr, 2)
		r, err := ls[0].TryObtainShared(ctx, "k")
		require.NoError(t, err)
		queue := ls[0].lockKeys("k")[2]
		dead := "2000 " + uniq(t) + ":grant:gone " + newToken()
		require.NoError(t, c.ZAdd(ctx, queue, redis.Z{Score: 1, Member: dead}).Err())
		lk, err := ls[1].TryObtainShared(ctx, "k")
		require.NoError(t, err, "a dead writer held back a shared lease")
		require.Zero(t, c.ZCard(ctx, queue).Val())
		require.NoError(t, lk.Release(ctx))
		require.NoError(t, r.Release(ctx))
	})
}

// Fences: a shared lease's is at least every earlier lease's, and every
// later exclusive lease's is above it.
func TestSharedFences(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		l := lockers(t, c.Options().Addr, 1)[0]
		ex, err := l.TryObtain(ctx, "k")
		require.NoError(t, err)
		require.NoError(t, ex.Release(ctx))
		s1, err := l.TryObtainShared(ctx, "k")
		require.NoError(t, err)
		s2, err := l.TryObtainShared(ctx, "k")
		require.NoError(t, err)
		require.GreaterOrEqual(t, s1.Fence(), ex.Fence())
		require.GreaterOrEqual(t, s2.Fence(), s1.Fence())
		require.NoError(t, s1.Release(ctx))
		require.NoError(t, s2.Release(ctx))
		ex2, err := l.TryObtain(ctx, "k")
		require.NoError(t, err)
		require.Greater(t, ex2.Fence(), s2.Fence())
		require.NoError(t, ex2.Release(ctx))
	})
}

// A shared lease is a lease: TTL, Refresh, renewal past its TTL, Lost when
// it is taken away, and Release.
func TestSharedLeaseIsALease(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	l := lockers(t, c.Options().Addr, 1)[0]
	lk, err := l.TryObtainShared(ctx, "k", WithTTL(300*time.Millisecond))
	require.NoError(t, err)
	ttl, err := lk.TTL(ctx)
	require.NoError(t, err)
	require.InDelta(t, 300, ttl.Milliseconds(), 50)
	require.NoError(t, lk.Refresh(ctx, time.Second))
	ttl, err = lk.TTL(ctx)
	require.NoError(t, err)
	require.Greater(t, ttl, 900*time.Millisecond)
	require.NoError(t, lk.Refresh(ctx, 300*time.Millisecond))
	time.Sleep(700 * time.Millisecond) // two TTLs: the watchdog renewed it
	ttl, err = lk.TTL(ctx)
	require.NoError(t, err)
	require.Greater(t, ttl, time.Duration(0), "the watchdog did not renew a shared lease")
	require.NoError(t, c.ZRem(ctx, l.lockKeys("k")[3], lk.Token()).Err())
	select {
	case <-lk.Lost():
	case <-time.After(2 * time.Second):
		t.Fatal("Lost did not close once the shared lease was gone")
	}
	require.ErrorIs(t, lk.Err(), ErrNotHeld)
	require.ErrorIs(t, lk.Release(ctx), ErrNotHeld)
}

// A shared holder that stops renewing (crashed) frees its share with its
// TTL, while another keeps renewing its own.
func TestCrashedShareFreesItsPermit(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	l := lockers(t, c.Options().Addr, 1)[0]
	live, err := l.TryObtainShared(ctx, "k", WithLimit(2), WithTTL(300*time.Millisecond))
	require.NoError(t, err)
	_, err = l.TryObtainShared(ctx, "k", WithLimit(2), WithTTL(300*time.Millisecond), WithoutWatchdog())
	require.NoError(t, err)
	_, err = l.TryObtainShared(ctx, "k", WithLimit(2))
	require.ErrorIs(t, err, ErrNotObtained)
	start := time.Now()
	lk, err := l.ObtainShared(ctx, "k", WithLimit(2), WithRetry(LinearBackoff(20*time.Millisecond)))
	require.NoError(t, err)
	require.Less(t, time.Since(start), time.Second)
	select {
	case <-live.Lost():
		t.Fatal("the renewed share was lost")
	default:
	}
	require.NoError(t, lk.Release(ctx))
	require.NoError(t, live.Release(ctx))
}

// DoShared runs fn under a shared lease and cancels its context when the
// lease is lost.
func TestDoShared(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		l := lockers(t, c.Options().Addr, 1)[0]
		ran := false
		require.NoError(t, l.DoShared(ctx, "k", func(ctx context.Context) error {
			ran = true
			_, err := l.TryObtain(ctx, "k")
			require.ErrorIs(t, err, ErrNotObtained)
			_, err = l.TryObtainShared(ctx, "k")
			require.NoError(t, err)
			return nil
		}))
		require.True(t, ran)
		err := l.DoShared(ctx, "k2", func(ctx context.Context) error {
			require.NoError(t, c.Del(ctx, l.lockKey("k2")).Err())
			redistest.Eventually(t, 40*time.Second, "fn's context cancelled", func() bool { return ctx.Err() != nil })
			return ctx.Err()
		}, WithTTL(300*time.Millisecond))
		require.ErrorIs(t, err, ErrNotHeld)
	})
}

// Resending a shared attempt or release (a lost reply) neither doubles the
// lease nor frees another's.
func TestSharedScriptsAreSafeToResend(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		l := lockers(t, c.Options().Addr, 1)[0]
		cfg, err := l.lockConfig("k", []LockOption{WithLimit(2)}, true)
		require.NoError(t, err)
		lk := l.newLock("k", cfg, nil)
		for range 2 {
			ok, fence, err := l.store.acquire(ctx, lk, time.Now(), nil)
			require.NoError(t, err)
			require.True(t, ok)
			require.Positive(t, fence)
		}
		require.Equal(t, int64(1), c.ZCard(ctx, lk.skey).Val())
		other, err := l.TryObtainShared(ctx, "k", WithLimit(2))
		require.NoError(t, err, "a resent attempt took a second permit")
		code, err := l.store.release(ctx, lk, nil)
		require.NoError(t, err)
		require.Equal(t, int64(codeOK), code)
		code, err = l.store.release(ctx, lk, nil)
		require.NoError(t, err)
		require.Equal(t, int64(codeGone), code)
		ttl, err := other.TTL(ctx)
		require.NoError(t, err)
		require.Positive(t, ttl, "a resent release ended another's share")
	})
}

func TestSharedBadInput(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	l := NewLocker(c)
	defer l.Close()
	fn := func(context.Context) error { return nil }
	m2, c2 := newMini(t)
	c3 := redis.NewClient(&redis.Options{Addr: miniredis.RunT(t).Addr()})
	defer c3.Close()
	q := NewQuorumLocker([]redis.UniversalClient{c, c2, c3})
	defer q.Close()
	cases := map[string]func() error{
		"limit 0":            func() error { _, err := l.TryObtainShared(ctx, "k", WithLimit(0)); return err },
		"limit negative":     func() error { _, err := l.ObtainShared(ctx, "k", WithLimit(-1)); return err },
		"limit too big":      func() error { _, err := l.ObtainShared(ctx, "k", WithLimit(MaxLimit+1)); return err },
		"limit on TryObtain": func() error { _, err := l.TryObtain(ctx, "k", WithLimit(2)); return err },
		"limit on Obtain":    func() error { _, err := l.Obtain(ctx, "k", WithLimit(2)); return err },
		"limit on Do":        func() error { return l.Do(ctx, "k", fn, WithLimit(2)) },
		"empty key":          func() error { _, err := l.TryObtainShared(ctx, ""); return err },
		"do nil fn":          func() error { return l.DoShared(ctx, "k", nil) },
		"quorum":             func() error { _, err := q.TryObtainShared(ctx, "k"); return err },
		"quorum obtain":      func() error { _, err := q.ObtainShared(ctx, "k"); return err },
		"quorum do":          func() error { return q.DoShared(ctx, "k", fn) },
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			require.ErrorIs(t, f(), ErrInvalidArgument)
		})
	}
	require.Empty(t, c.Keys(ctx, "*").Val(), "bad input wrote keys")
	require.Empty(t, m2.Keys(), "bad input wrote keys")
}

// An uncontended shared cycle is one script call to take the lease and one
// to release it, without a PUBLISH.
func TestSharedCycleCost(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	l := NewLocker(c, WithPrefix(uniq(t)))
	defer l.Close()
	lk, err := l.TryObtainShared(ctx, "k") // loads the scripts
	require.NoError(t, err)
	require.NoError(t, lk.Release(ctx))
	const cycles = 100
	before := commandStats(t, c)
	for range cycles {
		lk, err := l.TryObtainShared(ctx, "k")
		require.NoError(t, err)
		require.NoError(t, lk.Release(ctx))
	}
	delta, total := commandsSince(t, c, before)
	t.Logf("%d cycles: %v, %.2f commands per cycle", cycles, delta, float64(total)/cycles)
	require.Equal(t, int64(2*cycles), delta["evalsha"], "one script call to take, one to release")
	require.Zero(t, delta["publish"])
	require.Equal(t, int64(sharedCycleCommands*cycles), total)
}

// sharedCycleCommands is what an uncontended TryObtainShared and Release
// cost in Redis commands, counting those inside the scripts.
const sharedCycleCommands = 16

// A shared holder that crashed leaves no key behind once its lease ends,
// even if nobody touches the lock again.
func TestCrashedShareLeavesNoKey(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	l := lockers(t, c.Options().Addr, 1)[0]
	_, err := l.TryObtainShared(ctx, "k", WithTTL(50*time.Millisecond), WithoutWatchdog())
	require.NoError(t, err)
	keys := l.lockKeys("k")
	redistest.Eventually(t, 2*time.Second, "keys expired", func() bool {
		return c.Exists(ctx, keys[0], keys[2], keys[3]).Val() == 0
	})
}

// Fences through a queue of both kinds: an exclusive waiter queued behind
// a shared one gets a fence above the shared lease's, though its ticket
// was counted before that lease was granted.
func TestFencesAcrossMixedQueue(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		ls := lockers(t, c.Options().Addr, 3)
		slow := WithRetry(LinearBackoff(time.Minute))
		e1, err := ls[0].TryObtain(ctx, "k")
		require.NoError(t, err)
		s := waitForShared(t, ctx, ls[1], "k", slow)
		e2 := waitFor(t, ctx, ls[2], "k", slow)
		require.NoError(t, e1.Release(ctx))
		s1 := receive(t, s, 2*time.Second)
		require.GreaterOrEqual(t, s1.Fence(), e1.Fence())
		require.NoError(t, s1.Release(ctx))
		w := receive(t, e2, 2*time.Second)
		require.Greater(t, w.Fence(), s1.Fence())
		require.NoError(t, w.Release(ctx))
	})
}

// A release with more shared waiters queued than one call lets in lets the
// first maxGrantedWaiters in at once; the others get in at their next check.
func TestReleaseLetsManySharedWaitersIn(t *testing.T) {
	c := realRedis(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l := lockers(t, c.Options().Addr, 1)[0]
	ex, err := l.TryObtain(ctx, "k")
	require.NoError(t, err)
	const n = maxGrantedWaiters + 20
	got := make(chan *Lock, n)
	for range n {
		go func() {
			lk, err := l.ObtainShared(ctx, "k", WithRetry(LinearBackoff(300*time.Millisecond)))
			if err != nil {
				t.Error(err)
			}
			got <- lk
		}()
	}
	queue := l.lockKeys("k")[2]
	redistest.Eventually(t, 10*time.Second, "all queued", func() bool { return c.ZCard(ctx, queue).Val() == n })
	require.NoError(t, ex.Release(ctx))
	require.Equal(t, int64(maxGrantedWaiters), c.ZCard(ctx, l.lockKeys("k")[3]).Val(), "one release lets in as many as one call may")
	for range n {
		select {
		case lk := <-got:
			require.NotNil(t, lk)
			require.True(t, lk.Shared())
		case <-ctx.Done():
			t.Fatal("shared waiters left waiting")
		}
	}
	require.Zero(t, c.ZCard(ctx, queue).Val())
	require.Equal(t, int64(n), c.ZCard(ctx, l.lockKeys("k")[3]).Val())
}

// A release that makes room for k shared waiters lets k in, in the same
// step: an exclusive release lets in as many as the limit allows, a shared
// release one more.
func TestReleaseLetsInWhatFits(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel() // the last waiter never fits
		ls := lockers(t, c.Options().Addr, 2)
		keys := ls[0].lockKeys("k")
		ex, err := ls[0].TryObtain(ctx, "k")
		require.NoError(t, err)
		var waits []<-chan *Lock
		for i := range 5 {
			waits = append(waits, waitForShared(t, ctx, ls[i%2], "k", WithLimit(3), WithRetry(LinearBackoff(time.Minute))))
			redistest.Eventually(t, 5*time.Second, "queued", func() bool { return c.ZCard(ctx, keys[2]).Val() == int64(i+1) })
		}
		require.NoError(t, ex.Release(ctx))
		require.Equal(t, int64(3), c.ZCard(ctx, keys[3]).Val(), "shared leases right after the exclusive release")
		require.Equal(t, int64(2), c.ZCard(ctx, keys[2]).Val(), "waiters left")
		first := receive(t, waits[0], 2*time.Second)
		for _, w := range waits[1:3] {
			receive(t, w, 2*time.Second)
		}
		require.NoError(t, first.Release(ctx))
		require.Equal(t, int64(3), c.ZCard(ctx, keys[3]).Val())
		require.Equal(t, int64(1), c.ZCard(ctx, keys[2]).Val())
		receive(t, waits[3], 2*time.Second)
		select {
		case <-waits[4]:
			t.Fatal("a fourth shared lease past the limit")
		case <-time.After(50 * time.Millisecond):
		}
	})
}

// WithReplicaAck on a shared lease waits for replicas as on an exclusive
// one, and gives the share back when too few acknowledge.
func TestSharedReplicaAck(t *testing.T) {
	c, rc := replicatedClients(t)
	ctx := context.Background()
	l := NewLocker(c)
	defer l.Close()
	lk, err := l.TryObtainShared(ctx, "k", WithReplicaAck(1, time.Second), WithLimit(1))
	require.NoError(t, err)
	require.True(t, lk.Shared())
	require.NoError(t, rc.ZScore(ctx, l.lockKeys("k")[3], lk.Token()).Err(), "the replica lacks an acknowledged share")
	_, err = l.TryObtainShared(ctx, "k", WithReplicaAck(2, 100*time.Millisecond))
	require.ErrorIs(t, err, ErrNotObtained)
	require.Equal(t, int64(1), c.ZCard(ctx, l.lockKeys("k")[3]).Val(), "a refused replica-acked share was kept")
	require.NoError(t, lk.Release(ctx))
}
