package redlease

import (
	"bytes"
	"context"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// Races of waiting found by review: stale and lost notices, waiters that
// give up, dead waiters past the skip limit, a subscription that cannot be
// made, a first attempt that fails, subscriptions on replicas.

// faultConn swallows or delays the reply to a write that carries marker.
type faultConn struct {
	net.Conn
	f        *faults
	mu       sync.Mutex
	deadline time.Time
	mode     int // 0 pass, 1 swallow next reply, 2 delay next reply
}

type faults struct {
	marker   atomic.Value // []byte
	seen     atomic.Int32
	delay    time.Duration
	dialFail atomic.Bool
	dials    atomic.Int32
}

func (f *faults) dialer(addr string) func(ctx context.Context, network, _ string) (net.Conn, error) {
	return func(ctx context.Context, network, _ string) (net.Conn, error) {
		f.dials.Add(1)
		if f.dialFail.Load() {
			<-ctx.Done() // a dial that times out (DialTimeout)
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &faultConn{Conn: c, f: f}, nil
	}
}

func (c *faultConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(t)
}

func (c *faultConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return c.Conn.SetDeadline(t)
}

func (c *faultConn) Write(b []byte) (int, error) {
	if m, _ := c.f.marker.Load().([]byte); m != nil && bytes.Contains(b, m) {
		c.mu.Lock()
		n := c.f.seen.Add(1)
		switch n {
		case 1:
			c.mode = 1
		case 2:
			c.mode = 2
		}
		c.mu.Unlock()
	}
	return c.Conn.Write(b)
}

func (c *faultConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	mode, dl := c.mode, c.deadline
	c.mode = 0
	c.mu.Unlock()
	switch mode {
	case 1:
		time.Sleep(time.Until(dl))
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	case 2:
		time.Sleep(c.f.delay)
	}
	return c.Conn.Read(b)
}

// A waiter granted the lock (with a counted fence, because the releasing
// holder's fence is above its ticket) that gives up before taking it
// passes the lock on without knowing its fence (0): the next waiter still
// gets a fence above the previous holder's, not its raw ticket.
func TestGiveUpAfterGrantKeepsFencesGrowing(t *testing.T) {
	func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		ls := lockers(t, c.Options().Addr, 4)
		// A holder that dies: its lease just expires.
		_, err := ls[0].TryObtain(ctx, "k", WithTTL(300*time.Millisecond), WithoutWatchdog())
		require.NoError(t, err)
		first := waitFor(t, ctx, ls[3], "k", WithRetry(LinearBackoff(50*time.Millisecond)))
		quitting, quit := context.WithCancel(ctx)
		gaveUp := waitFor(t, quitting, ls[1], "k", WithRetry(LinearBackoff(time.Minute)))
		next := waitFor(t, ctx, ls[2], "k", WithRetry(LinearBackoff(time.Minute)))
		// The expired lease is found by the first waiter's check: it takes
		// the lock with a counted fence, above the others' tickets.
		w0 := receive(t, first, 5*time.Second)
		t.Logf("first waiter's fence after the expiry: %d", w0.Fence())
		listenInstead(t, ctx, c, ls[1], "k") // its notice is lost (or late)
		require.NoError(t, w0.Release(ctx))  // granted to the waiter that gives up
		quit()
		if lk := <-gaveUp; lk != nil {
			t.Fatal("the waiter that gave up got a lock")
		}
		lk := receive(t, next, 5*time.Second)
		defer lk.Release(ctx)
		if lk.Fence() <= w0.Fence() {
			t.Fatalf("fence went backwards: %d after %d", lk.Fence(), w0.Fence())
		}
	}(t, realRedis(t)) // real Redis: the holder's lease must expire
}

// A grant notice still unread when its grant expires, while the waiter is
// granted again (its queued attempt was resent on a lost reply) and the
// second notice is dropped: the stale notice's fence must not be returned,
// as it is below the fence of the holder in between.
// The steps drive queue()'s own calls in the order that interleaving runs
// them: the attempt (and its resend), then takeGrant on the buffered notice.
func TestStaleNoticeKeepsFencesGrowing(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	ls := lockers(t, c.Options().Addr, 3)
	holder, err := ls[0].TryObtain(ctx, "k")
	require.NoError(t, err)

	l := ls[1]
	cfg, err := l.lockConfig("k", []LockOption{WithGrantTTL(100 * time.Millisecond)}, false)
	require.NoError(t, err)
	lk := l.newLock("k", cfg, nil)
	w, err := l.waits.join(lk, min(cfg.ttl, cfg.grantTTL))
	require.NoError(t, err)
	defer l.waits.leave(w, true)
	<-w.sub.ready
	w.start = time.Now()
	send := func() int64 { // the attempt as queue() sends it; a resend is the same call
		r, err := acquireScript.call(ctx, l.client, lk.keys()[:3], &lk.token, &lk.ttlMs, &w.entry).Int64()
		require.NoError(t, err)
		return r
	}
	require.EqualValues(t, -1, send()) // queued; say its reply is lost
	require.NoError(t, holder.Release(ctx))
	redistest.Eventually(t, 5*time.Second, "the first grant's notice", func() bool { return len(w.granted) > 0 })
	time.Sleep(150 * time.Millisecond) // the grant expires, unused
	x, err := ls[2].TryObtain(ctx, "k")
	require.NoError(t, err)
	require.EqualValues(t, -1, send()) // go-redis resends the attempt: queued again
	require.NoError(t, x.Release(ctx)) // granted again; its notice is dropped
	time.Sleep(50 * time.Millisecond)
	ok, err := l.takeGrant(ctx, w, <-w.granted) // queue()'s select
	require.NoError(t, err)
	require.True(t, ok)
	defer lk.Release(ctx)
	t.Logf("holder %d, in between %d, waiter %d; Redis holds %q (waiter %q)", holder.Fence(), x.Fence(), lk.Fence(), c.Get(ctx, lk.rkey).Val(), lk.Token())
	if lk.Fence() <= x.Fence() {
		t.Fatalf("fence went backwards: %d after %d", lk.Fence(), x.Fence())
	}
}

// A check that skips MAX_SKIPPED dead waiters and gives up does not take
// the lock for its waiter ahead of live waiters queued before it.
func TestSkipLimitKeepsArrivalOrder(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	ls := lockers(t, c.Options().Addr, 3)
	_, err := ls[0].TryObtain(ctx, "k", WithTTL(300*time.Millisecond), WithoutWatchdog()) // dies
	require.NoError(t, err)
	keys := ls[0].lockKeys("k")
	var dead []redis.Z
	for i := range maxSkippedWaiters + 1 {
		dead = append(dead, redis.Z{Score: float64(-100 + i), Member: "2000 " + uniq(t) + ":gone:" + string(rune('a'+i)) + " tok" + string(rune('a'+i))})
	}
	require.NoError(t, c.ZAdd(ctx, keys[2], dead...).Err())
	wctx, cancel := context.WithCancel(ctx) // ends the later waiter's wait before its Locker closes
	defer cancel()
	first := waitFor(t, wctx, ls[1], "k", WithRetry(LinearBackoff(2*time.Second)))
	second := waitFor(t, wctx, ls[2], "k", WithRetry(LinearBackoff(50*time.Millisecond)))
	select {
	case lk := <-second:
		defer lk.Release(ctx)
		t.Fatalf("the later waiter got the lock (fence %d) while the earlier one still waits", lk.Fence())
	case lk := <-first:
		defer lk.Release(ctx)
	case <-time.After(5 * time.Second):
		t.Fatal("nobody got it")
	}
}

// listeningLocker returns a Locker under prefix on a client with opts
// whose connections f dials, once its grant subscription is up (it has
// waited on a lock other held): from then on, f swallows or delays the
// replies to the first two writes that carry one of its queue entries.
func listeningLocker(t *testing.T, other *Locker, f *faults, opts *redis.Options, prefix string) *Locker {
	ctx := context.Background()
	addr := other.client.(*redis.Client).Options().Addr
	opts.Addr, opts.Dialer = addr, f.dialer(addr)
	wc := redis.NewClient(opts)
	wl := NewLocker(wc, WithPrefix(prefix))
	t.Cleanup(func() { wl.Close(); wc.Close() })
	warm, err := other.TryObtain(ctx, "warm")
	require.NoError(t, err)
	time.AfterFunc(100*time.Millisecond, func() { warm.Release(ctx) })
	wlk, err := wl.Obtain(ctx, "warm")
	require.NoError(t, err)
	require.NoError(t, wlk.Release(ctx))
	f.marker.Store([]byte(":grant:" + wl.waits.id + " "))
	return wl
}

// End to end: the waiter's queued attempt loses its reply; go-redis resends
// it after the read timeout. Meanwhile a release granted the waiter the
// lock (notice buffered), the grant expired unused, another took and
// released the lock, granting the waiter again (notice dropped). Obtain's
// fence is above the holder's in between.
func TestStaleNoticeAfterLostReplyKeepsFencesGrowing(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	others := lockers(t, c.Options().Addr, 2)
	prefix := others[0].prefix
	f := &faults{delay: 40 * time.Millisecond}
	wl := listeningLocker(t, others[0], f, &redis.Options{ReadTimeout: 400 * time.Millisecond}, prefix)

	holder, err := others[0].TryObtain(ctx, "k")
	require.NoError(t, err)
	got := make(chan *Lock, 1)
	go func() {
		octx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		lk, err := wl.Obtain(octx, "k", WithGrantTTL(100*time.Millisecond))
		if err != nil {
			t.Error(err)
		}
		got <- lk
	}()
	queue := wl.lockKeys("k")[2]
	queued := func() bool { return c.ZCard(ctx, queue).Val() > 0 }
	redistest.Eventually(t, 5*time.Second, "the waiter queued", queued)
	require.NoError(t, holder.Release(ctx)) // first grant; Obtain is still reading the lost reply
	time.Sleep(150 * time.Millisecond)      // it expires unused
	x, err := others[1].TryObtain(ctx, "k")
	require.NoError(t, err)
	redistest.Eventually(t, 5*time.Second, "the resend queued the waiter again", queued)
	require.NoError(t, x.Release(ctx)) // second grant, while the resend's reply is on its way
	lk := receive(t, got, 10*time.Second)
	defer lk.Release(ctx)
	t.Logf("holder %d, in between %d, waiter %d", holder.Fence(), x.Fence(), lk.Fence())
	if lk.Fence() <= x.Fence() {
		t.Fatalf("fence went backwards: %d after %d", lk.Fence(), x.Fence())
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// A waiter whose Locker's subscription cannot come up (its dials time out)
// still gets the lock once it is free: it tries without queueing until the
// subscription is up or has failed, then queues and checks Redis on its
// retry schedule. The reader pauses between attempts to subscribe (CPU is
// logged).
func TestWaiterChecksWhileItsSubscriptionIsDown(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	prefix := uniq(t)
	other := NewLocker(c, WithPrefix(prefix))
	defer other.Close()
	f := &faults{}
	wc := redis.NewClient(&redis.Options{Addr: c.Options().Addr, Dialer: f.dialer(c.Options().Addr), DialTimeout: 500 * time.Millisecond, DialerRetries: 1})
	defer wc.Close()
	require.NoError(t, wc.Ping(ctx).Err()) // a pooled connection that keeps working
	wl := NewLocker(wc, WithPrefix(prefix))
	defer wl.Close()

	holder, err := other.TryObtain(ctx, "k")
	require.NoError(t, err)
	f.dialFail.Store(true) // new connections time out; the pooled one works
	octx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	done := make(chan error, 1)
	dials := f.dials.Load() // before Obtain, which may dial at once
	go func() {
		lk, err := wl.Obtain(octx, "k")
		if err == nil {
			lk.Release(ctx)
		}
		done <- err
	}()
	redistest.Eventually(t, 5*time.Second, "the waiter's subscription dialling", func() bool { return f.dials.Load() > dials })
	require.NoError(t, holder.Release(ctx)) // a queued waiter would be skipped: nobody listens
	cpu0, wall0 := cpuTime(), time.Now()
	err = <-done
	used := cpuTime() - cpu0
	t.Logf("Obtain: %v after the release; lock held by %q; dials %d; CPU %v in %v", err, c.Get(ctx, wl.lockKey("k")).Val(), f.dials.Load(), used, time.Since(wall0))
	if err != nil {
		t.Fatalf("the lock was free for %v, yet Obtain (checks every 250ms-1s) failed: %v", time.Since(wall0), err)
	}
}

// An Obtain whose first (queueing) attempt fails with an error (reply lost,
// retries used up; or ctx ends mid-call with ContextTimeoutEnabled) leaves
// the queue all the same: were its entry left while its Locker still
// listens (other waiters, or its linger), the next release would grant the
// lock to that dead Obtain, and nobody could take it for the grant ttl.
func TestFailedFirstAttemptLeavesNoGhost(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	others := lockers(t, c.Options().Addr, 2)
	prefix := others[0].prefix
	f := &faults{}
	wl := listeningLocker(t, others[0], f, &redis.Options{ReadTimeout: 300 * time.Millisecond, MaxRetries: -1}, prefix)

	holder, err := others[0].TryObtain(ctx, "k")
	require.NoError(t, err)
	// Its reply lost, the attempt fails; were the reply to get through,
	// the Obtain would end with its context: either way it fails.
	octx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = wl.Obtain(octx, "k")
	cancel()
	t.Logf("Obtain: %v", err)
	require.Error(t, err)
	wl.waits.cleanups.Wait()
	t.Logf("queue after the failed Obtain: %v", c.ZRange(ctx, wl.lockKeys("k")[2], 0, -1).Val())
	next := waitFor(t, ctx, others[1], "k")
	start := time.Now()
	require.NoError(t, holder.Release(ctx))
	lk := receive(t, next, 5*time.Second)
	defer lk.Release(ctx)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("the next live waiter got the lock %v after the release: it was granted to the Obtain that had failed", d)
	}
}

// PUBLISH counts pattern subscribers: with any PSUBSCRIBE matching the
// grant channels (a monitoring tool's "*"), a dead waiter is never skipped;
// the lock is granted to it and stays taken for its grant ttl.
func TestKnownIssuePatternSubscriberMakesDeadWaitersLookAlive(t *testing.T) {
	knownIssue(t, "PUBLISH counts pattern subscribers, so a PSUBSCRIBE matching the grant channels hides dead waiters")
	c := realRedis(t)
	ctx := context.Background()
	ls := lockers(t, c.Options().Addr, 2)
	ps := c.PSubscribe(ctx, "*")
	_, err := ps.Receive(ctx)
	require.NoError(t, err)
	defer ps.Close()
	holder, err := ls[0].TryObtain(ctx, "k")
	require.NoError(t, err)
	// A waiter whose process died: its Locker's channel has no subscriber.
	dead := "2000 " + uniq(t) + ":grant:dead-locker tok"
	require.NoError(t, c.ZAdd(ctx, ls[0].lockKeys("k")[2], redis.Z{Score: 0, Member: dead}).Err())
	got := waitFor(t, ctx, ls[1], "k")
	start := time.Now()
	require.NoError(t, holder.Release(ctx))
	lk := receive(t, got, 5*time.Second)
	defer lk.Release(ctx)
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("the live waiter got the lock after %v: the dead one was granted it", d)
	}
}

// With ClusterOptions.ReadOnly, go-redis would put a shard subscription on
// a replica, where SPUBLISH on the master counts no receiver but the
// message still arrives: a skipped grant would be taken for real. The
// subscription is made on the slot's master instead, so the lock Obtain
// returns is the one Redis holds.
func TestClusterReadOnlyClientHearsOnlyRealGrants(t *testing.T) {
	cc := startCluster(t)
	ro := cluster.Client(t, func(o *redis.ClusterOptions) { o.ReadOnly = true })
	ctx := context.Background()
	prefix := uniq(t)
	a := NewLocker(cc, WithPrefix(prefix))
	defer a.Close()
	w := NewLocker(ro, WithPrefix(prefix))
	defer w.Close()
	holder, err := a.TryObtain(ctx, "k")
	require.NoError(t, err)
	got := make(chan *Lock, 1)
	go func() {
		lk, err := w.Obtain(ctx, "k", WithRetry(LinearBackoff(time.Minute)))
		if err != nil {
			t.Error(err)
		}
		got <- lk
	}()
	queue := a.lockKeys("k")[2]
	redistest.Eventually(t, 5*time.Second, "the waiter queued", func() bool { return cc.ZCard(ctx, queue).Val() > 0 })
	time.Sleep(200 * time.Millisecond) // the subscription is up
	require.NoError(t, holder.Release(ctx))
	var lk *Lock
	select {
	case lk = <-got:
	case <-time.After(3 * time.Second):
		t.Fatal("no grant heard")
	}
	require.NotNil(t, lk)
	defer lk.Release(ctx)
	inRedis := cc.Get(ctx, lk.rkey).Val()
	other, err := a.TryObtain(ctx, "k")
	if err == nil {
		defer other.Release(ctx)
	}
	t.Logf("Obtain returned fence %d; Redis holds %q (ours %q); another TryObtain: %v", lk.Fence(), inRedis, lk.Token(), err)
	if inRedis != lk.Token() {
		t.Fatalf("Obtain returned a lock that Redis does not hold (Redis: %q); a TryObtain then got it too: %v", inRedis, err == nil)
	}
}
