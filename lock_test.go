package redlease

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
	"go.uber.org/goleak"
)

func TestTryObtainRelease(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		l := NewLocker(c, WithPrefix(uniq(t)))
		defer l.Close()
		lk, err := l.TryObtain(ctx, "k")
		require.NoError(t, err)
		if lk.Key() != "k" || len(lk.Token()) != 36 || lk.Fence() != 1 {
			t.Fatalf("key %q token %q fence %d", lk.Key(), lk.Token(), lk.Fence())
		}
		if got := c.Get(ctx, l.lockKey("k")).Val(); got != lk.Token() {
			t.Fatalf("lock key holds %q, want the token", got)
		}
		if _, err := l.TryObtain(ctx, "k"); !errors.Is(err, ErrNotObtained) {
			t.Fatalf("second TryObtain: %v, want ErrNotObtained", err)
		}
		require.NoError(t, lk.Release(ctx))
		select {
		case <-lk.Lost():
		default:
			t.Fatal("Lost not closed after Release")
		}
		if lk.Err() != nil {
			t.Fatalf("Err after clean release: %v", lk.Err())
		}
		if err := lk.Release(ctx); !errors.Is(err, ErrNotHeld) || !strings.Contains(err.Error(), "already released") {
			t.Fatalf("double release: %v", err)
		}
		lk2, err := l.TryObtain(ctx, "k")
		require.NoError(t, err)
		if lk2.Fence() != 2 {
			t.Fatalf("fence %d, want 2", lk2.Fence())
		}
		require.NoError(t, lk2.Release(ctx))
	})
}

// A reply lost on the wire makes go-redis send the acquire script again; the
// retry must find our own token and count as the same success.
func TestAcquireIsIdempotentPerToken(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		p := uniq(t)
		keys := []string{p + ":{k}", p + ":{k}:fence", p + ":{k}:waiters"}
		acquire := func(token, entry string) (bool, int64) {
			r, err := acquireScript.Run(ctx, c, keys, token, 1000, entry).Int64()
			require.NoError(t, err)
			return acquireReply(r)
		}
		ok1, first := acquire("tok", "")
		ok2, again := acquire("tok", "")
		if !ok1 || !ok2 || first != again {
			t.Fatalf("first %v %d, retry %v %d: want the same success", ok1, first, ok2, again)
		}
		if ok, pttl := acquire("other", ""); ok || pttl <= 0 || pttl > 1000 {
			t.Fatalf("other token got %v %d, want the holder's pttl", ok, pttl)
		}
		// A waiter's attempt, resent: it queues once, keeping its ticket.
		entry := "1000 ch w"
		for range 2 {
			if ok, v := acquire("w", entry); ok || v != pttlQueued {
				t.Fatalf("waiter's attempt: %v %d, want queued (%d)", ok, v, pttlQueued)
			}
		}
		if q := c.ZRangeWithScores(ctx, keys[2], 0, -1).Val(); len(q) != 1 || q[0].Member != entry || q[0].Score != 2 {
			t.Fatalf("queue after a resent attempt: %v, want the entry once with ticket 2", q)
		}
	})
}

func TestReleaseAfterExpiryAndTakeover(t *testing.T) {
	mr, c := newMini(t)
	ctx := context.Background()
	l := NewLocker(c)
	defer l.Close()
	lk, err := l.TryObtain(ctx, "k", WithTTL(time.Second), WithoutWatchdog())
	require.NoError(t, err)
	mr.FastForward(2 * time.Second)
	if err := lk.Release(ctx); !errors.Is(err, ErrNotHeld) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("release after expiry: %v", err)
	}

	lk, _ = l.TryObtain(ctx, "k", WithTTL(time.Second), WithoutWatchdog())
	mr.FastForward(2 * time.Second)
	other, err := l.TryObtain(ctx, "k")
	require.NoError(t, err)
	if other.Fence() <= lk.Fence() {
		t.Fatalf("fence went from %d to %d", lk.Fence(), other.Fence())
	}
	if err := lk.Refresh(ctx, time.Second); !errors.Is(err, ErrNotHeld) || !strings.Contains(err.Error(), "held by another") {
		t.Fatalf("refresh of a taken lock: %v", err)
	}
	if err := lk.Release(ctx); !errors.Is(err, ErrNotHeld) || !strings.Contains(err.Error(), "held by another") {
		t.Fatalf("release of a taken lock: %v", err)
	}
	if got := c.Get(ctx, l.lockKey("k")).Val(); got != other.Token() {
		t.Fatal("a stale release touched the new holder's key")
	}
	if d, err := lk.TTL(ctx); err != nil || d != 0 {
		t.Fatalf("TTL of a lost lock: %v %v, want 0 nil", d, err)
	}
	if d, err := other.TTL(ctx); err != nil || d <= 0 || d > DefaultTTL {
		t.Fatalf("TTL of a held lock: %v %v", d, err)
	}
	other.Release(ctx)
}

