package redlease

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// Edge cases found in review.

func TestRingRejected(t *testing.T) {
	mr := miniredis.RunT(t)
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": mr.Addr()}})
	defer ring.Close()
	l := NewLocker(ring)
	defer l.Close()
	if _, err := l.Obtain(context.Background(), "k"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("Obtain on a Ring: %v", err)
	}
}

// A waiter behind the head still counts its retries and gives up.
func TestLimitRetryBehindHead(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	l := NewLocker(c)
	defer l.Close()
	h, _ := l.TryObtain(ctx, "k")
	defer h.Release(ctx)
	hctx, hcancel := context.WithCancel(ctx)
	defer hcancel()
	go l.Obtain(hctx, "k") // head, waits until cancelled
	redistest.Eventually(t, time.Second, "head queued", func() bool { return queuedIn(l, h.name) })
	done := make(chan error, 1)
	go func() {
		_, err := l.Obtain(ctx, "k", WithRetry(LimitRetry(LinearBackoff(10*time.Millisecond), 3)))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrNotObtained) {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Obtain with LimitRetry(10ms, 3) still waiting after 2s")
	}
}

// A renewal in flight that Redis runs after a Refresh sets the shorter TTL;
// the client must not believe the Refresh's longer one.
func TestRefreshCrossingRenewal(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	l := NewLocker(c, WithPrefix(uniq(t)))
	defer l.Close()
	c.AddHook(delayHook{l: l})
	lk, err := l.TryObtain(ctx, "k", WithTTL(300*time.Millisecond))
	require.NoError(t, err)
	defer lk.Release(ctx)
	redistest.Eventually(t, time.Second, "renewal in flight", func() bool {
		l.wd.mu.Lock()
		defer l.wd.mu.Unlock()
		return lk.inflight
	})
	require.NoError(t, lk.Refresh(ctx, 10*time.Second))
	// Either the watchdog renews again with the new TTL at once (the key
	// stays), or Lost closes no later than the key expires.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if c.Exists(ctx, lk.rkey).Val() == 0 {
			select {
			case <-lk.Lost():
				return
			default:
				t.Fatal("lease expired in Redis but Lost is open")
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if d, _ := lk.TTL(ctx); d < 5*time.Second {
		t.Fatalf("after Refresh(10s) crossed a renewal, the lease has %v", d)
	}
}

// delayHook holds the watchdog's renewal (sent with the Locker's context)
// for 50ms before it reaches Redis.
type delayHook struct{ l *Locker }

func (delayHook) DialHook(n redis.DialHook) redis.DialHook { return n }
func (h delayHook) ProcessHook(n redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if ctx.Done() == h.l.ctx.Done() {
			time.Sleep(50 * time.Millisecond)
		}
		return n(ctx, cmd)
	}
}
func (delayHook) ProcessPipelineHook(n redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return n
}

// A deadline that passes during an attempt still reads as ErrNotObtained.
func TestDeadlineDuringAttempt(t *testing.T) {
	for _, cte := range []bool{false, true} {
		t.Run(fmt.Sprint("ContextTimeoutEnabled=", cte), func(t *testing.T) {
			base := realRedis(t)
			c := redis.NewClient(&redis.Options{Addr: base.Options().Addr, ContextTimeoutEnabled: cte})
			defer c.Close()
			ctx := context.Background()
			l := NewLocker(c, WithPrefix(uniq(t)))
			defer l.Close()
			h, _ := l.TryObtain(ctx, "k", WithTTL(time.Second), WithoutWatchdog())
			defer h.Release(ctx)
			go func() { time.Sleep(110 * time.Millisecond); base.Do(ctx, "DEBUG", "SLEEP", "0.3") }()
			octx, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
			defer cancel()
			_, err := l.Obtain(octx, "k", WithRetry(LinearBackoff(20*time.Millisecond)))
			t.Logf("Obtain: %v | NotObtained=%v Deadline=%v", err, errors.Is(err, ErrNotObtained), errors.Is(err, context.DeadlineExceeded))
			if !errors.Is(err, ErrNotObtained) || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("got %v, want ErrNotObtained and DeadlineExceeded", err)
			}
		})
	}
}

// Doubling must not overflow when max is huge.
func TestExponentialBackoffNoOverflow(t *testing.T) {
	s := ExponentialBackoff(time.Millisecond, time.Duration(1<<63-1))
	for n := 1; n <= 80; n++ {
		if d, _ := s.NextBackoff(n); d <= 0 {
			t.Fatalf("NextBackoff(%d) = %v: Obtain would retry in a hot loop", n, d)
		}
	}
}

// slowCloseConn delays Close while delay > 0, as a TLS close_notify on a slow
// link or a descheduled goroutine would; it only widens a real window.
type slowCloseConn struct {
	net.Conn
	delay *atomic.Int64
}

