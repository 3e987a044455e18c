package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"

	"github.com/redlease/redlease/bench/internal/cmpstat"
	"github.com/redlease/redlease/internal/redistest"
)

// server is the redis-server the harness starts for itself on loopback.
type server struct {
	*redistest.Server
	version string
	once    sync.Once
}

// startServer starts redis-server on a free 127.0.0.1 port, without
// persistence, in a directory of its own, and waits until it answers PING
// (redistest.Start retries on another port if the one it probed is taken).
func startServer(ctx context.Context) (*server, error) {
	dir, err := os.MkdirTemp("", "redlease-bench-")
	if err != nil {
		return nil, err
	}
	rs, err := redistest.StartData(dir, "redis")
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start redis-server: %w", err)
	}
	s := &server{Server: rs}
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer c.Close()
	if s.version, err = redistest.InfoField(ctx, c, "server", "redis_version"); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// stop kills redis-server and removes its directory. It is idempotent and
// safe to call from a signal handler goroutine.
func (s *server) stop() {
	s.once.Do(func() {
		s.Kill()
		os.RemoveAll(s.Dir)
	})
}

// env is what every measured run needs: the server's address, an admin
// client that is not counted, and the round-trip counter of every client
// the contenders use.
type env struct {
	addr     string
	admin    *redis.Client
	overhead int64        // commands our own CONFIG RESETSTAT + INFO add to a reading
	rt       atomic.Int64 // round trips of all counted clients
	seq      atomic.Int64 // makes key names unique per run
}

func newEnv(ctx context.Context, addr string) (*env, error) {
	e := &env{addr: addr, admin: redis.NewClient(&redis.Options{Addr: addr})}
	// Calibrate: with nothing else running, a reset followed by a reading
	// shows exactly what the measurement itself adds.
	if err := e.admin.ConfigResetStat(ctx).Err(); err != nil {
		return nil, err
	}
	c, err := e.commandStats(ctx)
	if err != nil {
		return nil, err
	}
	e.overhead = c.total
	return e, nil
}

// uniq returns a fresh name for keys or queues of one run.
func (e *env) uniq(prefix string) string {
	return prefix + "-" + strconv.FormatInt(e.seq.Add(1), 10)
}

// client returns a new go-redis client whose commands and pipelines are
// counted as round trips.
func (e *env) client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: e.addr})
	c.AddHook(cmpstat.RoundTrips{N: &e.rt})
	return c
}

// counts is what Redis and the hooks saw in a measured window.
type counts struct {
	total  int64            // commands, those run inside scripts included
	byName map[string]int64 // per command ("set", "evalsha", "config|resetstat", ...)
	rt     int64            // client round trips
}

// startWindow zeroes Redis's command statistics and the round-trip counter.
func (e *env) startWindow(ctx context.Context) error {
	e.rt.Store(0)
	return e.admin.ConfigResetStat(ctx).Err()
}

// endWindow reads what happened since startWindow, less the measurement's
// own commands.
func (e *env) endWindow(ctx context.Context) (counts, error) {
	rt := e.rt.Load()
	c, err := e.commandStats(ctx)
	if err != nil {
		return c, err
	}
	c.total -= e.overhead
	c.rt = rt
	return c, nil
}

// commandStats sums calls= over every cmdstat_ line of INFO commandstats.
func (e *env) commandStats(ctx context.Context) (counts, error) {
	info, err := e.admin.Info(ctx, "commandstats").Result()
	if err != nil {
		return counts{}, fmt.Errorf("INFO commandstats: %w", err)
	}
	byName, total, err := cmpstat.CommandCalls(info)
	return counts{byName: byName, total: total}, err
}

// flush empties the database between runs (not counted: the window is
// reset afterwards).
func (e *env) flush(ctx context.Context) error { return e.admin.FlushAll(ctx).Err() }
