package redlease

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strconv"
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
	redistest.Eventually(t, time.Second, "head queued", func() bool { return l.hub.waiting(h.rkey) })
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
// expires while a waiter of the same Locker waits on it; the waiter then
// takes the lock by its own attempt and, finding no wake-up came, replaces
// the subscription, whose close is slowed, keeping it a while in obtain
// after its attempt. obtain runs the waiter; the returned function waits
// until the waiter holds the key and then releases r late.
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
	release := staleReleaseAfterOwnAttempt(t, l, base, &delay, func() {
		doErr <- l.Do(ctx, "k", func(fctx context.Context) error {
			o, _ := other.TryObtain(ctx, "k", WithoutWatchdog(), WithTTL(5*time.Second))
			inFn <- seen{fctx.Err(), o}
			return nil
		}, WithRetry(LinearBackoff(2*time.Second)))
	})
	if err := release(); !errors.Is(err, ErrNotHeld) {
		t.Errorf("Release of an expired lease that a waiter now holds: %v, want ErrNotHeld", err)
	}
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
		lk, err := l.Obtain(ctx, "k", WithRetry(LinearBackoff(2*time.Second)))
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

// dropHandoffReply lets the hand-off script run on the server, then reports
// an error as if its reply had been lost, while armed. It counts the
// acquire scripts run.
type dropHandoffReply struct {
	armed    atomic.Bool
	acquires atomic.Int64
}

var errReplyLost = errors.New("injected: reply lost")

func (*dropHandoffReply) DialHook(n redis.DialHook) redis.DialHook { return n }
func (h *dropHandoffReply) ProcessHook(n redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := n(ctx, cmd)
		a := cmd.Args()
		if len(a) > 1 && a[1] == acquireScript.Hash() {
			h.acquires.Add(1)
		}
		if err == nil && len(a) > 1 && a[1] == handoffScript.Hash() && h.armed.CompareAndSwap(true, false) {
			cmd.SetErr(errReplyLost)
			return errReplyLost
		}
		return err
	}
}
func (*dropHandoffReply) ProcessPipelineHook(n redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return n
}

// A hand-off whose reply is lost: Release reports the error, and the
// waiter, whose token the script did set, still ends up holding the lock
// (its own acquire finds its token), with a fence above the last holder's
// and a lease that Redis keeps.
func TestHandoffWithLostReplyStillGrantsTheWaiter(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		for _, s := range []*redis.Script{handoffScript, acquireScript} { // EVALSHA succeeds at once
			require.NoError(t, s.Load(ctx, c).Err())
		}
		hook := &dropHandoffReply{}
		c.AddHook(hook)
		l := NewLocker(c, WithPrefix(uniq(t)))
		defer l.Close()
		other := NewLocker(c, WithPrefix(uniq(t)))
		defer other.Close()
		h, err := l.TryObtain(ctx, "k")
		require.NoError(t, err)
		got := make(chan *Lock, 1)
		go func() {
			lk, err := l.Obtain(ctx, "k", WithRetry(LinearBackoff(time.Minute)))
			if err != nil {
				t.Error(err)
			}
			got <- lk
		}()
		// The holder's acquire, then the waiter's first attempt and its
		// retry right after subscribing: then it waits, not trying.
		redistest.Eventually(t, 2*time.Second, "waiter queued and waiting", func() bool {
			return hook.acquires.Load() == 3 && waitingHead(l, h.rkey)
		})
		hook.armed.Store(true)
		if err := h.Release(ctx); !errors.Is(err, errReplyLost) || errors.Is(err, ErrNotHeld) {
			t.Errorf("Release whose hand-off reply was lost: %v, want the error", err)
		}
		if hook.armed.Load() {
			t.Fatal("the release did not hand off")
		}
		var w *Lock
		select {
		case w = <-got:
		case <-time.After(5 * time.Second):
			t.Fatal("the waiter did not get the lock")
		}
		if w == nil {
			t.FailNow()
		}
		defer w.Release(ctx)
		if v := c.Get(ctx, w.rkey).Val(); v != w.Token() {
			t.Errorf("the waiter's Obtain returned, but Redis holds %q", v)
		}
		if d, err := w.TTL(ctx); err != nil || d <= 0 {
			t.Errorf("the waiter's lease: TTL %v %v", d, err)
		}
		if w.Fence() <= h.Fence() {
			t.Errorf("the waiter's fence %d is not above the last holder's %d", w.Fence(), h.Fence())
		}
		select {
		case <-w.Lost():
			t.Errorf("the waiter's Lost is closed: %v", w.Err())
		default:
		}
		if _, err := other.TryObtain(ctx, "k"); !errors.Is(err, ErrNotObtained) {
			t.Errorf("another Locker's TryObtain while the waiter holds the lock: %v", err)
		}
	})
}

// waitingHead reports whether key has a head waiter that is not making
// its own attempt.
func waitingHead(l *Locker, key string) bool {
	l.hub.mu.Lock()
	defer l.hub.mu.Unlock()
	q := l.hub.queues[key]
	return len(q) > 0 && !q[0].trying
}

