package redlease

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// Fault injection on a real redis-server: every test here is bounded in
// time and talks to loopback only.

// proxied returns a client that reaches Redis through a fault proxy.
func proxied(t *testing.T, target string) (*redis.Client, *redistest.FaultProxy) {
	p := redistest.NewFaultProxy(t, target)
	c := redis.NewClient(&redis.Options{Addr: p.Addr(), ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond})
	t.Cleanup(func() { c.Close() })
	return c, p
}

// A holder whose renewals cannot get through sees Lost no later than its
// lease ends by its own clock; another then obtains the lock, and the old
// holder cannot release it.
func TestFaultPausedLink(t *testing.T) {
	direct := realRedis(t)
	ctx := context.Background()
	pc, proxy := proxied(t, direct.Options().Addr)
	a := NewLocker(pc, WithPrefix(uniq(t)))
	defer a.Close()
	b := NewLocker(direct, WithPrefix(uniq(t)))
	defer b.Close()
	h := newHistory()

	call := time.Now()
	la, err := a.TryObtain(ctx, "k", WithTTL(300*time.Millisecond))
	require.NoError(t, err)
	h.add(lockInput{kind: opAcquire, client: 0}, la.Fence(), call, time.Now())
	proxy.Pause()
	call = time.Now()
	octx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	lb, err := b.Obtain(octx, "k")
	require.NoError(t, err)
	got := time.Now()
	h.add(lockInput{kind: opAcquire, client: 1}, lb.Fence(), call, got)
	select {
	case <-la.Lost():
	default:
		t.Fatal("another holder obtained the lock while the old holder's Lost was open")
	}
	h.lost(0, la)
	if !errors.Is(la.Err(), ErrNotHeld) {
		t.Fatalf("Err %v", la.Err())
	}
	t.Logf("Lost closed %v before the other holder obtained the lock", got.Sub(la.endedAt))
	proxy.Resume()
	call = time.Now()
	err = la.Release(ctx)
	h.add(lockInput{kind: opRelease, client: 0}, err == nil, call, time.Now())
	if !errors.Is(err, ErrNotHeld) {
		t.Fatalf("stale release: %v", err)
	}
	if d, _ := lb.TTL(ctx); d <= 0 {
		t.Fatal("the stale release touched the new holder's lease")
	}
	call = time.Now()
	err = lb.Release(ctx)
	h.add(lockInput{kind: opRelease, client: 1}, err == nil, call, time.Now())
	h.check(t)
}

// Latency well under the renewal interval costs nothing: the lease holds.
func TestFaultLatency(t *testing.T) {
	direct := realRedis(t)
	ctx := context.Background()
	pc, proxy := proxied(t, direct.Options().Addr)
	l := NewLocker(pc, WithPrefix(uniq(t)))
	defer l.Close()
	lk, err := l.TryObtain(ctx, "k", WithTTL(300*time.Millisecond))
	require.NoError(t, err)
	proxy.SetLatency(20 * time.Millisecond)
	select {
	case <-lk.Lost():
		t.Fatalf("lease lost under 40ms round trips: %v", lk.Err())
	case <-time.After(1500 * time.Millisecond):
	}
	proxy.SetLatency(0)
	require.NoError(t, lk.Release(ctx))
}

