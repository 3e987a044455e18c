package redlease

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

var (
	clusterOnce    sync.Once
	cluster        *redistest.Cluster
	clusterErr     error
	clusterStartup time.Duration
)

// startCluster returns a new client on the tests' shared Redis Cluster,
// which is started on first use and stopped by TestMain. Without
// redis-server the test is skipped, except under CI=true, where it fails.
// Tests that break the cluster must use redistest.NewClusterT instead.
func startCluster(t testing.TB) *redis.ClusterClient {
	t.Helper()
	clusterOnce.Do(func() {
		start := time.Now()
		cluster, clusterErr = redistest.NewCluster()
		if clusterErr == nil {
			clusterStartup = time.Since(start)
		}
	})
	redistest.Need(t, "Redis Cluster", clusterErr)
	return cluster.Client(t, nil)
}

func stopCluster() {
	if cluster != nil {
		cluster.Stop()
	}
}

// keys live where CLUSTER SLOTS says (no MOVED, no CROSSSLOT).
func TestClusterLocks(t *testing.T) {
	cc := startCluster(t)
	cc2 := cluster.Client(t, nil)
	ctx := context.Background()
	var keys []string
	for i := range 200 {
		keys = append(keys, "key-"+strconv.Itoa(i))
	}
	start := time.Now()
	lockSuite(t, cc, cc2, keys)
	t.Logf("lock suite on %d keys in %v", len(keys), time.Since(start).Round(time.Millisecond))
	keysOf := NewLocker(cc, WithPrefix(uniq(t)))
	defer keysOf.Close()
	perMaster := map[string]int{}
	for _, k := range keys {
		addr := redistest.MasterOf(t, cc, k)
		perMaster[addr]++
		// Straight to that node: a key elsewhere would answer MOVED.
		node := redis.NewClient(&redis.Options{Addr: addr})
		fence, err := node.Get(ctx, keysOf.fenceKey(k)).Int()
		node.Close()
		if err != nil || fence < lockSuiteFences {
			t.Fatalf("fence of %q on its master %s: %d %v", k, addr, fence, err)
		}
	}
	if len(perMaster) != 3 {
		t.Fatalf("keys on %d masters, want 3: %v", len(perMaster), perMaster)
	}
	for addr, n := range perMaster {
		if n < 20 {
			t.Fatalf("only %d keys on %s: %v", n, addr, perMaster)
		}
	}
	t.Logf("keys per master: %v", perMaster)
}

