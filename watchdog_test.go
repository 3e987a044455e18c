package redlease

// Regression tests for the watchdog's deadline rule and Close: the
// client's deadline is never later than the earliest end any write in
// flight could set, and Close does not wait for a call stuck on a dead link.

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// crossHook lets a renewal script run in Redis at once and holds its reply
// back: the watchdog's renewals by watchdogDelay, Refresh's by refreshDelay.
type crossHook struct {
	l             *Locker
	watchdogDelay atomic.Int64
	refreshDelay  atomic.Int64
	watchdogRan   chan struct{} // told each time a watchdog renewal ran in Redis
}

func isRenewCmd(cmd redis.Cmder) bool {
	a := cmd.Args()
	return len(a) > 1 && strings.EqualFold(cmd.Name(), "evalsha") && a[1] == renewScript.Hash()
}

func (*crossHook) DialHook(n redis.DialHook) redis.DialHook { return n }
func (h *crossHook) ProcessHook(n redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !isRenewCmd(cmd) {
			return n(ctx, cmd)
		}
		err := n(ctx, cmd)
		if ctx.Done() == h.l.ctx.Done() { // the watchdog
			select {
			case h.watchdogRan <- struct{}{}:
			default:
			}
			time.Sleep(time.Duration(h.watchdogDelay.Load()))
		} else {
			time.Sleep(time.Duration(h.refreshDelay.Load()))
		}
		return err
	}
}
func (*crossHook) ProcessPipelineHook(n redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return n
}

// checkDeadlineRule fails the test if the client believes the lease lasts
// longer than Redis keeps it.
func checkDeadlineRule(t *testing.T, base *redis.Client, l *Locker, lk *Lock) {
	t.Helper()
	pttl := base.PTTL(context.Background(), lk.rkey).Val()
	l.wd.mu.Lock()
	clientLeft := time.Until(lk.deadline)
	l.wd.mu.Unlock()
	t.Logf("Redis PTTL %v; client's deadline in %v", pttl, clientLeft)
	if clientLeft > pttl+time.Millisecond {
		t.Errorf("the client's deadline is %v later than Redis's expiry", clientLeft-pttl)
	}
}

// A Refresh and a watchdog renewal in flight together: whichever Redis
// applies last, and whichever reply comes back last, the client's deadline
// is never later than the lease's end in Redis.
func TestRefreshCrossingRenewalKeepsDeadlineSafe(t *testing.T) {
	for _, tc := range []struct {
		name     string
		refresh  time.Duration
		holdBack string // whose reply comes back last
	}{
		{"longer refresh, its reply last", 5 * time.Second, "refresh"},
		{"shorter refresh, renewal's reply last", 500 * time.Millisecond, "watchdog"},
		{"longer refresh, renewal's reply last", 5 * time.Second, "watchdog"},
		{"shorter refresh, its reply last", 500 * time.Millisecond, "refresh"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := realRedis(t)
			c := redis.NewClient(&redis.Options{Addr: base.Options().Addr})
			defer c.Close()
			ctx := context.Background()
			l := NewLocker(c, WithPrefix(uniq(t)))
			defer l.Close()
			if err := renewScript.Load(ctx, c).Err(); err != nil { // no NOSCRIPT round trips below
				t.Fatal(err)
			}
			h := &crossHook{l: l, watchdogRan: make(chan struct{}, 1)}
			c.AddHook(h)
			lk, err := l.TryObtain(ctx, "k", WithTTL(600*time.Millisecond))
			require.NoError(t, err)
			defer lk.Release(ctx)
			if tc.holdBack == "watchdog" {
				// The renewal (due 200ms after acquire) runs, its reply is
				// held; the Refresh runs after it and answers first.
				h.watchdogDelay.Store(int64(200 * time.Millisecond))
				select {
				case <-h.watchdogRan:
				case <-time.After(2 * time.Second):
					t.Fatal("no renewal")
				}
			} else {
				// The Refresh runs, its reply is held; a renewal due
				// meanwhile runs after it and answers first.
				h.refreshDelay.Store(int64(300 * time.Millisecond))
			}
			require.NoError(t, lk.Refresh(ctx, tc.refresh))
			h.watchdogDelay.Store(0)
			redistest.Eventually(t, 2*time.Second, "no write in flight", func() bool {
				l.wd.mu.Lock()
				defer l.wd.mu.Unlock()
				return lk.pending == 0
			})
			checkDeadlineRule(t, base, l, lk)
			// And it stays so as the watchdog goes on renewing.
			time.Sleep(300 * time.Millisecond)
			checkDeadlineRule(t, base, l, lk)
		})
	}
}