func TestRefresh(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		l := NewLocker(c, WithPrefix(uniq(t)))
		defer l.Close()
		lk, err := l.TryObtain(ctx, "k", WithTTL(time.Second), WithoutWatchdog())
		require.NoError(t, err)
		defer lk.Release(ctx)
		for _, bad := range []time.Duration{0, -time.Second, time.Microsecond} {
			if err := lk.Refresh(ctx, bad); !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("Refresh(%v): %v", bad, err)
			}
		}
		if d, _ := lk.TTL(ctx); d <= 0 || d > time.Second {
			t.Fatalf("bad refresh changed the lease: ttl %v", d)
		}
		require.NoError(t, lk.Refresh(ctx, time.Minute))
		if d, _ := lk.TTL(ctx); d <= 50*time.Second {
			t.Fatalf("ttl %v after Refresh(1m)", d)
		}
	})
}

func TestBadInput(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	var nilClient *redis.Client
	cases := map[string]func() error{
		"nil client": func() error { _, err := NewLocker(nil).TryObtain(ctx, "k"); return err },
		"typed nil client": func() error {
			_, err := NewLocker(nilClient).Obtain(ctx, "k")
			return err
		},
		"empty prefix":      func() error { _, err := NewLocker(c, WithPrefix("")).TryObtain(ctx, "k"); return err },
		"prefix with brace": func() error { _, err := NewLocker(c, WithPrefix("a{b")).TryObtain(ctx, "k"); return err },
		"empty key":         func() error { _, err := NewLocker(c).TryObtain(ctx, ""); return err },
		"empty key obtain":  func() error { _, err := NewLocker(c).Obtain(ctx, ""); return err },
		"zero ttl":          func() error { _, err := NewLocker(c).TryObtain(ctx, "k", WithTTL(0)); return err },
		"negative ttl":      func() error { _, err := NewLocker(c).Obtain(ctx, "k", WithTTL(-time.Second)); return err },
		"sub-ms ttl":        func() error { _, err := NewLocker(c).Obtain(ctx, "k", WithTTL(time.Microsecond)); return err },
		"zero grant ttl":    func() error { _, err := NewLocker(c).Obtain(ctx, "k", WithGrantTTL(0)); return err },
		"nil retry":         func() error { _, err := NewLocker(c).Obtain(ctx, "k", WithRetry(nil)); return err },
		"zero linear":       func() error { _, err := NewLocker(c).Obtain(ctx, "k", WithRetry(LinearBackoff(0))); return err },
		"negative linear":   func() error { _, err := NewLocker(c).Obtain(ctx, "k", WithRetry(LinearBackoff(-1))); return err },
		"exp min > max": func() error {
			_, err := NewLocker(c).Obtain(ctx, "k", WithRetry(ExponentialBackoff(time.Second, time.Millisecond)))
			return err
		},
		"exp zero min": func() error {
			_, err := NewLocker(c).Obtain(ctx, "k", WithRetry(ExponentialBackoff(0, time.Second)))
			return err
		},
		"limit negative": func() error {
			_, err := NewLocker(c).Obtain(ctx, "k", WithRetry(LimitRetry(NoRetry(), -1)))
			return err
		},
		"limit nil": func() error { _, err := NewLocker(c).Obtain(ctx, "k", WithRetry(LimitRetry(nil, 1))); return err },
		"limit bad inner": func() error {
			_, err := NewLocker(c).Obtain(ctx, "k", WithRetry(LimitRetry(LinearBackoff(0), 1)))
			return err
		},
		"do nil fn":    func() error { return NewLocker(c).Do(ctx, "k", nil) },
		"do empty key": func() error { return NewLocker(c).Do(ctx, "", func(context.Context) error { return nil }) },
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			err := f()
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("got %v, want ErrInvalidArgument", err)
			}
			if errors.Is(err, ErrNotObtained) {
				t.Fatalf("bad input reported as ErrNotObtained: %v", err)
			}
		})
	}
	if n := len(c.Keys(ctx, "*").Val()); n != 0 {
		t.Fatalf("bad input wrote %d keys", n)
	}
}