// Leases on every master, with a 300ms TTL, are renewed for well over a
// second, through a SCRIPT FLUSH on every node, and none is lost.
func TestClusterWatchdog(t *testing.T) {
	cc := startCluster(t)
	ctx := context.Background()
	byMaster := redistest.NamesPerMaster(t, cc, 10, func(i int) string { return "wd-" + strconv.Itoa(i) })
	l := NewLocker(cc, WithPrefix(uniq(t)))
	defer l.Close()
	before := map[string]map[string]int64{}
	nodes := map[string]*redis.Client{}
	for addr := range byMaster {
		nodes[addr] = redis.NewClient(&redis.Options{Addr: addr})
		defer nodes[addr].Close()
		before[addr] = commandStats(t, nodes[addr])
	}
	var locks []*Lock
	for _, names := range byMaster {
		for _, name := range names {
			lk, err := l.TryObtain(ctx, name, WithTTL(300*time.Millisecond))
			require.NoError(t, err)
			locks = append(locks, lk)
		}
	}
	time.Sleep(600 * time.Millisecond)
	if err := cc.ScriptFlush(ctx).Err(); err != nil { // renewals must reload the script
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	for _, lk := range locks {
		select {
		case <-lk.Lost():
			t.Fatalf("lease on %q lost: %v", lk.Key(), lk.Err())
		default:
		}
		if d, err := lk.TTL(ctx); err != nil || d <= 0 {
			t.Fatalf("TTL of %q: %v %v", lk.Key(), d, err)
		}
	}
	for addr, names := range byMaster {
		delta, _ := commandsSince(t, nodes[addr], before[addr])
		// One renewal every 100ms for 1.3s: about 13 per key.
		if delta["pexpire"] < int64(5*len(names)) {
			t.Fatalf("master %s renewed %d times for %d keys: %v", addr, delta["pexpire"], len(names), delta)
		}
		t.Logf("master %s: %d renewals of %d leases", addr, delta["pexpire"], len(names))
	}
	for _, lk := range locks {
		require.NoError(t, lk.Release(ctx))
	}
}

// handoffLockers returns two Lockers, each on a ClusterClient of its own,
// each keeping a waiter on a lock in the slot of "k" until the test ends,
// so that its shard subscription for grants of "k" stays up; it returns
// the master that serves them, the lock's own.
func handoffLockers(t *testing.T, cc *redis.ClusterClient) ([2]*Locker, string) {
	ctx := context.Background()
	lockers := pinnedLockers(t, [2]redis.UniversalClient{cluster.Client(t, nil), cluster.Client(t, nil)}, cc, uniq(t))
	master := redistest.MasterOf(t, cc, "k")
	node := redis.NewClient(&redis.Options{Addr: master})
	defer node.Close()
	for _, l := range lockers {
		channel := l.waits.channel("k")
		redistest.Eventually(t, 5*time.Second, "a shard subscription on "+master, func() bool {
			return node.PubSubShardNumSub(ctx, channel).Val()[channel] == 1
		})
	}
	return lockers, master
}

// A release hands the lock to a waiter of another Locker in about a round
// trip, far below the waiter's first check (250ms), whether hand-offs come
// 50ms apart or back to back: the grant is published on a shard channel
// of the lock's own slot, so it never crosses the cluster bus.
func TestClusterHandoff(t *testing.T) {
	cc := startCluster(t)
	ctx := context.Background()
	lockers, master := handoffLockers(t, cc)
	for _, gap := range []time.Duration{50 * time.Millisecond, 0} {
		lat, err := settledHandoffs(ctx, lockers, 50, 3*time.Millisecond, gap)
		require.NoError(t, err)
		p50 := quantileDur(lat, 0.5)
		t.Logf("hand-offs %v apart (lock and subscriptions on %s): p50 %v p99 %v", gap, master, p50, quantileDur(lat, 0.99))
		if p50 > 5*time.Millisecond {
			t.Errorf("hand-off p50 %v: the release did not reach the waiter", p50)
		}
	}
}

// handoffUnderLoad bounds TestClusterWakeupUnderLoad's p90: well under
// the tens of milliseconds a delayed ACK costs, and above what a machine
// busy with other test processes adds to a round trip.
const handoffUnderLoad = 20 * time.Millisecond

// Releases of other locks on the same master, about one a millisecond, do
// not delay grants: with notices on the cluster bus (before shard
// channels), a notice behind an unacknowledged one waited for the peer's
// delayed ACK, tens of milliseconds.
func TestClusterWakeupUnderLoad(t *testing.T) {
	cc := startCluster(t)
	ctx := context.Background()
	lockers, master := handoffLockers(t, cc)
	var others []string
	for i := 0; len(others) < 4; i++ {
		if name := "load-" + strconv.Itoa(i); redistest.MasterOf(t, cc, name) == master {
			others = append(others, name)
		}
	}
	busy := NewLocker(cluster.Client(t, nil), WithPrefix(uniq(t)))
	defer busy.Close()
	lctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; i < 100_000 && lctx.Err() == nil; i++ {
			if lk, err := busy.TryObtain(lctx, others[i%len(others)]); err == nil {
				_ = lk.Release(lctx)
			}
			time.Sleep(500 * time.Microsecond)
		}
	})
	lat, err := settledHandoffs(ctx, lockers, 50, 3*time.Millisecond, 0)
	stop()
	wg.Wait()
	require.NoError(t, err)
	p90 := quantileDur(lat, 0.9)
	t.Logf("lock and subscriptions on %s, under load: hand-off p50 %v p90 %v p99 %v", master, quantileDur(lat, 0.5), p90, quantileDur(lat, 0.99))
	if p90 > handoffUnderLoad {
		t.Fatalf("hand-off p90 %v under load: grants were delayed", p90)
	}
}