// Contention through connections that keep being dropped mid-command:
// go-redis resends, acquire is idempotent per token, and the history of
// acquisitions, releases, losses and fenced writes stays linearizable.
func TestFaultDroppedConnections(t *testing.T) {
	direct := realRedis(t)
	ctx := context.Background()
	h := newHistory()
	var res fencedResource
	stop := make(chan struct{})
	var drops atomic.Int64
	var wg sync.WaitGroup
	var proxies []*redistest.FaultProxy
	for client := range 4 {
		pc, proxy := proxied(t, direct.Options().Addr)
		proxies = append(proxies, proxy)
		l := NewLocker(pc, WithPrefix(uniq(t)))
		defer l.Close()
		wg.Go(func() {
			for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
				call := time.Now()
				octx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
				lk, err := l.Obtain(octx, "k", WithTTL(200*time.Millisecond))
				cancel()
				if err != nil {
					if errors.Is(err, ErrNotObtained) {
						h.add(lockInput{kind: opAcquire, client: client}, int64(0), call, time.Now())
					}
					continue // a dropped connection may have lost the reply: the lease ends by TTL
				}
				h.add(lockInput{kind: opAcquire, client: client}, lk.Fence(), call, time.Now())
				res.write(h, client, lk.Fence())
				time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond)
				call = time.Now()
				err = lk.Release(ctx)
				ret := time.Now()
				h.lost(client, lk)
				if err == nil {
					h.add(lockInput{kind: opRelease, client: client}, true, call, ret)
				} else {
					// Unknown outcome: a release resent after a dropped
					// reply finds the lease gone and says ErrNotHeld though
					// it released. The holder stops believing it holds the
					// lock; a lease still there ends by its TTL.
					h.add(lockInput{kind: opLost, client: client}, nil, call, ret)
				}
			}
		})
	}
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(10+rand.IntN(30)) * time.Millisecond):
				proxies[rand.IntN(len(proxies))].Drop()
				drops.Add(1)
			}
		}
	})
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d connection drops", drops.Load())
	h.check(t)
}

// Many Lockers under contention, no faults: the history is linearizable.
func TestLinearizableUnderContention(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	h := newHistory()
	var res fencedResource
	var wg sync.WaitGroup
	for client := range 6 {
		cl := redis.NewClient(&redis.Options{Addr: c.Options().Addr})
		defer cl.Close()
		l := NewLocker(cl, WithPrefix(uniq(t)))
		defer l.Close()
		wg.Go(func() {
			for deadline := time.Now().Add(1500 * time.Millisecond); time.Now().Before(deadline); {
				call := time.Now()
				var lk *Lock
				var err error
				if client%2 == 0 {
					lk, err = l.TryObtain(ctx, "k", WithTTL(time.Second))
				} else {
					octx, cancel := context.WithTimeout(ctx, time.Second)
					lk, err = l.Obtain(octx, "k", WithTTL(time.Second))
					cancel()
				}
				if err != nil {
					h.add(lockInput{kind: opAcquire, client: client}, int64(0), call, time.Now())
					continue
				}
				h.add(lockInput{kind: opAcquire, client: client}, lk.Fence(), call, time.Now())
				if !res.write(h, client, lk.Fence()) {
					t.Error("the holder's fenced write was refused")
				}
				call = time.Now()
				err = lk.Release(ctx)
				h.add(lockInput{kind: opRelease, client: client}, err == nil, call, time.Now())
			}
		})
	}
	wg.Wait()
	h.check(t)
}

// A holder paused longer than its lease (a long GC pause: no renewal, but
// it goes on working) is overtaken by a holder with a larger fence, and the
// fenced resource refuses the stale holder's write.
func TestFaultClientPause(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	l := NewLocker(c, WithPrefix(uniq(t)))
	defer l.Close()
	h := newHistory()
	var res fencedResource
	call := time.Now()
	a, err := l.TryObtain(ctx, "k", WithTTL(200*time.Millisecond), WithoutWatchdog())
	require.NoError(t, err)
	h.add(lockInput{kind: opAcquire, client: 0}, a.Fence(), call, time.Now())
	time.Sleep(300 * time.Millisecond) // paused: the lease ends meanwhile
	call = time.Now()
	octx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	b, err := l.Obtain(octx, "k", WithTTL(5*time.Second))
	require.NoError(t, err)
	h.add(lockInput{kind: opAcquire, client: 1}, b.Fence(), call, time.Now())
	h.lost(0, a)
	if b.Fence() <= a.Fence() {
		t.Fatalf("fence %d after %d", b.Fence(), a.Fence())
	}
	if !res.write(h, 1, b.Fence()) {
		t.Fatal("the current holder's write was refused")
	}
	if res.write(h, 0, a.Fence()) { // the paused holder wakes up and writes
		t.Fatal("the stale holder's write was accepted")
	}
	b.Release(ctx)
	h.check(t)
}

