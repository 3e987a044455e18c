package main

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease"
	"github.com/redlease/redlease/internal/redistest"
)

// parseConn parses args as the program does and builds the client.
func parseConn(t *testing.T, env map[string]string, args ...string) (redis.UniversalClient, error) {
	t.Helper()
	var opts options
	global := newGlobalFlags(&opts)
	require.NoError(t, global.Parse(args))
	require.NoError(t, mergeFlags(global, global, &opts, false))
	c, _, err := newClient(&opts.conn, func(k string) string { return env[k] })
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

func TestConnectionFlags(t *testing.T) {
	single := func(t *testing.T, c redis.UniversalClient) *redis.Options {
		cl, ok := c.(*redis.Client)
		require.True(t, ok, "%T", c)
		return cl.Options()
	}
	c, err := parseConn(t, nil)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:6379", single(t, c).Addr)

	c, err = parseConn(t, nil, "-h", "db.example", "-p", "7000", "-a", "pw", "--user", "ann", "-n", "3")
	require.NoError(t, err)
	o := single(t, c)
	require.Equal(t, "db.example:7000", o.Addr)
	require.Equal(t, "pw", o.Password)
	require.Equal(t, "ann", o.Username)
	require.Equal(t, 3, o.DB)

	c, err = parseConn(t, nil, "-u", "rediss://bob:secret@cache:6380/2")
	require.NoError(t, err)
	o = single(t, c)
	require.Equal(t, "cache:6380", o.Addr)
	require.Equal(t, "bob", o.Username)
	require.Equal(t, "secret", o.Password)
	require.Equal(t, 2, o.DB)
	require.NotNil(t, o.TLSConfig)

	// -a and -n override the URL's; REDIS_URL is the default.
	c, err = parseConn(t, map[string]string{"REDIS_URL": "redis://envhost:6390/1"}, "-a", "other", "--db", "4")
	require.NoError(t, err)
	o = single(t, c)
	require.Equal(t, "envhost:6390", o.Addr)
	require.Equal(t, "other", o.Password)
	require.Equal(t, 4, o.DB)
	// -h beats REDIS_URL.
	c, err = parseConn(t, map[string]string{"REDIS_URL": "redis://envhost:6390/1"}, "-h", "explicit")
	require.NoError(t, err)
	require.Equal(t, "explicit:6379", single(t, c).Addr)

	c, err = parseConn(t, nil, "--cluster-addrs", "a:7000, b:7001")
	require.NoError(t, err)
	cc, ok := c.(*redis.ClusterClient)
	require.True(t, ok)
	require.Equal(t, []string{"a:7000", "b:7001"}, cc.Options().Addrs)
	c, err = parseConn(t, nil, "--cluster", "-u", "redis://a:7000?addr=b:7001")
	require.NoError(t, err)
	require.Equal(t, []string{"a:7000", "b:7001"}, c.(*redis.ClusterClient).Options().Addrs)

	c, err = parseConn(t, nil, "--sentinel-master", "mymaster", "--sentinel-addrs", "s1:26379,s2:26379", "-a", "pw")
	require.NoError(t, err)
	_, ok = c.(*redis.Client)
	require.True(t, ok)

	for _, bad := range [][]string{
		{"-u", "redis://x", "-h", "y"},
		{"-u", "http://x"},
		{"-p", "70000"},
		{"--cluster", "-n", "2"},
		{"--cluster", "--sentinel-master", "m", "--sentinel-addrs", "s:1"},
		{"--sentinel-master", "m"},
		{"-n", "-1"},
	} {
		_, err := parseConn(t, nil, bad...)
		require.ErrorIs(t, err, errUsage, "%v", bad)
	}
}

func TestUsageErrors(t *testing.T) {
	code, out, _ := cli(t, "--help")
	require.Equal(t, exitOK, code)
	contains(t, out, "usage: redlease", "peek", "dash", "--sentinel-master")
	code, out, _ = cli(t, "dead", "--help")
	require.Equal(t, exitOK, code)
	contains(t, out, "-after", "-n is the count")
	for _, args := range [][]string{
		{},
		{"nope"},
		{"peek"},
		{"peek", "q", "extra"},
		{"peek", "q", "-n", "0"},
		{"locks", "--scan-limit", "0"},
		{"queue", "q", "--shards", "-1"},
		{"--bogus", "queues"},
	} {
		code, _, errOut := cli(t, args...)
		require.Equal(t, exitUsage, code, "%v: %s", args, errOut)
		require.NotEmpty(t, errOut)
	}
}

func TestFlagsAfterCommand(t *testing.T) {
	_, c := newMini(t)
	addr := c.Options().Addr
	host, port, _ := strings.Cut(addr, ":")
	q := redlease.NewQueue(c, "jobs", redlease.WithPrefix("p"))
	for i := range 3 {
		_, err := q.Enqueue(context.Background(), []byte("job "+strconv.Itoa(i)))
		require.NoError(t, err)
	}
	// -n is the count after peek, the database before it.
	code, out, errOut := cli(t, "-h", host, "-n", "0", "peek", "jobs", "-p", port, "-n", "2", "--prefix", "p", "--json")
	require.Equal(t, exitOK, code, errOut)
	var msgs []messageView
	require.NoError(t, json.Unmarshal([]byte(out), &msgs))
	require.Len(t, msgs, 2)
	require.Equal(t, "job 0", *msgs[0].Text)
}

func TestCLIOnRealRedis(t *testing.T) {
	srv := redistest.Own(t)
	c := srv.Client(t)
	s := seed(t, c, "redlease")
	conn := []string{"-p", strconv.Itoa(srv.Port)}
	do := func(args ...string) string {
		t.Helper()
		code, out, errOut := cli(t, append(conn, args...)...)
		require.Equal(t, exitOK, code, "%v: %s", args, errOut)
		return out
	}

	out := do("queues")
	contains(t, out, "QUEUE", "emails", "orders/billing", "TOPIC", "billing")
	var qs queuesView
	require.NoError(t, json.Unmarshal([]byte(do("queues", "--json")), &qs))
	require.Len(t, qs.Queues, 1)
	require.Equal(t, "emails", qs.Queues[0].Name)
	require.Equal(t, int64(3), qs.Queues[0].Stats.Ready)
	require.Equal(t, int64(2), qs.Queues[0].Stats.Dead)
	require.Equal(t, int64(5), qs.Queues[0].Stats.Enqueued)
	require.Equal(t, int64(2), qs.Queues[0].Stats.DeadLettered)
	require.Len(t, qs.Topics, 1)
	require.Equal(t, "orders/billing", qs.Topics[0].Subscriptions[0].Name)
	require.Equal(t, int64(1), qs.Topics[0].Subscriptions[0].Stats.Ready)
	require.False(t, qs.Truncated)

	contains(t, do("queue", "emails"), "ready", "3", "dead", "2")
	contains(t, do("queue", "orders/billing"), "subscription billing")
	contains(t, do("queue", "nothing"), "no such queue")

	contains(t, do("peek", "emails"), "mail-ann", `"mail to ann"`, "to=ann")
	var msgs []messageView
	require.NoError(t, json.Unmarshal([]byte(do("peek", "emails", "-n", "1", "--json")), &msgs))
	require.Equal(t, []messageView{{ID: "mail-ann", Headers: map[string]string{"to": "ann"}, payloadView: viewPayload([]byte("mail to ann"))}}, msgs)

	out = do("dead", "emails")
	contains(t, out, "bad-1", "bad-2", "parse bad-1: redlease: do not retry")
	var dead []deadView
	require.NoError(t, json.Unmarshal([]byte(do("dead", "emails", "--after", "bad-1", "--json")), &dead))
	require.Len(t, dead, 1)
	require.Equal(t, "bad-2", dead[0].ID)
	code, _, errOut := cli(t, append(conn, "dead", "emails", "--after", "nobody")...)
	require.Equal(t, exitError, code)
	contains(t, errOut, "no such dead letter")

	out = do("locks")
	contains(t, out, "invoice:42", "held", s.holder.Token(), "catalog", "shared")
	var locks locksView
	require.NoError(t, json.Unmarshal([]byte(do("locks", "--match", "inv*", "--json")), &locks))
	require.Len(t, locks.Locks, 1)
	require.Equal(t, stateHeld, locks.Locks[0].State)
	require.Equal(t, 1, locks.Locks[0].WaiterCount)
	out = do("lock", "catalog")
	contains(t, out, "shared holders", "2")
	var lv lockView
	require.NoError(t, json.Unmarshal([]byte(do("lock", "invoice:42", "--json")), &lv))
	require.Equal(t, s.holder.Token(), lv.Holder)
	require.Equal(t, s.holder.Fence(), lv.Fence-1) // the waiter's ticket counted once more
	require.Len(t, lv.Waiters, 1)

	// Settling needs ids or --all.
	code, _, errOut = cli(t, append(conn, "retry", "emails")...)
	require.Equal(t, exitUsage, code)
	contains(t, errOut, "--all")
	contains(t, do("retry", "emails", "bad-1"), "retried 1 dead letter")
	var res settleResult
	require.NoError(t, json.Unmarshal([]byte(do("delete", "emails", "--all", "--json")), &res))
	require.Equal(t, 1, res.Count)
	st, err := redlease.NewQueue(c, "emails").Stats(context.Background())
	require.NoError(t, err)
	require.Equal(t, int64(4), st.Ready)
	require.Zero(t, st.Dead)
}

func TestCLIReportsRedisDown(t *testing.T) {
	code, _, errOut := cli(t, "-p", "1", "--timeout", "3s", "queues")
	require.Equal(t, exitError, code)
	contains(t, errOut, "redlease queues:")
}

func TestScanTruncates(t *testing.T) {
	c := redistest.Own(t).Client(t)
	ctx := context.Background()
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range 3000 {
			p.Set(ctx, "redlease:queue:{q"+strconv.Itoa(i)+"}:ready", "x", 0)
		}
		return nil
	})
	require.NoError(t, err)
	inv, err := discover(ctx, c, "redlease", scanner{limit: 1, timeout: time.Minute})
	require.NoError(t, err)
	require.True(t, inv.Truncated)
	_, err = discover(ctx, c, "redlease", scanner{limit: defaultScanLimit, timeout: time.Nanosecond})
	require.Error(t, err, "a scan whose time ran out before any reply read nothing: an error, not an empty list")
	inv, err = discover(ctx, c, "redlease", scanner{limit: defaultScanLimit, timeout: time.Minute})
	require.NoError(t, err)
	require.False(t, inv.Truncated)
	require.Len(t, inv.Queues, 3000)
}