func (c *slowCloseConn) Close() error {
	if d := time.Duration(c.delay.Load()); d > 0 {
		time.Sleep(d)
	}
	return c.Conn.Close()
}

func slowCloseClient(t *testing.T, addr string, delay *atomic.Int64) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		cn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &slowCloseConn{Conn: cn, delay: delay}, nil
	}})
	t.Cleanup(func() { delay.Store(0); c.Close() })
	return c
}

// staleReleaseAfterOwnAttempt sets up holder r, whose lease (no watchdog)
// expires while a waiter of the same Locker waits on it; the waiter's next
// check then finds the lock free and takes it. obtain runs the waiter (its
// checks every 100ms); the returned function waits until the waiter holds
// the key and then releases r late.
func staleReleaseAfterOwnAttempt(t *testing.T, l *Locker, base *redis.Client, delay *atomic.Int64, obtain func()) (release func() error) {
	ctx := context.Background()
	r, err := l.TryObtain(ctx, "k", WithTTL(300*time.Millisecond), WithoutWatchdog())
	require.NoError(t, err)
	delay.Store(int64(400 * time.Millisecond))
	go obtain()
	return func() error {
		redistest.Eventually(t, 2*time.Second, "waiter took the expired lock", func() bool {
			v, err := base.Get(ctx, r.rkey).Result()
			return err == nil && v != r.Token()
		})
		time.Sleep(50 * time.Millisecond) // the waiter is past its attempt now
		return r.Release(ctx)
	}
}

// checkEvery is how often the stale-release tests' waiters check Redis.
const checkEvery = 100 * time.Millisecond

// A Release of an expired lease that a waiter of the same Locker then took
// by its own attempt must report ErrNotHeld and must not "hand" the lock to
// that waiter: Do's fn runs while no other Locker can get the lock.
func TestStaleReleaseNeverHandsOffALeaseItLost(t *testing.T) {
	base := realRedis(t)
	ctx := context.Background()
	prefix := uniq(t)
	var delay atomic.Int64
	l := NewLocker(slowCloseClient(t, base.Options().Addr, &delay), WithPrefix(prefix))
	defer l.Close()
	other := NewLocker(base, WithPrefix(prefix)) // another process
	defer other.Close()

	type seen struct {
		ctxErr   error
		otherGot *Lock
	}
	inFn := make(chan seen, 1)
	doErr := make(chan error, 1)
	released := make(chan struct{})
	release := staleReleaseAfterOwnAttempt(t, l, base, &delay, func() {
		doErr <- l.Do(ctx, "k", func(fctx context.Context) error {
			<-released // fn runs across the stale Release
			o, _ := other.TryObtain(ctx, "k", WithoutWatchdog(), WithTTL(5*time.Second))
			inFn <- seen{fctx.Err(), o}
			return nil
		}, WithRetry(LinearBackoff(checkEvery)))
	})
	if err := release(); !errors.Is(err, ErrNotHeld) {
		t.Errorf("Release of an expired lease that a waiter now holds: %v, want ErrNotHeld", err)
	}
	close(released)
	select {
	case s := <-inFn:
		if s.otherGot != nil {
			defer s.otherGot.Release(ctx)
			t.Errorf("another Locker obtained the lock (fence %d) while Do's fn ran (fn's context error: %v)", s.otherGot.Fence(), s.ctxErr)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Do's fn never ran")
	}
	if err := <-doErr; err != nil {
		t.Errorf("Do: %v", err)
	}
}

// The same interleaving with Obtain: the Lock it returns is held in Redis
// and its Lost channel is open.
func TestObtainNeverReturnsALeaseAStaleReleaseTook(t *testing.T) {
	base := realRedis(t)
	ctx := context.Background()
	var delay atomic.Int64
	l := NewLocker(slowCloseClient(t, base.Options().Addr, &delay), WithPrefix(uniq(t)))
	defer l.Close()
	got := make(chan *Lock, 1)
	release := staleReleaseAfterOwnAttempt(t, l, base, &delay, func() {
		lk, err := l.Obtain(ctx, "k", WithRetry(LinearBackoff(checkEvery)))
		if err != nil {
			t.Error(err)
		}
		got <- lk
	})
	if err := release(); !errors.Is(err, ErrNotHeld) {
		t.Errorf("Release of an expired lease that a waiter now holds: %v, want ErrNotHeld", err)
	}
	lk := <-got
	if lk == nil {
		t.Fatal("Obtain returned no lock")
	}
	defer lk.Release(ctx)
	held := base.Get(ctx, lk.rkey).Val() == lk.Token()
	select {
	case <-lk.Lost():
		t.Errorf("Obtain returned a lock whose Lost is closed (Err %v, held in Redis: %v)", lk.Err(), held)
	default:
		if !held {
			t.Error("Obtain returned a lock that Redis does not hold")
		}
	}
}