// A consumer cut off mid-handler loses its claim to another consumer and
// cannot ack it when the link returns; the message is acked exactly once.
func TestFaultConsumerCutOff(t *testing.T) {
	direct := realRedis(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pc, proxy := proxied(t, direct.Options().Addr)
	opts := []QueueOption{WithPrefix(uniq(t)), WithLease(300 * time.Millisecond)}
	qa := NewQueue(pc, "q", opts...)
	qb := NewQueue(direct, "q", opts...)
	if _, err := qb.Enqueue(ctx, []byte("job")); err != nil {
		t.Fatal(err)
	}
	var acks atomic.Int32
	var aErrs []error
	var mu sync.Mutex
	started := make(chan struct{})
	aDone := make(chan struct{})
	go func() {
		defer close(aDone)
		qa.Consume(ctx, func(hctx context.Context, m *Message) error {
			close(started)
			proxy.Pause() // cut off mid-handler
			<-hctx.Done() // the claim is lost: the handler is told
			return context.Cause(hctx)
		}, WithErrorHandler(func(err error) { mu.Lock(); aErrs = append(aErrs, err); mu.Unlock() }))
	}()
	<-started
	bctx, bcancel := context.WithTimeout(ctx, 3*time.Second)
	defer bcancel()
	for bctx.Err() == nil {
		qb.Reclaim(bctx)
		cctx, ccancel := context.WithTimeout(bctx, 100*time.Millisecond)
		m, err := qb.Claim(cctx)
		ccancel()
		if err == nil {
			if m.Attempt != 2 {
				t.Fatalf("attempt %d", m.Attempt)
			}
			require.NoError(t, m.Ack(ctx))
			acks.Add(1)
			break
		}
	}
	if acks.Load() != 1 {
		t.Fatal("the other consumer never got the message")
	}
	proxy.Resume()
	cancel()
	<-aDone
	mu.Lock()
	defer mu.Unlock()
	var refused bool
	for _, err := range aErrs {
		refused = refused || errors.Is(err, ErrNotHeld)
	}
	if !refused {
		t.Fatalf("the cut-off consumer's ack or nack was not refused: %v", aErrs)
	}
	wantStats(t, qb, Stats{})
}

// SHUTDOWN NOSAVE while locks are held and messages are in flight, then a
// restart on the same port without persistence: holders learn the loss,
// clients reconnect and reload the scripts, and the queue is empty.
func TestFaultRestartWithoutPersistence(t *testing.T) {
	srv := redistest.Own(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer c.Close()
	ctx := context.Background()
	l := NewLocker(c)
	defer l.Close()
	lk, err := l.TryObtain(ctx, "k", WithTTL(300*time.Millisecond))
	require.NoError(t, err)
	q := NewQueue(c, "q")
	q.EnqueueBatch(ctx, [][]byte{[]byte("a"), []byte("b")})
	if _, err := q.Claim(ctx); err != nil {
		t.Fatal(err)
	}
	_ = c.Do(ctx, "SHUTDOWN", "NOSAVE").Err() // the connection closes
	srv.Kill()
	require.NoError(t, srv.Restart())
	select {
	case <-lk.Lost():
	case <-time.After(2 * time.Second):
		t.Fatal("the holder was not told its lease was lost")
	}
	t.Logf("after restart: Lost with %v", lk.Err())
	// Scripts are gone from the new server: NOSCRIPT is handled.
	lk2, err := l.TryObtain(ctx, "k")
	require.NoError(t, err)
	if lk2.Fence() != 1 {
		t.Logf("fence restarted at %d: without persistence fences start over", lk2.Fence())
	}
	lk2.Release(ctx)
	wantStats(t, q, Stats{}) // without persistence, queued messages are gone
}

// With appendonly yes and appendfsync always, a crash (SIGKILL) and restart
// loses nothing: nothing acked comes back, nothing unacked is lost.
func TestFaultCrashWithAOF(t *testing.T) {
	srv := redistest.Own(t, "--appendonly", "yes", "--appendfsync", "always")
	c := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer c.Close()
	ctx := context.Background()
	q := NewQueue(c, "q", WithLease(200*time.Millisecond))
	const n = 200
	var payloads [][]byte
	for i := range n {
		payloads = append(payloads, []byte(fmt.Sprint(i)))
	}
	if _, err := q.EnqueueBatch(ctx, payloads); err != nil {
		t.Fatal(err)
	}
	acked := map[string]bool{}
	for range n / 2 {
		m, err := q.Claim(ctx)
		require.NoError(t, err)
		require.NoError(t, m.Ack(ctx))
		acked[string(m.Payload)] = true
	}
	var inflight []*Message
	for range 10 {
		m, _ := q.Claim(ctx) // claimed, never acked: the consumer dies too
		inflight = append(inflight, m)
	}
	srv.Kill()
	require.NoError(t, srv.Restart())
	time.Sleep(250 * time.Millisecond) // the in-flight leases end
	if _, err := q.Reclaim(ctx); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for {
		cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		m, err := q.Claim(cctx)
		cancel()
		if err != nil {
			break
		}
		if acked[string(m.Payload)] {
			t.Fatalf("acked message %s came back", m.Payload)
		}
		seen[string(m.Payload)] = true
		m.Ack(ctx)
	}
	if len(seen)+len(acked) != n {
		t.Fatalf("%d acked before the crash + %d after != %d: messages were lost", len(acked), len(seen), n)
	}
	for _, m := range inflight {
		if !seen[string(m.Payload)] {
			t.Fatalf("in-flight message %s was lost", m.Payload)
		}
	}
	wantStats(t, q, Stats{})
}

// CLIENT KILL of every normal and pub/sub connection: the pool and the
// shared subscription reconnect, leases are kept, waiters still get in.
func TestFaultClientKill(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	admin := redis.NewClient(&redis.Options{Addr: c.Options().Addr})
	defer admin.Close()
	l := NewLocker(c, WithPrefix(uniq(t)))
	defer l.Close()
	holder, err := l.TryObtain(ctx, "k", WithTTL(300*time.Millisecond))
	require.NoError(t, err)
	got := make(chan error, 1)
	go func() {
		octx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		lk, err := l.Obtain(octx, "k", WithRetry(LinearBackoff(200*time.Millisecond)))
		if err == nil {
			err = lk.Release(ctx)
		}
		got <- err
	}()
	redistest.Eventually(t, 2*time.Second, "waiter queued", func() bool { return queuedIn(l, holder.name) })
	for _, typ := range []string{"normal", "pubsub"} {
		admin.Do(ctx, "CLIENT", "KILL", "TYPE", typ)
	}
	time.Sleep(500 * time.Millisecond) // renewals must get through reconnected
	select {
	case <-holder.Lost():
		t.Fatalf("lease lost after CLIENT KILL: %v", holder.Err())
	default:
	}
	require.NoError(t, holder.Release(ctx))
	require.NoError(t, <-got)
}

// DEBUG SLEEP shorter than the TTL costs nothing; longer, the holder's Lost
// closes by its own clock while the server sleeps, and another can then
// obtain the lock.
// timerLateness is how late a goroutine woken by a timer may run on a
// loaded 2-core machine under the race detector.
const timerLateness = 50 * time.Millisecond

func TestFaultDebugSleep(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	admin := redis.NewClient(&redis.Options{Addr: c.Options().Addr, ReadTimeout: 5 * time.Second})
	defer admin.Close()
	l := NewLocker(c, WithPrefix(uniq(t)))
	defer l.Close()

	short, err := l.TryObtain(ctx, "short", WithTTL(time.Second))
	require.NoError(t, err)
	admin.Do(ctx, "DEBUG", "SLEEP", "0.1")
	time.Sleep(400 * time.Millisecond)
	select {
	case <-short.Lost():
		t.Fatalf("a 100ms server stall lost a 1s lease: %v", short.Err())
	default:
	}
	short.Release(ctx)

	long, err := l.TryObtain(ctx, "long", WithTTL(300*time.Millisecond))
	require.NoError(t, err)
	start := time.Now()
	admin.Do(ctx, "DEBUG", "SLEEP", "0.8") // returns when the server wakes
	select {
	case <-long.Lost():
		// The deadline falls before 300ms; the watchdog's timer may fire a
		// little late on a loaded machine, but never near the stall's end.
		if d := long.endedAt.Sub(start); d > 300*time.Millisecond+timerLateness {
			t.Fatalf("Lost closed %v into the stall, after the lease ended", d)
		}
	default:
		t.Fatal("Lost still open after the server slept past the lease")
	}
	other, err := NewLocker(admin, WithPrefix(uniq(t))).TryObtain(ctx, "long")
	if err != nil {
		t.Fatalf("the expired lock could not be taken: %v", err)
	}
	other.Release(ctx)
}