func TestCLIOnCluster(t *testing.T) {
	cl := redistest.NewClusterT(t)
	c := cl.Client(t, nil)
	ctx := context.Background()
	// A sharded queue spreads over the masters; discovery must scan them all.
	q := redlease.NewQueue(c, "spread", redlease.WithShards(8))
	for i := range 16 {
		_, err := q.Enqueue(ctx, []byte("m"+strconv.Itoa(i)))
		require.NoError(t, err)
	}
	l := redlease.NewLocker(c)
	defer l.Close()
	lk, err := l.TryObtain(ctx, "on-cluster")
	require.NoError(t, err)
	defer lk.Release(ctx)

	conn := []string{"--cluster-addrs", strings.Join(cl.Addrs(), ",")}
	code, out, errOut := cli(t, append(conn, "queues", "--json")...)
	require.Equal(t, exitOK, code, errOut)
	var qs queuesView
	require.NoError(t, json.Unmarshal([]byte(out), &qs))
	require.Len(t, qs.Queues, 1)
	require.Equal(t, 8, qs.Queues[0].Shards)
	require.Equal(t, int64(16), qs.Queues[0].Stats.Ready)

	code, out, errOut = cli(t, append(conn, "queue", "spread", "--json")...)
	require.Equal(t, exitOK, code, errOut)
	var qv queueView
	require.NoError(t, json.Unmarshal([]byte(out), &qv))
	require.Equal(t, 8, qv.Shards, "shards detected from the keys")
	require.Equal(t, int64(16), qv.Stats.Ready)

	code, out, errOut = cli(t, append(conn, "peek", "spread", "-n", "100", "--json")...)
	require.Equal(t, exitOK, code, errOut)
	var msgs []messageView
	require.NoError(t, json.Unmarshal([]byte(out), &msgs))
	require.Len(t, msgs, 16)

	code, out, errOut = cli(t, append(conn, "locks")...)
	require.Equal(t, exitOK, code, errOut)
	contains(t, out, "on-cluster", lk.Token())
	code, out, errOut = cli(t, append(conn, "lock", "on-cluster", "--json")...)
	require.Equal(t, exitOK, code, errOut)
	var lv lockView
	require.NoError(t, json.Unmarshal([]byte(out), &lv))
	require.Equal(t, lk.Token(), lv.Holder)
	require.Equal(t, lk.Fence(), lv.Fence)
}

func TestCLIOnSentinel(t *testing.T) {
	ts := redistest.NewSentinelT(t)
	c := ts.Client(t)
	q := redlease.NewQueue(c, "via-sentinel")
	_, err := q.Enqueue(context.Background(), []byte("hello"))
	require.NoError(t, err)
	code, out, errOut := cli(t, "--sentinel-master", redistest.SentinelMaster, "--sentinel-addrs", strings.Join(ts.SentinelAddrs(), ","), "peek", "via-sentinel", "--json")
	require.Equal(t, exitOK, code, errOut)
	var msgs []messageView
	require.NoError(t, json.Unmarshal([]byte(out), &msgs))
	require.Len(t, msgs, 1)
	require.Equal(t, "hello", *msgs[0].Text)
}
