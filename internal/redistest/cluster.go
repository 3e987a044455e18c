package redistest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// ClusterNodes is how many nodes a Cluster has: 3 masters, 3 replicas.
const ClusterNodes = 6

// Cluster is a Redis Cluster of 3 masters and 3 replicas on loopback, built
// natively (the layout scripts/cluster.sh builds with redis-cli).
type Cluster struct {
	Nodes []*Server // 0-2 start as masters, 3+i as the replica of i
	ids   []string  // cluster node ids, as Nodes
	f     *fleet
}

// NewCluster starts the servers, joins them into a cluster and returns once
// every node agrees on the slot map and every replica is in sync (see
// WaitHealthy). Without redis-server the error wraps ErrNoBinary.
func NewCluster() (*Cluster, error) { return deploy("cluster", &Cluster{}) }

// setUp starts the nodes on f and forms the cluster.
func (c *Cluster) setUp(f *fleet) error {
	c.f = f
	for i := range ClusterNodes {
		name := "node" + strconv.Itoa(i)
		conf := filepath.Join(f.dir, name+".conf")
		s, err := f.start(name, func(port int) ([]string, error) {
			bus, err := FreePort()
			if err != nil {
				return nil, err
			}
			_ = os.Remove(conf) // from an attempt on a port that was taken
			return Args(port, f.dir, name,
				"--cluster-enabled", "yes", "--cluster-port", strconv.Itoa(bus),
				"--cluster-config-file", conf, "--cluster-node-timeout", "2000",
				"--repl-diskless-sync-delay", "0",
				// A synced replica with offset 0 is left out of CLUSTER
				// SLOTS until the master's next ping (every 10s by default).
				"--repl-ping-replica-period", "1"), nil
		})
		if err != nil {
			return err
		}
		c.Nodes = append(c.Nodes, s)
	}
	if err := c.form(); err != nil {
		return fmt.Errorf("forming the cluster in %s: %w", f.dir, err)
	}
	return nil
}

// NewClusterT starts a Cluster for test t alone, stopped when t ends;
// without redis-server it follows Need.
func NewClusterT(t testing.TB) *Cluster {
	t.Helper()
	return ownT(t, "Redis Cluster", NewCluster)
}

// form assigns slots, introduces the nodes and attaches the replicas, as
// redis-cli --cluster create does, then waits until the cluster is whole.
func (c *Cluster) form() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs := c.nodeClients()
	defer closeAll(cs)
	for i, nc := range cs {
		// Distinct epochs up front, so no collision has to be resolved.
		if err := nc.Do(ctx, "CLUSTER", "SET-CONFIG-EPOCH", i+1).Err(); err != nil {
			return err
		}
		id, err := nc.ClusterMyID(ctx).Result()
		if err != nil {
			return err
		}
		c.ids = append(c.ids, id)
	}
	const masters = ClusterNodes / 2
	for i := range masters {
		lo, hi := i*16384/masters, (i+1)*16384/masters-1
		if err := cs[i].ClusterAddSlotsRange(ctx, lo, hi).Err(); err != nil {
			return err
		}
	}
	bus0, err := busPort(ctx, cs[0])
	if err != nil {
		return err
	}
	for _, nc := range cs[1:] {
		if err := nc.Do(ctx, "CLUSTER", "MEET", "127.0.0.1", c.Nodes[0].Port, bus0).Err(); err != nil {
			return err
		}
	}
	if err := Poll(15*time.Second, func() error {
		for i, nc := range cs {
			nodes, err := nc.ClusterNodes(ctx).Result()
			if err != nil {
				return err
			}
			if n := strings.Count(strings.TrimSpace(nodes), "\n") + 1; n != ClusterNodes || strings.Contains(nodes, "handshake") {
				return fmt.Errorf("node %d knows %d nodes:\n%s", i, n, nodes)
			}
		}
		return nil
	}); err != nil {
		return err
	}
	for r := masters; r < ClusterNodes; r++ {
		if err := Poll(10*time.Second, func() error {
			return cs[r].ClusterReplicate(ctx, c.ids[r-masters]).Err()
		}); err != nil {
			return err
		}
	}
	return c.WaitHealthy(20*time.Second, ClusterNodes)
}

// nodeClients returns a client on every node, in node order.
func (c *Cluster) nodeClients() []*redis.Client {
	var cs []*redis.Client
	for _, s := range c.Nodes {
		cs = append(cs, redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1}))
	}
	return cs
}

func closeAll(cs []*redis.Client) {
	for _, c := range cs {
		c.Close()
	}
}

func busPort(ctx context.Context, c *redis.Client) (int, error) {
	v, err := c.ConfigGet(ctx, "cluster-port").Result()
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(v["cluster-port"])
}