func TestNilOptionsAreIgnored(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	lk, err := NewLocker(c, nil).TryObtain(ctx, "k", nil)
	require.NoError(t, err)
	lk.Release(ctx)
}

// With no lease held and nobody waiting, a Locker that is never closed
// leaves no goroutine behind.
func TestIdleLockerLeavesNoGoroutine(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ignore := goleak.IgnoreCurrent()
		ctx := context.Background()
		cl := redis.NewClient(&redis.Options{Addr: c.Options().Addr})
		l := NewLocker(cl, WithPrefix(uniq(t)))
		holder, err := l.TryObtain(ctx, "k", WithTTL(time.Second))
		require.NoError(t, err)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if lk, err := l.Obtain(ctx, "k"); err == nil {
				lk.Release(ctx)
			}
		}()
		redistest.Eventually(t, 2*time.Second, "waiter queued", func() bool { return queuedIn(l, holder.name) })
		holder.Release(ctx)
		<-done
		cl.Close()
		// The subscription outlives its last waiter by subscriptionLinger.
		redistest.Eventually(t, subscriptionLinger+2*time.Second, "no goroutine left", func() bool {
			return goleak.Find(ignore) == nil
		})
		goleak.VerifyNone(t, ignore)
	})
}

func TestClosedLocker(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	l := NewLocker(c)
	lk, err := l.TryObtain(ctx, "k")
	require.NoError(t, err)
	l.Close()
	l.Close()
	select {
	case <-lk.Lost():
	default:
		t.Fatal("Lost not closed by Close")
	}
	if !errors.Is(lk.Err(), ErrClosed) {
		t.Fatalf("Err %v", lk.Err())
	}
	if err := lk.Release(ctx); err != nil {
		t.Fatalf("Release after Close: %v", err)
	}
	if _, err := l.TryObtain(ctx, "k"); !errors.Is(err, ErrClosed) {
		t.Fatalf("TryObtain after Close: %v", err)
	}
}

func TestObtainWaitsForRelease(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		l := NewLocker(c, WithPrefix(uniq(t)))
		defer l.Close()
		holder, err := l.TryObtain(ctx, "k")
		require.NoError(t, err)
		got := make(chan *Lock)
		go func() {
			// A slow fallback proves the wake-up, not the retry, ends the wait.
			lk, err := l.Obtain(ctx, "k", WithRetry(LinearBackoff(time.Minute)))
			if err != nil {
				t.Error(err)
			}
			got <- lk
		}()
		redistest.Eventually(t, 2*time.Second, "waiter queued", func() bool { return queuedIn(l, holder.name) })
		start := time.Now()
		require.NoError(t, holder.Release(ctx))
		select {
		case lk := <-got:
			if lk.Fence() != holder.Fence()+1 {
				t.Fatalf("fence %d after %d", lk.Fence(), holder.Fence())
			}
			t.Logf("hand-off in %v", time.Since(start))
			lk.Release(ctx)
		case <-time.After(5 * time.Second):
			t.Fatal("waiter not woken by release")
		}
	})
}

func TestObtainGivesUp(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	l := NewLocker(c)
	defer l.Close()
	holder, _ := l.TryObtain(ctx, "k")
	defer holder.Release(ctx)

	if _, err := l.Obtain(ctx, "k", WithRetry(NoRetry())); !errors.Is(err, ErrNotObtained) {
		t.Fatalf("NoRetry: %v", err)
	}
	start := time.Now()
	if _, err := l.Obtain(ctx, "k", WithRetry(LimitRetry(LinearBackoff(10*time.Millisecond), 3))); !errors.Is(err, ErrNotObtained) {
		t.Fatalf("LimitRetry: %v", err)
	}
	// The first retry comes at once, after subscribing to wake-ups.
	if d := time.Since(start); d < 20*time.Millisecond || d > 2*time.Second {
		t.Fatalf("3 retries, two waits of 10ms, took %v", d)
	}
	dctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err := l.Obtain(dctx, "k")
	if !errors.Is(err, ErrNotObtained) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("deadline: %v, want ErrNotObtained and DeadlineExceeded", err)
	}
}