// A Locker used on many distinct contended keys keeps no state for a key
// once nobody waits on it: the hand-off streak travels with the lease.
func TestHubKeepsNoStateForKeysNobodyWaitsOn(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	l := NewLocker(c, WithPrefix(uniq(t)))
	defer l.Close()
	const keys = 200
	for i := range keys {
		key := "order:" + strconv.Itoa(i)
		h, err := l.TryObtain(ctx, key)
		require.NoError(t, err)
		got := make(chan *Lock, 1)
		go func() { lk, _ := l.Obtain(ctx, key); got <- lk }()
		redistest.Eventually(t, 2*time.Second, "waiter queued", func() bool { return l.hub.waiting(h.rkey) })
		require.NoError(t, h.Release(ctx))
		if lk := <-got; lk != nil {
			lk.Release(ctx)
		}
	}
	// Every map in the hub, whatever it is for, counts.
	l.hub.mu.Lock()
	n := 0
	hub := reflect.ValueOf(&l.hub).Elem()
	for i := range hub.NumField() {
		if f := hub.Field(i); f.Kind() == reflect.Map {
			n += f.Len()
		}
	}
	l.hub.mu.Unlock()
	if n != 0 {
		t.Errorf("the hub keeps %d map entries though nobody waits on any key", n)
	}
}

// Hand-offs within one Locker are bounded: after maxHandoffStreak in a row,
// the next release is a real one (heard by every Locker), and a lease
// obtained after it starts a new streak.
func TestHandoffStreakEndsInARealRelease(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	hook := &dropHandoffReply{} // never armed: counts acquires
	c.AddHook(hook)
	l := NewLocker(c, WithPrefix(uniq(t)))
	defer l.Close()
	lk, err := l.TryObtain(ctx, "k")
	require.NoError(t, err)
	for round := 1; round <= maxHandoffStreak+1; round++ {
		before := hook.acquires.Load()
		got := make(chan *Lock, 1)
		go func() {
			w, err := l.Obtain(ctx, "k", WithRetry(LinearBackoff(time.Minute)))
			if err != nil {
				t.Error(err)
			}
			got <- w
		}()
		// Its first attempt and its retry right after subscribing: then it waits.
		redistest.Eventually(t, 2*time.Second, "waiter waiting", func() bool {
			return hook.acquires.Load() == before+2 && waitingHead(l, lk.rkey)
		})
		require.NoError(t, lk.Release(ctx))
		select {
		case lk = <-got:
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: the waiter did not get the lock", round)
		}
		if lk == nil {
			t.FailNow()
		}
		want := round // handed off
		if round > maxHandoffStreak {
			want = 0 // a real release; the waiter took the lock itself
		}
		if lk.streak != want {
			t.Fatalf("round %d: the lease's streak is %d, want %d", round, lk.streak, want)
		}
	}
	lk.Release(ctx)
}

type deadLinkHook struct {
	armed, down atomic.Bool
	acquires    atomic.Int64
}

func (*deadLinkHook) DialHook(n redis.DialHook) redis.DialHook { return n }
func (h *deadLinkHook) ProcessHook(n redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		a := cmd.Args()
		isScript := func(s *redis.Script) bool { return len(a) > 1 && a[1] == s.Hash() }
		if h.down.Load() && (isScript(acquireScript) || isScript(releaseScript)) {
			select { // a dead link: the command hangs until go-redis's timeouts
			case <-ctx.Done():
			case <-time.After(3 * time.Second):
			}
			cmd.SetErr(errReplyLost)
			return errReplyLost
		}
		err := n(ctx, cmd)
		if isScript(acquireScript) {
			h.acquires.Add(1)
		}
		if err == nil && isScript(handoffScript) && h.armed.CompareAndSwap(true, false) {
			h.down.Store(true)
			cmd.SetErr(errReplyLost)
			return errReplyLost
		}
		return err
	}
}
func (*deadLinkHook) ProcessPipelineHook(n redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return n
}

// A waiter whose hand-off went unanswered and whose ctx then ends while
// Redis is unreachable returns about when its ctx ends: giving its possible
// token back does not hold it up.
func TestUnsureWaiterGivingUpReturnsWithItsContext(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	for _, s := range []*redis.Script{handoffScript, acquireScript, releaseScript} {
		require.NoError(t, s.Load(ctx, c).Err())
	}
	hook := &deadLinkHook{}
	c.AddHook(hook)
	l := NewLocker(c, WithPrefix(uniq(t)))
	defer l.Close()
	h, err := l.TryObtain(ctx, "k")
	require.NoError(t, err)
	type res struct {
		d   time.Duration
		err error
	}
	got := make(chan res, 1)
	go func() {
		octx, cancel := context.WithTimeout(ctx, 1*time.Second)
		defer cancel()
		start := time.Now()
		_, err := l.Obtain(octx, "k", WithRetry(LinearBackoff(time.Minute)))
		got <- res{time.Since(start), err}
	}()
	redistest.Eventually(t, 2*time.Second, "waiter queued", func() bool {
		return hook.acquires.Load() == 3 && waitingHead(l, h.rkey)
	})
	hook.armed.Store(true)
	_ = h.Release(ctx)
	r := <-got
	t.Logf("Obtain with a 1s ctx returned after %v: %v", r.d, r.err)
	if !errors.Is(r.err, context.DeadlineExceeded) && r.err == nil {
		t.Fatal("obtained?")
	}
	if r.d > 2*time.Second {
		t.Errorf("Obtain returned %v after its 1s ctx: leave's release on a dead link ignores ctx", r.d)
	}
	l.hub.cleanups.Wait() // the best-effort release ends once the link answers
}