// Two Lockers on separate ClusterClients contend for one lock per master:
// never two holders at once, no lost update, fences grow in order.
func TestClusterMutualExclusion(t *testing.T) {
	cc := startCluster(t)
	ctx := context.Background()
	prefix := uniq(t)
	byMaster := redistest.NamesPerMaster(t, cc, 1, func(i int) string { return "mx-" + strconv.Itoa(i) })
	lockers := []*Locker{NewLocker(cc, WithPrefix(prefix)), NewLocker(cluster.Client(t, nil), WithPrefix(prefix))}
	for _, l := range lockers {
		defer l.Close()
	}
	const perLocker, rounds = 3, 10
	var wg sync.WaitGroup
	for _, names := range byMaster {
		key := names[0]
		counter := prefix + ":{" + key + "}:counter" // in the lock's slot
		var (
			mu        sync.Mutex
			inside    bool
			lastFence int64
		)
		for _, l := range lockers {
			for range perLocker {
				wg.Go(func() {
					for range rounds {
						octx, cancel := context.WithTimeout(ctx, 20*time.Second)
						lk, err := l.Obtain(octx, key, WithTTL(5*time.Second))
						cancel()
						if err != nil {
							t.Error(err)
							return
						}
						mu.Lock()
						if inside {
							t.Errorf("%s: two holders at once", key)
						}
						inside = true
						if lk.Fence() <= lastFence {
							t.Errorf("%s: fence %d after %d", key, lk.Fence(), lastFence)
						}
						lastFence = lk.Fence()
						mu.Unlock()
						n, _ := cc.Get(ctx, counter).Int()
						cc.Set(ctx, counter, n+1, 0)
						mu.Lock()
						inside = false
						mu.Unlock()
						if err := lk.Release(ctx); err != nil {
							t.Error(err)
						}
					}
				})
			}
		}
	}
	wg.Wait()
	for _, names := range byMaster {
		want := len(lockers) * perLocker * rounds
		if n, err := cc.Get(ctx, prefix+":{"+names[0]+"}:counter").Int(); n != want {
			t.Fatalf("%s: counter %d %v, want %d: updates were lost", names[0], n, err, want)
		}
	}
}

// Three queues whose keys live on three different masters go through every
// queue operation; no script touches keys of two slots.
func TestClusterQueue(t *testing.T) {
	cc := startCluster(t)
	ctx := context.Background()
	byMaster := redistest.NamesPerMaster(t, cc, 1, func(i int) string { return "q" + strconv.Itoa(i) })
	var names []string
	for _, addr := range sortedKeys(byMaster) {
		names = append(names, byMaster[addr][0])
	}
	start := time.Now()
	queueSuite(t, cc, names)
	t.Logf("queue suite on %v in %v", names, time.Since(start).Round(time.Millisecond))
	for addr, ns := range byMaster {
		node := redis.NewClient(&redis.Options{Addr: addr})
		defer node.Close()
		dead := uniq(t) + ":queue:{" + ns[0] + "}:deadletters"
		if n, err := node.ZCard(ctx, dead).Result(); err != nil || n != 1 {
			t.Fatalf("dead letters of %q on its master %s: %d %v", ns[0], addr, n, err)
		}
	}
}

// The rate of uncontended TryObtain+Release cycles on the cluster next to
// a single instance, from one goroutine and from eight.
func TestClusterCycleRate(t *testing.T) {
	cc := startCluster(t)
	single := realRedis(t)
	ctx := context.Background()
	rate := func(c redis.UniversalClient, workers int) float64 {
		l := NewLocker(c, WithPrefix(uniq(t)))
		defer l.Close()
		const d = 400 * time.Millisecond
		var wg sync.WaitGroup
		var mu sync.Mutex
		total := 0
		start := time.Now()
		for w := range workers {
			wg.Go(func() {
				n := 0
				for time.Since(start) < d {
					lk, err := l.TryObtain(ctx, "rate-"+strconv.Itoa(w))
					if err != nil {
						t.Error(err)
						return
					}
					if err := lk.Release(ctx); err != nil {
						t.Error(err)
						return
					}
					n++
				}
				mu.Lock()
				total += n
				mu.Unlock()
			})
		}
		wg.Wait()
		return float64(total) / time.Since(start).Seconds()
	}
	for _, workers := range []int{1, 8} {
		s, c := rate(single, workers), rate(cc, workers)
		if s == 0 || c == 0 {
			t.Fatalf("no cycles: single %.0f/s, cluster %.0f/s", s, c)
		}
		t.Logf("TryObtain+Release, %d goroutine(s): single instance %.0f/s, cluster %.0f/s (%.2fx)", workers, s, c, c/s)
	}
	t.Logf("cluster start-up took %v", clusterStartup.Round(time.Millisecond))
}

