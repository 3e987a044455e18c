package redlease

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
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
	eventually(t, time.Second, "head queued", func() bool { return l.hub.waiting(h.rkey) })
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
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Release(ctx)
	eventually(t, time.Second, "renewal in flight", func() bool {
		l.wd.mu.Lock()
		defer l.wd.mu.Unlock()
		return lk.inflight
	})
	if err := lk.Refresh(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
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