// Refresh after Lost does not bring the lease back: it returns why it was
// lost, even if the key is still in Redis.
func TestRefreshAfterLostReturnsTheLoss(t *testing.T) {
	_, c := newMini(t) // miniredis: keys expire only when the test says so
	ctx := context.Background()
	l := NewLocker(c, WithPrefix(uniq(t)))
	defer l.Close()
	lk, err := l.TryObtain(ctx, "k", WithTTL(50*time.Millisecond), WithoutWatchdog())
	require.NoError(t, err)
	<-lk.Lost() // by the client's clock; the key is still there
	if err := lk.Refresh(ctx, time.Second); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("Refresh after Lost: %v, want ErrNotHeld", err)
	}
}

func TestCloseReturnsWithRenewalInFlight(t *testing.T) {
	base := realRedis(t)
	p := redistest.NewFaultProxy(t, base.Options().Addr)
	c := redis.NewClient(&redis.Options{Addr: p.Addr()})
	defer c.Close()
	ctx := context.Background()
	l := NewLocker(c, WithPrefix(uniq(t)))
	lk, err := l.TryObtain(ctx, "k", WithTTL(600*time.Millisecond))
	require.NoError(t, err)
	p.Pause()
	redistest.Eventually(t, 2*time.Second, "renewal in flight", func() bool {
		l.wd.mu.Lock()
		defer l.wd.mu.Unlock()
		return lk.inflight
	})
	time.Sleep(20 * time.Millisecond)
	start := time.Now()
	l.Close()
	took := time.Since(start)
	p.Resume()
	t.Logf("Close took %v with a renewal in flight on a paused link", took)
	l.wd.calls.Wait() // the abandoned call ends once the link is back
	if took > 500*time.Millisecond {
		t.Errorf("Close blocked %v (README: Close stops background work at once)", took)
	}
}

// lateHook fails the first Refresh it sees, armed, without a reply, and has
// Redis apply it lateApply later through base: a write delivered late on a
// dead connection.
type lateHook struct {
	base      *redis.Client
	armed     atomic.Bool
	lateApply time.Duration
	wg        sync.WaitGroup
}

func (*lateHook) DialHook(n redis.DialHook) redis.DialHook { return n }
func (h *lateHook) ProcessHook(n redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !isRenewCmd(cmd) || !h.armed.CompareAndSwap(true, false) {
			return n(ctx, cmd)
		}
		args := cmd.Args()
		h.wg.Go(func() {
			time.Sleep(h.lateApply)
			h.base.Do(context.Background(), args...)
		})
		err := errors.New("injected: no reply")
		cmd.SetErr(err)
		return err
	}
}
func (*lateHook) ProcessPipelineHook(n redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return n
}

// A Refresh that failed without a reply may still reach Redis after a
// later, longer Refresh succeeded: the client then counts on the shorter
// ttl, so its deadline stays within the key's real expiry.
func TestFailedShortRefreshAppliedLateKeepsDeadlineSafe(t *testing.T) {
	base := realRedis(t)
	c := redis.NewClient(&redis.Options{Addr: base.Options().Addr})
	defer c.Close()
	ctx := context.Background()
	if err := renewScript.Load(ctx, c).Err(); err != nil { // the late copy runs EVALSHA
		t.Fatal(err)
	}
	h := &lateHook{base: base, lateApply: 200 * time.Millisecond}
	c.AddHook(h)
	l := NewLocker(c, WithPrefix(uniq(t)))
	defer l.Close()
	lk, err := l.TryObtain(ctx, "k", WithTTL(10*time.Second), WithoutWatchdog())
	require.NoError(t, err)
	defer lk.Release(ctx)
	h.armed.Store(true)
	if err := lk.Refresh(ctx, time.Second); err == nil {
		t.Fatal("the injected failure did not happen")
	}
	require.NoError(t, lk.Refresh(ctx, 10*time.Second))
	h.wg.Wait() // the failed 1s Refresh has now reached Redis
	checkDeadlineRule(t, base, l, lk)
}