// A master holding locks and a queue is killed (SIGKILL) in a cluster of
// the test's own; its replica takes over. See runFailover for what is
// checked. Clients that follow the failover reload the slot map every
// 250ms; go-redis's default (ClusterStateReloadInterval, 60s) keeps
// sending to the dead node, which the third lock's holder shows.
func TestClusterFailover(t *testing.T) {
	t.Cleanup(redistest.NoLeaks(t, 5*time.Second)) // runs last
	tc := redistest.NewClusterT(t)
	ctx := context.Background()
	following := func() redis.UniversalClient {
		return tc.Client(t, func(o *redis.ClusterOptions) { o.ClusterStateReloadInterval = 250 * time.Millisecond })
	}
	cc := tc.Client(t, nil)
	prefix := uniq(t)
	// The master to kill holds "k" (and the pin, in its slot: see
	// pinnedLockers).
	keyMaster := redistest.MasterOf(t, cc, "k")
	byMaster := redistest.NamesPerMaster(t, cc, 5, func(i int) string { return "fo-" + strconv.Itoa(i) })
	names := byMaster[keyMaster] // lock and queue names on that master
	// Two Lockers subscribe for grants of "k" on that master, and wait on
	// the pin throughout; afterwards, hand-offs of "k" between them show
	// whether their subscriptions came back on the new master.
	subscribed := pinnedLockers(t, [2]redis.UniversalClient{following(), following()}, cc, prefix+"-sub")
	var replica string
	for _, s := range cc.ClusterSlots(ctx).Val() {
		if s.Nodes[0].Addr == keyMaster {
			replica = s.Nodes[1].Addr
		}
	}
	victim := tc.Node(keyMaster)
	survivor := tc.Node(replica).Client(t)
	res := runFailover(t, failoverCase{
		client: following,
		stale:  func() redis.UniversalClient { return tc.Client(t, nil) },
		keys:   [3]string{names[0], names[1], names[2]},
		queues: [2]string{names[3], names[4]},
		replicate: func(ctx context.Context) error {
			node := victim.Client(t)
			return redistest.Replicated(ctx, node, prefix+":queue:{"+names[3]+"}:probe")
		},
		fail: victim.Kill,
		switched: func(ctx context.Context, c redis.UniversalClient) error {
			// Only the slots' owner accepts the write.
			return c.Set(ctx, prefix+":queue:{"+names[3]+"}:alive", "1", time.Minute).Err()
		},
		promoted: func() error {
			for _, s := range survivor.ClusterSlots(ctx).Val() {
				if s.Nodes[0].Addr == replica {
					st, err := redistest.ClusterInfoField(ctx, survivor, "cluster_state")
					if err != nil || st != "ok" {
						return fmt.Errorf("cluster_state %q %v", st, err)
					}
					return nil
				}
			}
			return fmt.Errorf("%s not yet a master", replica)
		},
	})
	if err := tc.WaitHealthy(10*time.Second, redistest.ClusterNodes-1); err != nil {
		t.Fatalf("cluster after the failover: %v", err)
	}
	for _, l := range subscribed {
		channel := l.waits.channel("k")
		redistest.Eventually(t, 5*time.Second, "subscriptions back on the new master", func() bool {
			return survivor.PubSubShardNumSub(ctx, channel).Val()[channel] == 1
		})
	}
	lat, err := settledHandoffs(ctx, subscribed, 20, 3*time.Millisecond, 50*time.Millisecond)
	require.NoError(t, err)
	p50 := quantileDur(lat, 0.5)
	t.Logf("hand-offs between Lockers whose subscription's master was killed: p50 %v p99 %v", p50, quantileDur(lat, 0.99))
	if p50 > 5*time.Millisecond {
		t.Errorf("hand-off p50 %v after the subscription's master failed: releases no longer wake waiters", p50)
	}
	t.Logf("cluster failover (node timeout 2s): killed %s, replica %s promoted after %v, clients writing after %v",
		keyMaster, replica, res.promoted.Round(time.Millisecond), res.recovered.Round(time.Millisecond))
}