func TestCloseWakesWaiters(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	l := NewLocker(c)
	holder, _ := l.TryObtain(ctx, "k")
	done := make(chan error)
	go func() { _, err := l.Obtain(ctx, "k"); done <- err }()
	redistest.Eventually(t, 2*time.Second, "waiter queued", func() bool { return queuedIn(l, holder.name) })
	l.Close()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) || !errors.Is(err, ErrNotObtained) {
			t.Fatalf("waiter got %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not end the waiting Obtain")
	}
}

// Several Lockers on separate clients guard a read-modify-write that would
// lose updates without mutual exclusion; fences seen under the lock only grow.
func TestMutualExclusion(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		prefix := uniq(t)
		const lockers, perLocker, rounds = 4, 3, 15
		var (
			mu        sync.Mutex
			inside    atomic.Int32
			lastFence int64
			wg        sync.WaitGroup
		)
		counter := prefix + ":counter"
		for range lockers {
			cl := redis.NewClient(&redis.Options{Addr: c.Options().Addr})
			defer cl.Close()
			l := NewLocker(cl, WithPrefix(prefix))
			defer l.Close()
			for range perLocker {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range rounds {
						octx, cancel := context.WithTimeout(ctx, 20*time.Second)
						lk, err := l.Obtain(octx, "shared", WithTTL(5*time.Second))
						cancel()
						if err != nil {
							t.Error(err)
							return
						}
						if inside.Add(1) != 1 {
							t.Error("two holders at once")
						}
						mu.Lock()
						if lk.Fence() <= lastFence {
							t.Errorf("fence %d after %d", lk.Fence(), lastFence)
						}
						lastFence = lk.Fence()
						mu.Unlock()
						n, _ := cl.Get(ctx, counter).Int()
						time.Sleep(100 * time.Microsecond)
						cl.Set(ctx, counter, n+1, 0)
						inside.Add(-1)
						if err := lk.Release(ctx); err != nil {
							t.Error(err)
						}
					}
				}()
			}
		}
		wg.Wait()
		if n, _ := c.Get(ctx, counter).Int(); n != lockers*perLocker*rounds {
			t.Fatalf("counter %d, want %d: updates were lost", n, lockers*perLocker*rounds)
		}
	})
}

func TestWatchdogKeepsLeaseAlive(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	l := NewLocker(c, WithPrefix(uniq(t)))
	defer l.Close()
	lk, err := l.TryObtain(ctx, "k", WithTTL(300*time.Millisecond))
	require.NoError(t, err)
	end := time.Now().Add(2 * time.Second)
	for time.Now().Before(end) {
		select {
		case <-lk.Lost():
			t.Fatalf("lease lost while the watchdog ran: %v", lk.Err())
		case <-time.After(50 * time.Millisecond):
		}
		if d, err := lk.TTL(ctx); err != nil || d <= 0 {
			t.Fatalf("ttl %v, %v", d, err)
		}
	}
	if _, err := NewLocker(c, WithPrefix(uniq(t))).TryObtain(ctx, "k"); !errors.Is(err, ErrNotObtained) {
		t.Fatalf("another took a watched lock: %v", err)
	}
	require.NoError(t, lk.Release(ctx))
}

func TestLostOnExternalDelete(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	l := NewLocker(c, WithPrefix(uniq(t)))
	defer l.Close()
	lk, err := l.TryObtain(ctx, "k", WithTTL(300*time.Millisecond))
	require.NoError(t, err)
	c.Del(ctx, lk.rkey)
	select {
	case <-lk.Lost():
	case <-time.After(time.Second):
		t.Fatal("Lost not closed within a second of the key's deletion")
	}
	if !errors.Is(lk.Err(), ErrNotHeld) {
		t.Fatalf("Err %v", lk.Err())
	}
	if err := lk.Release(ctx); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("release: %v", err)
	}
}

func TestLostWithoutWatchdogAtExpiry(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	l := NewLocker(c, WithPrefix(uniq(t)))
	defer l.Close()
	start := time.Now()
	lk, err := l.TryObtain(ctx, "k", WithTTL(200*time.Millisecond), WithoutWatchdog())
	require.NoError(t, err)
	// The client's deadline is set before Redis's expiry; when Lost then
	// closes depends on the scheduler, so it is only bounded loosely.
	l.wd.mu.Lock()
	deadline := lk.deadline
	l.wd.mu.Unlock()
	if d := deadline.Sub(start); d > 200*time.Millisecond {
		t.Fatalf("deadline %v after obtaining a 200ms lease", d)
	}
	select {
	case <-lk.Lost():
	case <-time.After(time.Second):
		t.Fatal("Lost not closed at lease end")
	}
	redistest.Eventually(t, time.Second, "key expired", func() bool { return c.Exists(ctx, lk.rkey).Val() == 0 })
	if err := lk.Release(ctx); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("release after expiry: %v", err)
	}
}

