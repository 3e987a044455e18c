package main

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/bsm/redislock"
	"github.com/go-redsync/redsync/v4"
	goredsync "github.com/go-redsync/redsync/v4/redis/goredis/v9"
	"github.com/redis/go-redis/v9"

	"github.com/redlease/redlease"
)

// Scenarios 1 and 2: an uncontended acquire + release cycle, each
// goroutine on its own key.

// cycleFunc runs one acquire + release on goroutine g's key; i counts
// that goroutine's cycles.
type cycleFunc func(ctx context.Context, g, i int) error

// cycleContender builds a contender's cycle on client c for the given
// keys (one per goroutine), and what to close afterwards.
type cycleContender struct {
	name string
	make func(ctx context.Context, c *redis.Client, keys []string) (cycleFunc, func(), error)
}

// rawFloorName names the raw SET NX + EVALSHA cycle every lock is held against.
const rawFloorName = "raw floor"

// rawRelease is the compare-and-delete every lock on SET NX PX needs.
const rawRelease = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`

var cycleContenders = []cycleContender{
	{"redlease", func(_ context.Context, c *redis.Client, keys []string) (cycleFunc, func(), error) {
		l := redlease.NewLocker(c)
		return func(ctx context.Context, g, _ int) error {
			lk, err := l.TryObtain(ctx, keys[g])
			if err != nil {
				return err
			}
			return lk.Release(ctx)
		}, func() { l.Close() }, nil
	}},
	{"redsync", func(_ context.Context, c *redis.Client, keys []string) (cycleFunc, func(), error) {
		rs := redsync.New(goredsync.NewPool(c))
		// A Mutex is not safe for concurrent use, but can be locked again
		// after Unlock: one per goroutine, reused, as its docs show.
		ms := make([]*redsync.Mutex, len(keys))
		for g, k := range keys {
			ms[g] = rs.NewMutex(k)
		}
		return func(ctx context.Context, g, _ int) error {
			if err := ms[g].LockContext(ctx); err != nil {
				return err
			}
			ok, err := ms[g].UnlockContext(ctx)
			if err == nil && !ok {
				err = errors.New("redsync: unlock reported not ok")
			}
			return err
		}, func() {}, nil
	}},
	{"redislock", func(_ context.Context, c *redis.Client, keys []string) (cycleFunc, func(), error) {
		rl := redislock.New(c)
		return func(ctx context.Context, g, _ int) error {
			lk, err := rl.Obtain(ctx, keys[g], 30*time.Second, nil)
			if err != nil {
				return err
			}
			return lk.Release(ctx)
		}, func() {}, nil
	}},
	{rawFloorName, func(ctx context.Context, c *redis.Client, keys []string) (cycleFunc, func(), error) {
		sha, err := c.ScriptLoad(ctx, rawRelease).Result() // loaded once
		if err != nil {
			return nil, nil, err
		}
		return func(ctx context.Context, g, i int) error {
			// A token unique per cycle, as cheap as possible: the floor
			// measures Redis round trips, not token generation.
			tok := strconv.Itoa(i)
			ok, err := c.SetNX(ctx, keys[g], tok, 30*time.Second).Result()
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("raw: %s unexpectedly held", keys[g])
			}
			n, err := c.EvalSha(ctx, sha, []string{keys[g]}, tok).Int64()
			if err == nil && n != 1 {
				err = fmt.Errorf("raw: release of %s deleted %d keys", keys[g], n)
			}
			return err
		}, func() {}, nil
	}},
}

// maxCyclesPerGoroutine bounds every cycle loop in count as well as time,
// and sizes the latency buffers allocated before measuring.
const maxCyclesPerGoroutine = 1 << 17

type cycleResult struct {
	cycles  int64
	elapsed time.Duration
	lat     []float64 // µs, sorted
	mallocs uint64
	counts  counts
}

// runCycles runs op on n goroutines until d has passed.
func runCycles(ctx context.Context, op cycleFunc, n int, d time.Duration, lat [][]time.Duration) (int64, time.Duration, error) {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		total    int64
	)
	start := time.Now()
	deadline := start.Add(d)
	for g := range n {
		wg.Go(func() {
			var done int64
			buf := lat[g][:0]
			for i := 0; i < maxCyclesPerGoroutine; i++ {
				t0 := time.Now()
				if !t0.Before(deadline) {
					break
				}
				if err := op(ctx, g, i); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					break
				}
				if len(buf) < cap(buf) {
					buf = append(buf, time.Since(t0))
				}
				done++
			}
			lat[g] = buf
			mu.Lock()
			total += done
			mu.Unlock()
		})
	}
	wg.Wait()
	return total, time.Since(start), firstErr
}

// measureCycle runs one measured run of a contender at n goroutines.
// values are a cycle run's figures as the cycle tables name them.
func (res cycleResult) values() map[string]float64 {
	return map[string]float64{
		"ops":    float64(res.cycles) / res.elapsed.Seconds(),
		"p50":    quantile(res.lat, 0.50),
		"p99":    quantile(res.lat, 0.99),
		"cmds":   perOp(res.counts.total, res.cycles),
		"rt":     perOp(res.counts.rt, res.cycles),
		"allocs": perOp(int64(res.mallocs), res.cycles),
	}
}

func measureCycle(ctx context.Context, e *env, ct cycleContender, n int, d time.Duration) (cycleResult, error) {
	c := e.client()
	defer c.Close()
	prefix := e.uniq("cycle")
	keys := make([]string, n)
	for g := range keys {
		keys[g] = prefix + ":" + strconv.Itoa(g)
	}
	op, closeFn, err := ct.make(ctx, c, keys)
	if err != nil {
		return cycleResult{}, err
	}
	defer closeFn()
	rctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()

	lat := make([][]time.Duration, n)
	for g := range lat {
		lat[g] = make([]time.Duration, 0, maxCyclesPerGoroutine/n+1024)
	}
	// Warm up: connections dialled, scripts loaded, background loops started.
	if _, _, err := runCycles(rctx, op, n, min(d/5, 200*time.Millisecond), lat); err != nil {
		return cycleResult{}, fmt.Errorf("warm-up: %w", err)
	}
	runtime.GC()
	if err := e.startWindow(ctx); err != nil {
		return cycleResult{}, err
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	cycles, elapsed, runErr := runCycles(rctx, op, n, d, lat)
	runtime.ReadMemStats(&m1)
	cnt, err := e.endWindow(ctx)
	if err != nil {
		return cycleResult{}, err
	}
	if runErr != nil {
		return cycleResult{}, runErr
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	return cycleResult{
		cycles: cycles, elapsed: elapsed, lat: durationsToMicros(all),
		mallocs: m1.Mallocs - m0.Mallocs, counts: cnt,
	}, nil
}

// warmUp runs every lock contender briefly, unmeasured, so that the first
// measured run does not also pay for a cold process (page faults, GC
// sizing, CPU frequency).
func warmUp(ctx context.Context, e *env, cfg config) error {
	for _, n := range cfg.cycleGoroutines {
		for _, ct := range cycleContenders {
			if _, err := measureCycle(ctx, e, ct, n, 100*time.Millisecond); err != nil {
				return fmt.Errorf("warm-up %s: %w", ct.name, err)
			}
		}
	}
	return nil
}

// scenarioCycle runs scenarios 1 and 2, interleaved over rounds.
func scenarioCycle(ctx context.Context, e *env, cfg config, progress func(string)) (*table, error) {
	variants := make([]string, len(cfg.cycleGoroutines))
	for i, n := range cfg.cycleGoroutines {
		variants[i] = strconv.Itoa(n)
	}
	names := contenderNames(cycleContenders, func(c cycleContender) string { return c.name })
	t := newTable("cycle", "1–2. Raw floor and uncontended lock cycle (acquire + release)", "goroutines", variants, names, []metric{
		{key: "ops", label: "cycles/s", unit: unitRate, higher: true, ratio: true, against: rawFloorName},
		{key: "p50", label: "p50 cycle", unit: unitMicros},
		{key: "p99", label: "p99 cycle", unit: unitMicros},
		{key: "cmds", label: "cmds/cycle", unit: unitCount},
		{key: "rt", label: "round trips/cycle", unit: unitCount},
		{key: "allocs", label: "allocs/cycle", unit: unitCount, ratio: true},
	})
	t.intro = fmt.Sprintf("Each goroutine takes and releases its own key in a loop for %v per run "+
		"(after an unmeasured warm-up), with each library's defaults: redlease `TryObtain` + `Release` "+
		"(TTL 30s, watchdog on); redsync `NewMutex(key)` once per goroutine, then `LockContext` + `UnlockContext`; "+
		"redislock `Obtain(ctx, key, 30s, nil)` + `Release`; raw floor `SET key tok NX PX 30000` + one `EVALSHA` "+
		"compare-and-delete (script loaded once). allocs/cycle is the `runtime.MemStats.Mallocs` delta over the run "+
		"divided by cycles (whole process, so background goroutines count). "+
		"\"× raw floor\" is a contender's cycles/s over the raw floor's in the same round (median over rounds).", cfg.cycleDur)
	if err := warmUp(ctx, e, cfg); err != nil {
		return t, err
	}
	for r := range cfg.fastRounds {
		for vi, n := range cfg.cycleGoroutines {
			for i := range cycleContenders {
				ct := cycleContenders[(i+r)%len(cycleContenders)]
				res, err := measureCycle(ctx, e, ct, n, cfg.cycleDur)
				if err != nil {
					if ctx.Err() != nil {
						return t, ctx.Err()
					}
					t.fail(variants[vi], ct.name, r, err)
					progress(fmt.Sprintf("cycle r%d g=%d %-10s FAILED: %v", r+1, n, ct.name, err))
					continue
				}
				vals := res.values()
				t.record(variants[vi], ct.name, vals)
				progress(fmt.Sprintf("cycle r%d g=%-2d %-10s %8.0f cycles/s p50 %6.1fµs cmds/op %.2f allocs/op %.0f",
					r+1, n, ct.name, vals["ops"], vals["p50"], vals["cmds"], vals["allocs"]))
			}
		}
	}
	return t, nil
}