// scripts/cluster.sh, for people, builds the same cluster with redis-cli
// and stops it again.
func TestClusterScript(t *testing.T) {
	_, err := redistest.LookPath("bash")
	if err == nil {
		_, err = redistest.LookPath("redis-cli")
	}
	if err == nil {
		_, err = redistest.LookPath("redis-server")
	}
	redistest.Need(t, "scripts/cluster.sh", err)
	ctx := context.Background()
	// The script puts each node's bus on its port + 10000: both free.
	var ports []string
	for i := 0; len(ports) < redistest.ClusterNodes; i++ {
		if i > 500 {
			t.Fatal("no 6 free port pairs")
		}
		p, err := redistest.FreePort()
		require.NoError(t, err)
		bus, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+10000))
		if err != nil || slices.Contains(ports, strconv.Itoa(p)) {
			continue
		}
		bus.Close()
		ports = append(ports, strconv.Itoa(p))
	}
	dir := filepath.Join(t.TempDir(), "cluster")
	script := func(verb string) (string, error) {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		cmd := exec.CommandContext(cctx, "bash", "scripts/cluster.sh", verb, dir)
		cmd.Env = append(os.Environ(), "PORTS="+strings.Join(ports, " "))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	stopped := false
	t.Cleanup(func() { // the servers are daemons: stop them whatever happens
		if !stopped {
			if out, err := script("stop"); err != nil {
				t.Errorf("cluster.sh stop: %v\n%s", err, out)
			}
		}
	})
	start := time.Now()
	if out, err := script("start"); err != nil {
		t.Fatalf("cluster.sh start: %v\n%s", err, out)
	}
	t.Logf("cluster.sh start took %v", time.Since(start).Round(time.Millisecond))
	var addrs []string
	for _, p := range ports {
		addrs = append(addrs, "127.0.0.1:"+p)
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	defer cc.Close()
	slots, err := cc.ClusterSlots(ctx).Result()
	if err != nil || len(slots) != 3 || strings.Count(redistest.RenderSlots(slots), "replicas[1]") != 3 {
		t.Fatalf("CLUSTER SLOTS after cluster.sh start: %v\n%s", err, redistest.RenderSlots(slots))
	}
	for _, k := range []string{"a", "b", "c", "d"} {
		require.NoError(t, cc.Set(ctx, k, k, 0).Err())
	}
	cc.Close()
	stopped = true
	if out, err := script("stop"); err != nil {
		t.Fatalf("cluster.sh stop: %v\n%s", err, out)
	}
	for _, a := range addrs {
		if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
			c.Close()
			t.Fatalf("%s still answers after cluster.sh stop", a)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("cluster.sh stop left %s: %v", dir, err)
	}
}

// A sharded queue spreads over the cluster's masters; this measures what
// that buys on this machine (2 cores: the masters share them), 1 shard
// against 3, interleaved.
func TestClusterShardedQueueThroughput(t *testing.T) {
	cc := startCluster(t)
	const n = 5000
	rates := map[int][]float64{}
	for round := range 2 {
		for _, shards := range []int{1, 3} {
			ctx, cancel := context.WithCancel(context.Background())
			q := NewQueue(cc, "tp", WithPrefix(uniq(t)+"-"+strconv.Itoa(round)+"-"+strconv.Itoa(shards)), WithShards(shards))
			payloads := make([][]byte, n)
			for i := range payloads {
				payloads[i] = []byte("x")
			}
			start := time.Now()
			if _, err := q.EnqueueBatch(ctx, payloads); err != nil {
				t.Fatal(err)
			}
			var done atomic.Int64
			err := q.Consume(ctx, func(context.Context, *Message) error {
				if done.Add(1) == n {
					cancel()
				}
				return nil
			}, WithConcurrency(16))
			rate := n / time.Since(start).Seconds()
			cancel()
			if !errors.Is(err, context.Canceled) || done.Load() < n {
				t.Fatalf("%d shards: %v after %d messages", shards, err, done.Load())
			}
			if st, _ := q.Stats(context.Background()); st.depth() != (Stats{}) {
				t.Fatalf("%d shards: stats %+v", shards, st)
			}
			rates[shards] = append(rates[shards], rate)
		}
	}
	t.Logf("sharded queue on 3 masters, %d no-op messages, batch enqueue + Consume(16): 1 shard %.0f, %.0f msgs/s; 3 shards %.0f, %.0f msgs/s",
		n, rates[1][0], rates[1][1], rates[3][0], rates[3][1])
}

// braceNames are lock names whose braces would break a key built as
// prefix:{name}: an empty or cut hash tag puts the lease and its fence
// counter in different slots.
var braceNames = []string{"{", "}", "{}", "}{", "}x", "a}b", "{x}", "}{x}", "x"}

// Every lock name works, braces included: each lease shares its slot with
// its fence counter, and acquire, release and fences work on miniredis, on
// Redis and on a (one-node) Redis Cluster, which refuses a script whose
// keys span slots.
func TestEveryLockNameWorks(t *testing.T) {
	probe := NewLocker(nil) // only its key layout is used
	probe.Close()
	for _, name := range braceNames {
		k, f := probe.lockKey(name), probe.fenceKey(name)
		if slot(k) != slot(f) || slot(k) != nameSlot(name) {
			t.Errorf("lock %q: key %q in slot %d, fence counter %q in slot %d, name in slot %d", name, k, slot(k), f, slot(f), nameSlot(name))
		}
	}
	names := func(t *testing.T, c redis.UniversalClient) {
		ctx := context.Background()
		l := NewLocker(c, WithPrefix(uniq(t)))
		defer l.Close()
		for _, name := range braceNames {
			lk, err := l.TryObtain(ctx, name)
			if err != nil {
				t.Errorf("TryObtain(%q): %v", name, err)
				continue
			}
			if err := lk.Release(ctx); err != nil {
				t.Errorf("Release(%q): %v", name, err)
			}
			again, err := l.Obtain(ctx, name)
			if err != nil {
				t.Errorf("Obtain(%q): %v", name, err)
				continue
			}
			if again.Fence() <= lk.Fence() {
				t.Errorf("lock %q: fence %d after %d", name, again.Fence(), lk.Fence())
			}
			if err := again.Release(ctx); err != nil {
				t.Errorf("Release(%q): %v", name, err)
			}
		}
	}
	backends(t, func(t *testing.T, c *redis.Client) { names(t, c) })
	t.Run("cluster", func(t *testing.T) {
		p := redistest.Own(t, "--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(t.TempDir(), "nodes.conf"))
		ctx := context.Background()
		nc := redis.NewClient(&redis.Options{Addr: p.Addr})
		defer nc.Close()
		require.NoError(t, nc.ClusterAddSlotsRange(ctx, 0, clusterSlots-1).Err())
		redistest.Eventually(t, 10*time.Second, "cluster ok", func() bool {
			return strings.Contains(nc.ClusterInfo(ctx).Val(), "cluster_state:ok")
		})
		cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{p.Addr}})
		defer cc.Close()
		names(t, cc)
		// Redis agrees on where each key lives.
		l := NewLocker(cc)
		defer l.Close()
		for _, name := range braceNames {
			if got, err := nc.ClusterKeySlot(ctx, l.lockKey(name)).Result(); err != nil || got != int64(nameSlot(name)) {
				t.Errorf("CLUSTER KEYSLOT of lock %q: %d %v, want %d", name, got, err, nameSlot(name))
			}
		}
	})
}

