package redlease

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// slowDialLocker returns a Locker whose client dials new connections
// (its subscription's) delay late once slow is set; one connection is
// pooled first for its attempts.
func slowDialLocker(t *testing.T, addr, prefix string, delay time.Duration) (*Locker, *atomic.Bool) {
	t.Helper()
	var slow atomic.Bool
	wc := redis.NewClient(&redis.Options{Addr: addr, Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if slow.Load() {
			time.Sleep(delay)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}})
	require.NoError(t, wc.Ping(context.Background()).Err())
	wl := NewLocker(wc, WithPrefix(prefix))
	t.Cleanup(func() { wl.Close(); wc.Close() })
	return wl, &slow
}

// A waiter whose subscription is slow (1.5s) does not queue until it is
// up, however long that takes: queued unheard, a shared attempt's look for
// dead writers would skip it.
func TestSlowSubscriptionWriterIsNotOvertaken(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	prefix := uniq(t)
	wl, slow := slowDialLocker(t, c.Options().Addr, prefix, 1500*time.Millisecond)
	l := lockers(t, c.Options().Addr, 1)[0]
	r, err := l.TryObtainShared(ctx, "k")
	require.NoError(t, err)
	slow.Store(true)
	octx, cancel := context.WithTimeout(ctx, 8*time.Second)
	defer cancel()
	writer := make(chan *Lock, 1)
	go func() {
		w, _ := wl.Obtain(octx, "k")
		writer <- w
	}()
	queue := l.lockKeys("k")[2]
	redistest.Eventually(t, 5*time.Second, "the writer queued", func() bool { return c.ZCard(ctx, queue).Val() == 1 })
	lk, err := l.TryObtainShared(ctx, "k")
	if err == nil {
		t.Errorf("a shared lease overtook the queued writer (its subscription not up); %d waiters left queued", c.ZCard(ctx, queue).Val())
		require.NoError(t, lk.Release(ctx))
	} else {
		require.ErrorIs(t, err, ErrNotObtained)
	}
	require.NoError(t, r.Release(ctx))
	w := <-writer
	require.NotNil(t, w, "the writer did not get the lock")
	require.NoError(t, w.Release(ctx))
}

// A waiter whose subscription is slow polls without queueing until it is
// up, so a release meanwhile frees the lock for it rather than publishing a
// grant to nobody and leaving it to sleep until its next check (a minute).
func TestSlowSubscriptionWaiterGetsAFreedLock(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	prefix := uniq(t)
	wl, slow := slowDialLocker(t, c.Options().Addr, prefix, 1500*time.Millisecond)
	l := lockers(t, c.Options().Addr, 1)[0]
	h, err := l.TryObtain(ctx, "k") // 30s TTL, watchdog on
	require.NoError(t, err)
	slow.Store(true)
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	type res struct {
		lk *Lock
		at time.Time
	}
	writer := make(chan res, 1)
	go func() {
		w, _ := wl.Obtain(octx, "k", WithRetry(LinearBackoff(time.Minute)))
		writer <- res{w, time.Now()}
	}()
	queue := l.lockKeys("k")[2]
	redistest.Eventually(t, 5*time.Second, "the writer queued", func() bool { return c.ZCard(ctx, queue).Val() == 1 })
	released := time.Now()
	require.NoError(t, h.Release(ctx)) // publishes to nobody: the writer is skipped, the lock left free
	got := <-writer
	require.NotNil(t, got.lk, "the writer did not get the free lock within 10s")
	require.Less(t, got.at.Sub(released), 3*time.Second, "the writer missed the skipped grant after its subscription came up")
	require.NoError(t, got.lk.Release(ctx))
}

// A waiter's exit (a release with its entry) sent twice lets in the readers
// behind it once, never itself, and grants nothing the second time.
func TestWaiterExitIsSafeToResend(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	l := lockers(t, c.Options().Addr, 1)[0]
	keys := l.lockKeys("k")
	chW, _ := listener(t, ctx, c, "w")
	chR, psR := listener(t, ctx, c, "r")
	chW2, _ := listener(t, ctx, c, "w2")
	tokW, tokR1, tokR2, tokW2 := newToken(), newToken(), newToken(), newToken()
	eW := "2000 " + chW + " " + tokW
	add := func(e string) {
		require.NoError(t, c.ZAdd(ctx, keys[2], redis.Z{Score: float64(c.Incr(ctx, keys[1]).Val()), Member: e}).Err())
	}
	// A live share holds the lock; W (exclusive) heads the queue, readers behind, then W2.
	s, err := l.TryObtainShared(ctx, "k")
	require.NoError(t, err)
	add(eW)
	add("2000:0 " + chR + " " + tokR1)
	add("2000:0 " + chR + " " + tokR2)
	add("2000 " + chW2 + " " + tokW2)
	lk := &Lock{lease: lease{token: tokW}, keyList: keys}
	for i := 0; i < 2; i++ {
		code, err := releaseScript.call(ctx, c, keys[:], &lk.token, &lk.fence, "PUBLISH", &eW).Int64()
		require.NoError(t, err)
		require.Equal(t, int64(0), code)
	}
	require.Equal(t, int64(3), c.ZCard(ctx, keys[3]).Val(), "s, R1, R2")
	require.Equal(t, []string{"2000 " + chW2 + " " + tokW2}, c.ZRange(ctx, keys[2], 0, -1).Val())
	require.Equal(t, "", c.Get(ctx, keys[0]).Val())
	n := 0
	for n < 2 {
		m, err := psR.ReceiveTimeout(ctx, time.Second)
		require.NoError(t, err)
		if _, ok := m.(*redis.Message); ok {
			n++
		}
	}
	_, err = psR.ReceiveTimeout(ctx, 200*time.Millisecond)
	require.Error(t, err, "a third notice")
	require.NoError(t, s.Release(ctx))
}
