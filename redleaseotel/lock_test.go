package redleaseotel

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redlease/redlease"
)

// TestLockMetrics: an uncontended acquisition records its latency and a
// zero wait; a waiter that gets the lock from its holder's release counts a
// hand-off and records its wait; the watchdog's renewals, a renewal that
// fails on a Redis error, and a lease lost are counted.
func TestLockMetrics(t *testing.T) {
	mr := newRedis(t)
	s := newSide(t, mr.Addr())
	ctx := context.Background()
	l := redlease.NewLocker(s.client, redlease.WithHook(s.hook))
	defer l.Close()

	lk, err := l.TryObtain(ctx, "free")
	if err != nil {
		t.Fatal(err)
	}
	if err := lk.Release(ctx); err != nil {
		t.Fatal(err)
	}
	rm := s.collect(t)
	shared := LockSharedKey.Bool(false)
	if n, total, _ := histogram(rm, "redlease.lock.acquire.duration", shared); n != 1 || total <= 0 {
		t.Errorf("acquire latency: %d points summing to %v, want 1 above 0", n, total)
	}
	if n, total, _ := histogram(rm, "redlease.lock.wait.duration", shared); n != 1 || total != 0 {
		t.Errorf("wait: %d points summing to %v, want 1 of 0", n, total)
	}
	if n, _ := sum(rm, "redlease.lock.handoffs"); n != 0 {
		t.Errorf("hand-offs %d, want 0", n)
	}

	// A hand-off: the waiter is queued before the holder releases.
	holder, err := l.Obtain(ctx, "busy")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *redlease.Lock, 1)
	go func() {
		lk, err := l.Obtain(ctx, "busy")
		if err != nil {
			t.Error(err)
		}
		got <- lk
	}()
	const held = 200 * time.Millisecond
	time.Sleep(held)
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
	var waiter *redlease.Lock
	select {
	case waiter = <-got:
	case <-time.After(waitFor):
		t.Fatal("the waiter did not get the lock")
	}
	if waiter != nil {
		waiter.Release(ctx)
	}
	rm = s.collect(t)
	if n, _ := sum(rm, "redlease.lock.handoffs", shared); n != 1 {
		t.Errorf("hand-offs %d, want 1", n)
	}
	if n, _, mx := histogram(rm, "redlease.lock.wait.duration", shared); n != 3 || mx < (held/2).Seconds() {
		t.Errorf("wait: %d points, max %vs; want 3, the waiter's near %v", n, mx, held)
	}
}

// TestLockRenewals: the watchdog's renewals are counted; a renewal failing
// on a Redis error is counted as such; a lease whose key is gone is lost.
func TestLockRenewals(t *testing.T) {
	mr := newRedis(t)
	s := newSide(t, mr.Addr())
	ctx := context.Background()
	l := redlease.NewLocker(s.client, redlease.WithHook(s.hook))
	defer l.Close()
	// Renewals every 200ms: a failed one is reported before the lease ends.
	lk, err := l.ObtainShared(ctx, "k", redlease.WithTTL(600*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	shared := LockSharedKey.Bool(true)
	eventually(t, "two renewals", func() bool {
		n, _ := sum(s.collect(t), "redlease.lock.renewals", shared)
		return n >= 2
	})
	mr.SetError("LOADING induced by the test")
	eventually(t, "a failed renewal", func() bool {
		n, _ := sum(s.collect(t), "redlease.lock.renewal.failures", shared)
		return n >= 1
	})
	mr.SetError("")
	for _, k := range mr.Keys() {
		if strings.Contains(k, "k") {
			mr.Del(k)
		}
	}
	select {
	case <-lk.Lost():
	case <-time.After(waitFor):
		t.Fatal("the lease was not lost")
	}
	eventually(t, "the lost lease counted", func() bool {
		n, _ := sum(s.collect(t), "redlease.lock.lost", shared)
		return n == 1
	})
}

// TestLockKeyAttribute: lock measurements carry no key by default, and
// WithLockKeyAttribute's mapping of it when asked.
func TestLockKeyAttribute(t *testing.T) {
	mr := newRedis(t)
	ctx := context.Background()
	for _, c := range []struct {
		opts []Option
		want string // "": no key attribute
	}{
		{nil, ""},
		{[]Option{WithLockKeyAttribute(nil)}, "user:42"},
		{[]Option{WithLockKeyAttribute(func(k string) string { p, _, _ := strings.Cut(k, ":"); return p })}, "user"},
	} {
		s := newSide(t, mr.Addr(), c.opts...)
		l := redlease.NewLocker(s.client, redlease.WithHook(s.hook))
		lk, err := l.TryObtain(ctx, "user:42")
		if err != nil {
			t.Fatal(err)
		}
		lk.Release(ctx)
		l.Close()
		m, ok := find(s.collect(t), "redlease.lock.acquire.duration")
		if !ok {
			t.Fatal("no acquire latency recorded")
		}
		for _, p := range histogramPoints(m) {
			v, ok := p.Value(LockKeyKey)
			if c.want == "" && ok || c.want != "" && v.AsString() != c.want {
				t.Errorf("lock key attribute %q (present: %v), want %q", v.AsString(), ok, c.want)
			}
		}
	}
}