// A pipeline of script calls across masters where only one master has the
// script: after NOSCRIPT, runAll sends again only the refused calls, so a
// script that is not idempotent still runs once per call.
func TestRunAllResendsOnlyRefusedCalls(t *testing.T) {
	cc := startCluster(t)
	ctx := context.Background()
	count := redis.NewScript(`return redis.call('INCR', KEYS[1])`)
	byMaster := redistest.NamesPerMaster(t, cc, 1, func(i int) string { return uniq(t) + "-{" + strconv.Itoa(i) + "}" })
	require.NoError(t, cc.ScriptFlush(ctx).Err())
	var calls []scriptCall
	for addr, names := range byMaster {
		calls = append(calls, scriptCall{keys: names})
		if len(calls) == 1 { // this master alone knows the script
			one := redis.NewClient(&redis.Options{Addr: addr})
			err := count.Load(ctx, one).Err()
			one.Close()
			require.NoError(t, err)
		}
	}
	for _, cmd := range runAll(ctx, cc, count, calls) {
		if n, err := cmd.Int64(); err != nil || n != 1 {
			t.Errorf("%v: %d, %v (want 1: each call ran once)", cmd.Args(), n, err)
		}
	}
}

// A graceful failover (CLUSTER FAILOVER on the replica) keeps the
// subscription's connection open: Redis sends SUNSUBSCRIBE instead of
// dropping it. The reader must subscribe anew on the new master.
func TestClusterGracefulFailoverKeepsGrantsHeard(t *testing.T) {
	tc := redistest.NewClusterT(t)
	ctx := context.Background()
	cc := tc.Client(t, func(o *redis.ClusterOptions) { o.ClusterStateReloadInterval = 250 * time.Millisecond })
	prefix := uniq(t)
	a := NewLocker(cc, WithPrefix(prefix))
	defer a.Close()
	b := NewLocker(tc.Client(t, func(o *redis.ClusterOptions) { o.ClusterStateReloadInterval = 250 * time.Millisecond }), WithPrefix(prefix))
	defer b.Close()
	held, err := a.TryObtain(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	keyMaster := redistest.MasterOf(t, cc, "k")
	var replica string
	for _, s := range cc.ClusterSlots(ctx).Val() {
		if s.Nodes[0].Addr == keyMaster {
			replica = s.Nodes[1].Addr
		}
	}
	oldm := redis.NewClient(&redis.Options{Addr: keyMaster})
	defer oldm.Close()
	newm := redis.NewClient(&redis.Options{Addr: replica})
	defer newm.Close()
	channel := b.waits.channel("k")
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	got := make(chan time.Time, 1)
	go func() {
		lk, err := b.Obtain(wctx, "k", WithRetry(LinearBackoff(5*time.Second)))
		if err == nil {
			got <- time.Now()
			_ = lk.Release(ctx)
		}
	}()
	redistest.Eventually(t, 5*time.Second, "subscribed on old master", func() bool {
		return oldm.PubSubShardNumSub(ctx, channel).Val()[channel] == 1
	})
	if err := newm.Do(ctx, "cluster", "failover").Err(); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "replica promoted", func() bool {
		for _, s := range newm.ClusterSlots(ctx).Val() {
			if s.Nodes[0].Addr == replica {
				return true
			}
		}
		return false
	})
	time.Sleep(1500 * time.Millisecond) // state reloads, reader had every chance
	t.Logf("after failover: old master numsub %v, new master numsub %v",
		oldm.PubSubShardNumSub(ctx, channel).Val()[channel], newm.PubSubShardNumSub(ctx, channel).Val()[channel])
	start := time.Now()
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-got:
		t.Logf("waiter got the lock %v after release", at.Sub(start))
		if at.Sub(start) > 500*time.Millisecond {
			t.Errorf("waiter's grant notice was not heard after a graceful failover (took %v)", at.Sub(start))
		}
	case <-time.After(15 * time.Second):
		t.Errorf("waiter never got the lock")
	}
}