func TestSurvivesScriptFlush(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		l := NewLocker(c, WithPrefix(uniq(t)))
		defer l.Close()
		for i := range 3 {
			require.NoError(t, c.ScriptFlush(ctx).Err())
			lk, err := l.TryObtain(ctx, "k")
			if err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
			c.ScriptFlush(ctx)
			require.NoError(t, lk.Refresh(ctx, time.Minute))
			c.ScriptFlush(ctx)
			if _, err := lk.TTL(ctx); err != nil {
				t.Fatal(err)
			}
			c.ScriptFlush(ctx)
			require.NoError(t, lk.Release(ctx))
		}
	})
}

func TestDo(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		l := NewLocker(c, WithPrefix(uniq(t)))
		defer l.Close()
		var ran bool
		err := l.Do(ctx, "k", func(ctx context.Context) error {
			ran = true
			if _, err := l.TryObtain(ctx, "k"); !errors.Is(err, ErrNotObtained) {
				t.Errorf("lock not held inside Do: %v", err)
			}
			return nil
		})
		if err != nil || !ran {
			t.Fatalf("Do: %v, ran %v", err, ran)
		}
		boom := errors.New("boom")
		if err := l.Do(ctx, "k", func(context.Context) error { return boom }); !errors.Is(err, boom) {
			t.Fatalf("Do returned %v, want fn's error", err)
		}
		func() {
			defer func() { recover() }()
			l.Do(ctx, "k", func(context.Context) error { panic("fn panicked") })
		}()
		lk, err := l.TryObtain(ctx, "k")
		if err != nil {
			t.Fatalf("Do did not release: %v", err)
		}
		lk.Release(ctx)
	})
}

func TestDoCancelsOnLoss(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	l := NewLocker(c, WithPrefix(uniq(t)))
	defer l.Close()
	err := l.Do(ctx, "k", func(fctx context.Context) error {
		c.Del(ctx, l.lockKey("k")) // someone deletes the lease
		select {
		case <-fctx.Done():
			if !errors.Is(context.Cause(fctx), ErrNotHeld) {
				t.Errorf("cause %v", context.Cause(fctx))
			}
			return fctx.Err()
		case <-time.After(2 * time.Second):
			return errors.New("fn's context not cancelled on loss")
		}
	}, WithTTL(300*time.Millisecond))
	if !errors.Is(err, ErrNotHeld) {
		t.Fatalf("Do: %v, want ErrNotHeld", err)
	}
}

func TestRenewalsAreBatched(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	l := NewLocker(c, WithPrefix(uniq(t)))
	defer l.Close()
	var locks []*Lock
	for i := range 250 {
		lk, err := l.TryObtain(ctx, "k"+strconv.Itoa(i), WithTTL(300*time.Millisecond))
		require.NoError(t, err)
		locks = append(locks, lk)
	}
	before := commandStats(t, c)
	time.Sleep(time.Second) // about ten renewal rounds
	delta, total := commandsSince(t, c, before)
	for _, lk := range locks {
		select {
		case <-lk.Lost():
			t.Fatalf("lease %s lost: %v", lk.Key(), lk.Err())
		default:
		}
	}
	t.Logf("renewing 250 leases of 300ms for 1s: %v", delta)
	// Every lease must be renewed at least once per TTL to survive; how
	// many leases fall due together depends on the scheduler, so batching
	// is only held to a floor far above one lease per call.
	if delta["pexpire"] < 250*3 {
		t.Fatalf("%d renewals: leases were not renewed once per TTL", delta["pexpire"])
	}
	if calls := delta["evalsha"]; calls*10 > delta["pexpire"] {
		t.Fatalf("%d script calls for %d renewals: not batched", calls, delta["pexpire"])
	}
	if perRenewal := float64(total) / float64(delta["pexpire"]); perRenewal > 2.1 {
		t.Fatalf("%.2f commands per renewal", perRenewal)
	}
	for _, lk := range locks {
		lk.Release(ctx)
	}
}