// WaitHealthy returns nil once, within timeout, live nodes are running,
// every one of them says cluster_state:ok, all report the same CLUSTER
// SLOTS, every replica's link to its master is up, and (with every node
// live) each slot range has one replica.
func (c *Cluster) WaitHealthy(timeout time.Duration, live int) error {
	ctx := context.Background()
	cs := c.nodeClients()
	defer closeAll(cs)
	return Poll(timeout, func() error {
		var first string
		var firstNode int
		seen := 0
		for i, nc := range cs {
			if !c.Nodes[i].Alive() {
				continue
			}
			seen++
			if st, err := ClusterInfoField(ctx, nc, "cluster_state"); err != nil || st != "ok" {
				return fmt.Errorf("node %d: cluster_state %q %v", i, st, err)
			}
			slots, err := nc.ClusterSlots(ctx).Result()
			if err != nil {
				return err
			}
			s := RenderSlots(slots)
			if first == "" {
				first, firstNode = s, i
			} else if s != first {
				return fmt.Errorf("nodes %d and %d disagree on CLUSTER SLOTS:\n%s\n%s", firstNode, i, first, s)
			}
			role, err := InfoField(ctx, nc, "replication", "role")
			if err != nil {
				return err
			}
			if role == "slave" {
				if st, err := InfoField(ctx, nc, "replication", "master_link_status"); err != nil || st != "up" {
					return fmt.Errorf("node %d: master link %q %v", i, st, err)
				}
			}
		}
		if seen != live {
			return fmt.Errorf("%d live nodes, want %d", seen, live)
		}
		if want := live / 2; strings.Count(first, "replicas[1]") != want && live == ClusterNodes {
			return fmt.Errorf("want %d ranges with one replica each:\n%s", want, first)
		}
		return nil
	})
}

// ClusterInfoField returns one field of CLUSTER INFO from the node c is on.
func ClusterInfoField(ctx context.Context, c *redis.Client, field string) (string, error) {
	info, err := c.ClusterInfo(ctx).Result()
	if err != nil {
		return "", err
	}
	return lineField(info, field, "CLUSTER INFO")
}

// RenderSlots writes CLUSTER SLOTS in a canonical form, one line a slot
// range, for comparison and for messages.
func RenderSlots(slots []redis.ClusterSlot) string {
	var lines []string
	for _, s := range slots {
		var reps []string
		for _, n := range s.Nodes[1:] {
			reps = append(reps, n.Addr)
		}
		slices.Sort(reps)
		lines = append(lines, fmt.Sprintf("%d-%d master %s replicas[%d] %v", s.Start, s.End, s.Nodes[0].Addr, len(reps), reps))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// Addrs lists every node's address, in node order.
func (c *Cluster) Addrs() []string {
	var a []string
	for _, s := range c.Nodes {
		a = append(a, s.Addr)
	}
	return a
}

// Client returns a new ClusterClient on the cluster, closed when t ends;
// tune, if not nil, adjusts its options first.
func (c *Cluster) Client(t testing.TB, tune func(*redis.ClusterOptions)) *redis.ClusterClient {
	opt := &redis.ClusterOptions{Addrs: c.Addrs()}
	if tune != nil {
		tune(opt)
	}
	cc := redis.NewClusterClient(opt)
	t.Cleanup(func() { cc.Close() })
	return cc
}

// Node returns the server at addr, or nil if none of the nodes is there.
func (c *Cluster) Node(addr string) *Server {
	for _, s := range c.Nodes {
		if s.Addr == addr {
			return s
		}
	}
	return nil
}

// Stop kills every node and removes their files.
func (c *Cluster) Stop() { c.f.stop() }

// MasterOf returns the address of the master that serves key's slot, as
// cc's slot map says; an error fails the test.
func MasterOf(t testing.TB, cc *redis.ClusterClient, key string) string {
	t.Helper()
	c, err := cc.MasterForKey(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return c.Options().Addr
}

// NamesPerMaster picks, among gen(0), gen(1), ... (10,000 at most, or the
// test fails), n names per master of a 3-master cluster, by master address.
func NamesPerMaster(t testing.TB, cc *redis.ClusterClient, n int, gen func(i int) string) map[string][]string {
	t.Helper()
	by := map[string][]string{}
	for i, full := 0, 0; full < 3; i++ {
		if i > 10_000 {
			t.Fatalf("no %d names for every master among 10000: %v", n, by)
		}
		name := gen(i)
		m := MasterOf(t, cc, name)
		if len(by[m]) < n {
			by[m] = append(by[m], name)
			if len(by[m]) == n {
				full++
			}
		}
	}
	return by
}