// After SCRIPT FLUSH (or a failover to a replica that never loaded the
// script), a lock call refused with NOSCRIPT is sent again as EVAL to the
// key's own node: a node down elsewhere in the cluster does not fail it, as
// loading the script on every node would.
func TestClusterNoScriptWithANodeDown(t *testing.T) {
	tc := redistest.NewClusterT(t)
	ctx := context.Background()
	cc := tc.Client(t, nil)
	l := NewLocker(cc, WithPrefix(uniq(t)))
	defer l.Close()
	lk, err := l.TryObtain(ctx, "k") // warm state
	if err != nil {
		t.Fatal(err)
	}
	_ = lk.Release(ctx)
	keyMaster := redistest.MasterOf(t, cc, "k")
	var other string
	for _, s := range cc.ClusterSlots(ctx).Val() {
		if s.Nodes[0].Addr != keyMaster && len(s.Nodes) > 1 {
			other = s.Nodes[1].Addr // a replica of another shard
		}
	}
	tc.Node(other).Kill()
	m := tc.Node(keyMaster).Client(t)
	if err := m.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	lk, err = l.TryObtain(ctx, "k")
	if err != nil {
		t.Fatalf("TryObtain with replica %s (another shard) down after SCRIPT FLUSH on %s: %v", other, keyMaster, err)
	}
	_ = lk.Release(ctx)
}
