package redlease

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// nodes starts n independent redis-servers and returns a client on each.
func nodes(t *testing.T, n int) ([]*redistest.Server, []redis.UniversalClient) {
	t.Helper()
	var procs []*redistest.Server
	var clients []redis.UniversalClient
	for range n {
		p := redistest.Own(t)
		c := redis.NewClient(&redis.Options{Addr: p.Addr, MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
		t.Cleanup(func() { c.Close() })
		procs, clients = append(procs, p), append(clients, c)
	}
	return procs, clients
}

func TestQuorumLocker(t *testing.T) {
	_, clients := nodes(t, 3)
	ctx := context.Background()
	l := NewQuorumLocker(clients)
	defer l.Close()
	lk, err := l.TryObtain(ctx, "k")
	require.NoError(t, err)
	for i, c := range clients {
		if c.Get(ctx, l.lockKey("k")).Val() != lk.Token() {
			t.Fatalf("node %d lacks the lease", i)
		}
	}
	if _, err := l.TryObtain(ctx, "k"); !errors.Is(err, ErrNotObtained) {
		t.Fatalf("second TryObtain: %v", err)
	}
	if d, err := lk.TTL(ctx); err != nil || d <= 0 {
		t.Fatalf("TTL %v %v", d, err)
	}
	require.NoError(t, lk.Refresh(ctx, time.Minute))
	got := make(chan *Lock)
	go func() {
		w, err := l.Obtain(ctx, "k", WithRetry(LinearBackoff(10*time.Millisecond)))
		if err != nil {
			t.Error(err)
		}
		got <- w
	}()
	time.Sleep(50 * time.Millisecond) // the waiter polls: quorum waiters do not queue
	require.NoError(t, lk.Release(ctx))
	select {
	case w := <-got:
		if w.Fence() <= lk.Fence() {
			t.Fatalf("fence %d after %d", w.Fence(), lk.Fence())
		}
		w.Release(ctx)
	case <-time.After(5 * time.Second):
		t.Fatal("the polling waiter did not get the lock")
	}
	require.NoError(t, NewQuorumLocker(nil).Close())
	if _, err := NewQuorumLocker(nil).TryObtain(ctx, "k"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("no clients: %v", err)
	}
	if _, err := NewQuorumLocker([]redis.UniversalClient{clients[0], nil}).TryObtain(ctx, "k"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("a nil client: %v", err)
	}
	if _, err := l.TryObtain(ctx, "k", WithReplicaAck(1, time.Second)); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("replica ack on a quorum: %v", err)
	}
}

// The lock outlives the loss of a minority of nodes, and is lost when a
// majority is gone; fences keep growing across different majorities.
// quorumTestTTL is the lease of TestQuorumNodeLoss.
const quorumTestTTL = time.Second

func TestQuorumNodeLoss(t *testing.T) {
	for _, n := range []int{3, 5} {
		t.Run(map[int]string{3: "3 nodes", 5: "5 nodes"}[n], func(t *testing.T) {
			procs, clients := nodes(t, n)
			ctx := context.Background()
			l := NewQuorumLocker(clients)
			defer l.Close()
			other := NewQuorumLocker(clients)
			defer other.Close()
			// Skewed counters: the first node is far ahead of the others.
			clients[0].Set(ctx, l.fenceKey("k"), 100, 0)
			// A 1s lease gives each node 100ms to answer (nodeLimit), which
			// a loaded machine running -race still meets; 300ms gave 30ms.
			lk, err := l.TryObtain(ctx, "k", WithTTL(quorumTestTTL))
			require.NoError(t, err)
			if lk.Fence() != 101 {
				t.Fatalf("fence %d, want the largest node's 101", lk.Fence())
			}
			minority := (n - 1) / 2
			for i := range minority {
				procs[i].Kill() // the first node, with the high counter, goes
			}
			select {
			case <-lk.Lost():
				t.Fatalf("lost with a majority up: %v", lk.Err())
			case <-time.After(quorumTestTTL): // three renewal rounds
			}
			if _, err := other.TryObtain(ctx, "k"); !errors.Is(err, ErrNotObtained) {
				t.Fatalf("another obtained a held quorum lock: %v", err)
			}
			if err := lk.Release(ctx); err != nil {
				t.Fatalf("release on a majority: %v", err)
			}
			lk2, err := other.TryObtain(ctx, "k", WithTTL(quorumTestTTL))
			require.NoError(t, err)
			if lk2.Fence() <= lk.Fence() {
				t.Fatalf("fence %d after %d on another majority", lk2.Fence(), lk.Fence())
			}
			procs[minority].Kill() // now a majority is gone
			select {
			case <-lk2.Lost():
				t.Logf("with %d of %d nodes down: %v", minority+1, n, lk2.Err())
			case <-time.After(2 * quorumTestTTL): // by the deadline: one lease after the last renewal
				t.Fatal("Lost not closed when a majority of nodes went down")
			}
			if _, err := other.TryObtain(ctx, "k2"); err == nil {
				t.Fatal("obtained a lock without a majority")
			}
		})
	}
}

func TestQuorumMutualExclusion(t *testing.T) {
	_, clients := nodes(t, 3)
	ctx := context.Background()
	var mu sync.Mutex
	inside, total := 0, 0
	var wg sync.WaitGroup
	for range 3 {
		l := NewQuorumLocker(clients)
		defer l.Close()
		wg.Go(func() {
			for range 30 {
				octx, cancel := context.WithTimeout(ctx, 10*time.Second)
				lk, err := l.Obtain(octx, "k")
				cancel()
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				inside++
				if inside != 1 {
					t.Error("two holders at once")
				}
				mu.Unlock()
				time.Sleep(100 * time.Microsecond)
				mu.Lock()
				inside--
				total++
				mu.Unlock()
				lk.Release(ctx)
			}
		})
	}
	wg.Wait()
	if total != 90 {
		t.Fatalf("%d acquisitions", total)
	}
}

// replicatedClients returns clients of a master and of its one replica,
// started for the test.
func replicatedClients(t *testing.T) (master, replica *redis.Client) {
	m, r := redistest.OwnReplicated(t)
	master = redis.NewClient(&redis.Options{Addr: m.Addr})
	t.Cleanup(func() { master.Close() })
	replica = redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { replica.Close() })
	return master, replica
}

