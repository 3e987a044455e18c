package redistest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelMaster is the name the sentinels of a Sentinel monitor their
// master by.
const SentinelMaster = "mymaster"

// Sentinel is a master, its replica and three sentinels on loopback; the
// sentinels fail over after 1s without the master, with a quorum of 2.
type Sentinel struct {
	Master, Replica *Server // as started; a failover swaps their roles
	Sentinels       []*Server
	f               *fleet
}

// NewSentinel starts the servers and returns once the replica is in sync
// and every sentinel knows the replica and the two other sentinels and
// has its quorum. Without redis-server the error wraps ErrNoBinary.
func NewSentinel() (*Sentinel, error) { return deploy("sentinel", &Sentinel{}) }

// setUp starts the master, the replica and the sentinels on f.
func (ts *Sentinel) setUp(f *fleet) (err error) {
	ts.f = f
	data := func(name string, extra ...string) func(int) ([]string, error) {
		return func(port int) ([]string, error) {
			return Args(port, f.dir, name, append([]string{"--repl-diskless-sync-delay", "0"}, extra...)...), nil
		}
	}
	if ts.Master, err = f.start("master", data("master")); err != nil {
		return err
	}
	if ts.Replica, err = f.start("replica", data("replica", "--replicaof", "127.0.0.1", strconv.Itoa(ts.Master.Port))); err != nil {
		return err
	}
	if err := waitLinkUp(ts.Replica, 10*time.Second); err != nil {
		return err
	}
	for i := range 3 {
		s, err := f.start("sentinel"+strconv.Itoa(i), ts.sentinelArgs(f.dir, "sentinel"+strconv.Itoa(i)))
		if err != nil {
			return err
		}
		ts.Sentinels = append(ts.Sentinels, s)
	}
	return ts.waitSentinelsAgree()
}

// NewSentinelT starts a Sentinel for test t alone, stopped when t ends;
// without redis-server it follows Need.
func NewSentinelT(t testing.TB) *Sentinel {
	t.Helper()
	return ownT(t, "Redis Sentinel", NewSentinel)
}

// sentinelArgs writes a sentinel's configuration file (Sentinel rewrites
// it: one each) and returns its arguments.
func (ts *Sentinel) sentinelArgs(dir, name string) func(port int) ([]string, error) {
	conf := filepath.Join(dir, name+".conf")
	return func(port int) ([]string, error) {
		c := fmt.Sprintf("sentinel monitor %[1]s 127.0.0.1 %[2]d 2\n"+
			"sentinel down-after-milliseconds %[1]s 1000\n"+
			"sentinel failover-timeout %[1]s 5000\n", SentinelMaster, ts.Master.Port)
		if err := os.WriteFile(conf, []byte(c), 0o644); err != nil {
			return nil, err
		}
		return []string{conf, "--sentinel", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir}, nil
	}
}

// waitSentinelsAgree waits until every sentinel sees the replica and the
// other sentinels (they find each other by hello messages, every 2s).
func (ts *Sentinel) waitSentinelsAgree() error {
	ctx := context.Background()
	for _, s := range ts.Sentinels {
		sc := redis.NewSentinelClient(&redis.Options{Addr: s.Addr})
		err := Poll(15*time.Second, func() error {
			reps, err := sc.Replicas(ctx, SentinelMaster).Result()
			if err != nil || len(reps) != 1 || reps[0]["flags"] != "slave" {
				return fmt.Errorf("%s sees replicas %v %v", s.Name, reps, err)
			}
			peers, err := sc.Sentinels(ctx, SentinelMaster).Result()
			if err != nil || len(peers) != 2 {
				return fmt.Errorf("%s sees %d other sentinels %v", s.Name, len(peers), err)
			}
			return sc.CkQuorum(ctx, SentinelMaster).Err()
		})
		sc.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// SentinelAddrs lists the sentinels' addresses.
func (ts *Sentinel) SentinelAddrs() []string {
	var a []string
	for _, s := range ts.Sentinels {
		a = append(a, s.Addr)
	}
	return a
}

// Client returns a new client that finds the master through the
// sentinels, closed when t ends.
func (ts *Sentinel) Client(t testing.TB) *redis.Client {
	c := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: SentinelMaster, SentinelAddrs: ts.SentinelAddrs()})
	t.Cleanup(func() { c.Close() })
	return c
}

// OnReplica returns nil when c (a *redis.Client) sends its commands to
// the server started as the replica (the master after a failover).
func (ts *Sentinel) OnReplica(ctx context.Context, c redis.UniversalClient) error {
	port, err := InfoField(ctx, c.(*redis.Client), "server", "tcp_port")
	if err != nil || port != strconv.Itoa(ts.Replica.Port) {
		return fmt.Errorf("a client still on port %s %v", port, err)
	}
	return nil
}

// WaitSwitched returns nil once, within 15s, every client sends its
// commands to the server started as the replica.
func (ts *Sentinel) WaitSwitched(ctx context.Context, clients ...redis.UniversalClient) error {
	return Poll(15*time.Second, func() error {
		for _, c := range clients {
			if err := ts.OnReplica(ctx, c); err != nil {
				return err
			}
		}
		return nil
	})
}

// Stop kills every server and removes their files.
func (ts *Sentinel) Stop() { ts.f.stop() }

// Role returns the first element of ROLE from the server c is on:
// "master" or "slave", or "" if ROLE fails.
func Role(ctx context.Context, c *redis.Client) string {
	r, err := c.Do(ctx, "ROLE").Slice()
	if err != nil || len(r) == 0 {
		return ""
	}
	s, _ := r[0].(string)
	return s
}