func TestSlot(t *testing.T) {
	// Values from CLUSTER KEYSLOT.
	for key, want := range map[string]uint16{"foo": 12182, "bar": 5061, "{foo}:x": 12182, "redlease:{foo}:fence": 12182} {
		if got := slot(key); got != want {
			t.Errorf("slot(%q) = %d, want %d", key, got, want)
		}
	}
}

// Every slot has a short brace-free tag that hashes to it, and a brace-free
// name's lock lives in the slot its old key prefix:{name} had.
func TestSlotTagsCoverEverySlot(t *testing.T) {
	for s := range uint16(clusterSlots) {
		tag := slotTag(s)
		if tag == "" || strings.ContainsAny(tag, "{}") || len(tag) > 4 || slot(tag) != s {
			t.Fatalf("slot %d: tag %q (slot %d)", s, tag, slot(tag))
		}
	}
	l := NewLocker(nil) // only its key layout is used
	l.Close()
	for _, name := range []string{"foo", "orders", "user:1", "order:123456789"} {
		if a, b := slot(l.lockKey(name)), slot("redlease:{"+name+"}"); a != b {
			t.Errorf("lock %q in slot %d, was in %d", name, a, b)
		}
	}
	// Names are hashed whole: a {tag} inside a name does not pick its slot.
	if a, b := slot(l.lockKey("{foo}:a")), nameSlot("{foo}:a"); a != b {
		t.Errorf("lock {foo}:a in slot %d, want %d", a, b)
	}
}

// Under 8-way contention a release hands the lock to one waiter and wakes
// no other, so an acquisition costs one queued attempt (INCR, SET, ZADD)
// and one granting release (GET, ZPOPMIN, SET, PUBLISH), each in a script:
// 9 commands, a little more when a check or a counted fence comes in.
func TestContentionCost(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	l := NewLocker(c, WithPrefix(uniq(t)))
	defer l.Close()
	const workers, each = 8, 100
	before := commandStats(t, c)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				octx, cancel := context.WithTimeout(ctx, 20*time.Second)
				lk, err := l.Obtain(octx, "k")
				cancel()
				if err != nil {
					t.Error(err)
					return
				}
				lk.Release(ctx)
			}
		})
	}
	wg.Wait()
	delta, total := commandsSince(t, c, before)
	per := float64(total) / (workers * each)
	t.Logf("8-way contention: %.2f server commands per acquisition %v", per, delta)
	if per > 9.5 {
		t.Fatalf("%.2f commands per acquisition: waiters retry in a herd", per)
	}
}

func TestHandoffLatency(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	var lockers [2]*Locker
	for i := range lockers {
		cl := redis.NewClient(&redis.Options{Addr: c.Options().Addr})
		defer cl.Close()
		lockers[i] = NewLocker(cl, WithPrefix(uniq(t)))
		defer lockers[i].Close()
	}
	lat := handoffs(t, ctx, lockers, 200)
	p50 := time.Duration(quantile(lat, 0.5))
	t.Logf("hand-off p50 %v p99 %v", p50, time.Duration(quantile(lat, 0.99)))
	// Far below the 16ms fallback retry: the wake-up, not a timer, did it.
	if p50 > 10*time.Millisecond {
		t.Fatalf("hand-off p50 %v", p50)
	}
}

// closeOnAcquire closes the Locker just before its first script call
// reaches Redis, so Close overtakes a TryObtain in flight.
type closeOnAcquire struct {
	l    *Locker
	once sync.Once
}

func (*closeOnAcquire) DialHook(n redis.DialHook) redis.DialHook { return n }
func (h *closeOnAcquire) ProcessHook(n redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.once.Do(func() { _ = h.l.Close() })
		return n(ctx, cmd)
	}
}
func (*closeOnAcquire) ProcessPipelineHook(n redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return n
}

// A TryObtain that Close overtakes gives its lease back and says so.
func TestTryObtainOvertakenByCloseGivesTheLeaseBack(t *testing.T) {
	_, c := newMini(t)
	l := NewLocker(c)
	c.AddHook(&closeOnAcquire{l: l})
	lk, err := l.TryObtain(context.Background(), "k")
	if lk != nil || !errors.Is(err, ErrClosed) || !errors.Is(err, ErrNotObtained) {
		t.Fatalf("TryObtain after Close = %v, %v; want no lock and ErrNotObtained with ErrClosed", lk, err)
	}
	if n, err := c.Exists(context.Background(), l.lockKey("k")).Result(); err != nil || n != 0 {
		t.Fatalf("lease left in Redis: exists = %d, %v", n, err)
	}
}