// WithReplicaAck waits for replicas, and gives the lease back when too few
// acknowledge.
func TestReplicaAck(t *testing.T) {
	c, rc := replicatedClients(t)
	ctx := context.Background()
	l := NewLocker(c)
	defer l.Close()
	lk, err := l.TryObtain(ctx, "k", WithReplicaAck(1, time.Second))
	require.NoError(t, err)
	if rc.Get(ctx, l.lockKey("k")).Val() != lk.Token() {
		t.Fatal("the replica lacks an acknowledged lease")
	}
	lk.Release(ctx)
	start := time.Now()
	_, err = l.TryObtain(ctx, "k", WithReplicaAck(2, 100*time.Millisecond))
	if !errors.Is(err, ErrNotObtained) {
		t.Fatalf("two replicas asked of one: %v", err)
	}
	t.Logf("too few replicas: %v after %v", err, time.Since(start))
	if lk, err := l.TryObtain(ctx, "k"); err != nil {
		t.Fatalf("a failed replica-acked acquisition kept the lease: %v", err)
	} else {
		lk.Release(ctx)
	}
	for _, bad := range []LockOption{WithReplicaAck(0, time.Second), WithReplicaAck(1, 0)} {
		if _, err := l.TryObtain(ctx, "k", bad); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("bad replica ack: %v", err)
		}
	}
}

// One node must not count twice towards a majority: the same client twice,
// or two clients on the same address and DB, are refused, and nothing is
// written.
func TestQuorumRefusesTheSameNodeTwice(t *testing.T) {
	mr, a := newMini(t)
	_, b := newMini(t)
	twin := redis.NewClient(&redis.Options{Addr: a.Options().Addr})
	defer twin.Close()
	otherDB := redis.NewClient(&redis.Options{Addr: a.Options().Addr, DB: 1})
	defer otherDB.Close()
	ctx := context.Background()
	for name, clients := range map[string][]redis.UniversalClient{
		"same client":         {a, b, a},
		"same address and DB": {a, b, twin},
	} {
		l := NewQuorumLocker(clients)
		_, err := l.TryObtain(ctx, "k")
		l.Close()
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: TryObtain: %v, want ErrInvalidArgument", name, err)
		}
	}
	if keys := mr.Keys(); len(keys) != 0 {
		t.Errorf("a refused locker wrote %v", keys)
	}
	l := NewQuorumLocker([]redis.UniversalClient{a, b, otherDB})
	defer l.Close()
	lk, err := l.TryObtain(ctx, "k")
	if err != nil {
		t.Fatalf("another DB on the same server is another node: %v", err)
	}
	lk.Release(ctx)
}

// Sentinel clients all report the same Addr; clients for distinct masters
// are distinct nodes.
func TestQuorumAcceptsDistinctSentinelMasters(t *testing.T) {
	var cs []redis.UniversalClient
	for _, m := range []string{"a", "b", "c"} {
		c := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: m, SentinelAddrs: []string{"127.0.0.1:1"}})
		defer c.Close()
		cs = append(cs, c)
	}
	l := NewQuorumLocker(cs)
	defer l.Close()
	if l.err != nil {
		t.Fatalf("three Sentinel masters refused: %v", l.err)
	}
}

// dropAfterWaitConn, once armed, loses the reply of the first request that
// contains WAIT: the server runs it, the client sees EOF (a reset link).
type dropAfterWaitConn struct {
	net.Conn
	armed *atomic.Bool
	drop  atomic.Bool
}

func (c *dropAfterWaitConn) Write(b []byte) (int, error) {
	if bytes.Contains(b, []byte("WAIT")) && c.armed.CompareAndSwap(true, false) {
		c.drop.Store(true)
	}
	return c.Conn.Write(b)
}

func (c *dropAfterWaitConn) Read(b []byte) (int, error) {
	if c.drop.Load() {
		time.Sleep(50 * time.Millisecond) // the server has run the script by now
		c.Conn.Close()
		return 0, io.EOF
	}
	return c.Conn.Read(b)
}

// WithReplicaAck when go-redis resends the acquire pipeline on a new
// connection after a lost reply: the resent acquire finds our token and
// still writes (it resets the TTL), so WAIT on the new connection waits for
// a write after the first SET, on every server version, and a lock whose
// lease no replica has is never returned.
func TestReplicaAckHoldsWhenAcquireIsResent(t *testing.T) {
	master := redistest.Own(t, "--repl-diskless-sync-delay", "0")
	proxy := redistest.NewFaultProxy(t, master.Addr) // the replication link
	_, pport, _ := net.SplitHostPort(proxy.Addr())
	replica := redistest.Own(t, "--replicaof", "127.0.0.1", pport)
	ctx := context.Background()
	mc := redis.NewClient(&redis.Options{Addr: master.Addr})
	defer mc.Close()
	rc := redis.NewClient(&redis.Options{Addr: replica.Addr})
	defer rc.Close()
	redistest.Eventually(t, 10*time.Second, "replica in sync", func() bool {
		return strings.Contains(rc.Info(ctx, "replication").Val(), "master_link_status:up") &&
			strings.Contains(mc.Info(ctx, "replication").Val(), "state=online")
	})
	if err := redistest.Replicated(ctx, mc, "probe"); err != nil { // replica's ack is up to date
		t.Fatal(err)
	}
	require.NoError(t, acquireScript.Load(ctx, mc).Err())
	proxy.Pause() // the replica stops receiving (and acking) the stream

	// Control: with the link paused, a replica-acked acquisition fails.
	l0 := NewLocker(mc)
	defer l0.Close()
	_, err := l0.TryObtain(ctx, "control", WithReplicaAck(1, 300*time.Millisecond))
	t.Logf("control (no lost reply): %v", err)
	if !errors.Is(err, ErrNotObtained) {
		t.Fatalf("control: %v, want ErrNotObtained", err)
	}

	// Same, but the reply of the first send is lost and go-redis resends.
	var armed atomic.Bool
	c := redis.NewClient(&redis.Options{Addr: master.Addr, Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		cn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &dropAfterWaitConn{Conn: cn, armed: &armed}, nil
	}})
	defer c.Close()
	l := NewLocker(c)
	defer l.Close()
	armed.Store(true)
	start := time.Now()
	lk, err := l.TryObtain(ctx, "k", WithReplicaAck(1, 300*time.Millisecond))
	t.Logf("with a lost reply: lock=%v err=%v after %v (drop armed still: %v)", lk != nil, err, time.Since(start), armed.Load())
	if armed.Load() {
		t.Fatal("no reply was dropped: the test proves nothing")
	}
	if err == nil {
		defer lk.Release(ctx)
		onReplica, rerr := rc.Get(ctx, lk.rkey).Result()
		t.Logf("replica's copy of %s: %q (%v)", lk.rkey, onReplica, rerr)
		if onReplica != lk.Token() {
			t.Errorf("WithReplicaAck(1) returned a lock (fence %d) that no replica has: WAIT on the resend's fresh connection counted nothing", lk.Fence())
		}
	} else if !errors.Is(err, ErrNotObtained) {
		t.Errorf("with the replica cut off: %v, want ErrNotObtained", err)
	}
}
