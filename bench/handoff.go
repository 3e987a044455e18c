package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bsm/redislock"
	"github.com/go-redsync/redsync/v4"
	goredsync "github.com/go-redsync/redsync/v4/redis/goredis/v9"
	"github.com/redis/go-redis/v9"

	"github.com/redlease/redlease"
)

// Scenario 3: goroutines contend for one key; how fast and how cheaply is
// the lock handed from a releaser to the next holder?

// errGaveUp marks an acquire that the library's retry policy abandoned
// (not an error of Redis or the harness).
var errGaveUp = errors.New("gave up")

// acquireFunc blocks until goroutine g holds the lock, the library gives
// up (errGaveUp), or ctx ends; it returns the release.
type acquireFunc func(ctx context.Context, g int) (release func(context.Context) error, err error)

type handoffContender struct {
	name string
	desc string
	// make builds the contender for n goroutines on key, on clients it
	// creates with newClient; close releases what it made.
	make func(newClient func() *redis.Client, key string, n int) (acquireFunc, func())
}

// redsyncAcquire wraps a mutex per goroutine: redsync's Mutex is not safe
// for concurrent use but can be locked again after unlocking.
func redsyncAcquire(newClient func() *redis.Client, key string, n int, opts ...redsync.Option) (acquireFunc, func()) {
	c := newClient()
	rs := redsync.New(goredsync.NewPool(c))
	ms := make([]*redsync.Mutex, n)
	for g := range ms {
		ms[g] = rs.NewMutex(key, opts...)
	}
	return func(ctx context.Context, g int) (func(context.Context) error, error) {
		if err := ms[g].LockContext(ctx); err != nil {
			var taken *redsync.ErrTaken
			if ctx.Err() == nil && (errors.Is(err, redsync.ErrFailed) || errors.As(err, &taken)) {
				return nil, errGaveUp
			}
			return nil, err
		}
		return func(ctx context.Context) error {
			ok, err := ms[g].UnlockContext(ctx)
			if err == nil && !ok {
				err = errors.New("redsync: unlock not ok")
			}
			return err
		}, nil
	}, func() { c.Close() }
}

// redislockAcquire obtains with a fresh retry strategy per call (redislock's
// LimitRetry and ExponentialBackoff keep state).
func redislockAcquire(newClient func() *redis.Client, key string, retry func() redislock.RetryStrategy) (acquireFunc, func()) {
	c := newClient()
	rl := redislock.New(c)
	return func(ctx context.Context, _ int) (func(context.Context) error, error) {
		lk, err := rl.Obtain(ctx, key, 30*time.Second, &redislock.Options{RetryStrategy: retry()})
		if err != nil {
			if errors.Is(err, redislock.ErrNotObtained) && ctx.Err() == nil {
				return nil, errGaveUp
			}
			return nil, err
		}
		return lk.Release, nil
	}, func() { c.Close() }
}

func redleaseAcquire(lockers []*redlease.Locker, key string) acquireFunc {
	return func(ctx context.Context, g int) (func(context.Context) error, error) {
		lk, err := lockers[g%len(lockers)].Obtain(ctx, key)
		if err != nil {
			if errors.Is(err, redlease.ErrNotObtained) && ctx.Err() == nil {
				return nil, errGaveUp
			}
			return nil, err
		}
		return lk.Release, nil
	}
}

var handoffContenders = []handoffContender{
	{"redlease", "one `Locker` on one client shared by all goroutines, `Obtain(ctx, key)` with default options (woken by the release through pub/sub; fallback retry exponential 16ms–1s)",
		func(newClient func() *redis.Client, key string, _ int) (acquireFunc, func()) {
			c := newClient()
			l := redlease.NewLocker(c)
			return redleaseAcquire([]*redlease.Locker{l}, key), func() { l.Close(); c.Close() }
		}},
	{"redlease 8 lockers", "one `Locker` per goroutine, each on its own client (as 8 processes would be), `Obtain` with default options",
		func(newClient func() *redis.Client, key string, n int) (acquireFunc, func()) {
			var cs []*redis.Client
			var ls []*redlease.Locker
			for range n {
				c := newClient()
				cs = append(cs, c)
				ls = append(ls, redlease.NewLocker(c))
			}
			return redleaseAcquire(ls, key), func() {
				for i := range ls {
					ls[i].Close()
					cs[i].Close()
				}
			}
		}},
	{"redsync defaults", "`redsync.New(goredis.NewPool(c)).NewMutex(key)` per goroutine, `LockContext`: 32 tries, random 50–250ms between them; a failed try also sends a release",
		func(newClient func() *redis.Client, key string, n int) (acquireFunc, func()) {
			return redsyncAcquire(newClient, key, n)
		}},
	{"redsync tuned", "as above with `WithRetryDelay(1ms)`, `WithTries(1<<30)`",
		func(newClient func() *redis.Client, key string, n int) (acquireFunc, func()) {
			return redsyncAcquire(newClient, key, n, redsync.WithRetryDelay(time.Millisecond), redsync.WithTries(1<<30))
		}},
	{"redislock defaults", "`Obtain(ctx, key, 30s, opts)` with `LimitRetry(LinearBackoff(100ms), 3)`, the retry its package example (`ExampleClient_Obtain_retry`) shows; its real default, nil options, never retries. A give-up is counted and the goroutine tries again",
		func(newClient func() *redis.Client, key string, _ int) (acquireFunc, func()) {
			return redislockAcquire(newClient, key, func() redislock.RetryStrategy {
				return redislock.LimitRetry(redislock.LinearBackoff(100*time.Millisecond), 3)
			})
		}},
	{"redislock tuned", "`Obtain` with `LinearBackoff(1ms)`, retrying until the run ends",
		func(newClient func() *redis.Client, key string, _ int) (acquireFunc, func()) {
			return redislockAcquire(newClient, key, func() redislock.RetryStrategy {
				return redislock.LinearBackoff(time.Millisecond)
			})
		}},
}

// maxAcquiresPerGoroutine bounds each contending loop in count.
const maxAcquiresPerGoroutine = 1 << 17

type handoffResult struct {
	acquisitions int64
	gaveUp       int64
	self         int64     // acquisitions by the goroutine that released last
	lat          []float64 // µs, sorted: every acquisition after a release
	latOther     []float64 // µs, sorted: those by another goroutine than the releaser
	elapsed      time.Duration
	counts       counts
}

// contend runs n goroutines on one key for d. Each acquisition computes
// now minus the time the previous holder took just before calling
// Release: the hand-off latency.
func contend(ctx context.Context, acquire acquireFunc, n int, d, hold time.Duration) (handoffResult, error) {
	var (
		wg          sync.WaitGroup
		mu          sync.Mutex
		firstErr    error
		res         handoffResult
		lastRelease atomic.Int64 // ns since base; 0 = nobody released yet
		lastHolder  atomic.Int64
	)
	base := time.Now() // monotonic reference for lastRelease
	lastHolder.Store(-1)
	rctx, cancel := context.WithDeadline(ctx, base.Add(d))
	defer cancel()
	lats := make([][]time.Duration, n)
	others := make([][]time.Duration, n)
	for g := range n {
		lats[g] = make([]time.Duration, 0, 4096)
		others[g] = make([]time.Duration, 0, 4096)
		wg.Go(func() {
			var acq, gaveUp, self int64
			for range maxAcquiresPerGoroutine {
				release, err := acquire(rctx, g)
				if err != nil {
					if rctx.Err() != nil {
						break
					}
					if errors.Is(err, errGaveUp) {
						gaveUp++
						continue
					}
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					break
				}
				now := time.Since(base)
				if now < d { // count only what was acquired within the run
					acq++
					prev := lastHolder.Load()
					if lr := lastRelease.Load(); lr > 0 {
						lats[g] = append(lats[g], now-time.Duration(lr))
						if prev != int64(g) {
							others[g] = append(others[g], now-time.Duration(lr))
						}
					}
					if prev == int64(g) {
						self++
					}
				}
				lastHolder.Store(int64(g))
				spin(hold)
				lastRelease.Store(int64(time.Since(base)))
				rctx2, cancel2 := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				err = release(rctx2)
				cancel2()
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("release: %w", err)
					}
					mu.Unlock()
					cancel()
					break
				}
				if rctx.Err() != nil {
					break
				}
			}
			mu.Lock()
			res.acquisitions += acq
			res.gaveUp += gaveUp
			res.self += self
			mu.Unlock()
		})
	}
	wg.Wait()
	res.elapsed = min(time.Since(base), d)
	var all, other []time.Duration
	for g := range lats {
		all = append(all, lats[g]...)
		other = append(other, others[g]...)
	}
	res.lat, res.latOther = durationsToMicros(all), durationsToMicros(other)
	return res, firstErr
}

func measureHandoff(ctx context.Context, e *env, ct handoffContender, n int, d, hold time.Duration) (handoffResult, error) {
	var clients []*redis.Client
	newClient := func() *redis.Client {
		c := e.client()
		clients = append(clients, c)
		return c
	}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	acquire, closeFn := ct.make(newClient, e.uniq("handoff"), n)
	defer closeFn()
	// Warm up: connections, scripts, subscriptions.
	if _, err := contend(ctx, acquire, n, min(d/5, 200*time.Millisecond), hold); err != nil {
		return handoffResult{}, fmt.Errorf("warm-up: %w", err)
	}
	if err := e.startWindow(ctx); err != nil {
		return handoffResult{}, err
	}
	res, err := contend(ctx, acquire, n, d, hold)
	cnt, cerr := e.endWindow(ctx)
	if err != nil {
		return res, err
	}
	res.counts = cnt
	return res, cerr
}

// scenarioHandoff runs scenario 3.
func scenarioHandoff(ctx context.Context, e *env, cfg config, progress func(string)) (*table, error) {
	variants := make([]string, len(cfg.holds))
	for i, h := range cfg.holds {
		variants[i] = holdLabel(h)
	}
	names := contenderNames(handoffContenders, func(c handoffContender) string { return c.name })
	t := newTable("handoff", "3. Contended hand-off", "hold", variants, names, []metric{
		{key: "acq", label: "acquisitions/s", unit: unitRate, higher: true, ratio: true},
		{key: "p50", label: "hand-off p50", unit: unitMicros, ratio: true},
		{key: "p99", label: "hand-off p99", unit: unitMicros, ratio: true},
		{key: "p50other", label: "p50 to another goroutine", unit: unitMicros, ratio: true},
		{key: "p99other", label: "p99 to another goroutine", unit: unitMicros},
		{key: "cmds", label: "cmds/acq", unit: unitCount},
		{key: "rt", label: "round trips/acq", unit: unitCount},
		{key: "failed", label: "failed attempts/acq", unit: unitCount},
		{key: "gaveup", label: "give-ups", unit: unitInt, sum: true},
		{key: "self", label: "same holder again", unit: unitPct},
	})
	t.intro = fmt.Sprintf("%d goroutines contend for ONE key for %v per run (after an unmeasured warm-up). "+
		"A holder keeps the lock for the hold time (a busy-wait: `time.Sleep` can round 100µs up to a millisecond; 0 = release at once), "+
		"takes `time.Now()` and calls Release; "+
		"every acquisition measures now minus that time: the hand-off latency (the first of a run has none). "+
		"\"to another goroutine\" keeps only acquisitions by a goroutine other than the one that released, i.e. real hand-offs "+
		"(n/a when there were none). "+
		"failed attempts/acq = (Redis `SET` calls − acquisitions) ÷ acquisitions: every contender's acquire sends exactly one `SET` per try, "+
		"directly or inside its script. give-ups are totals over all rounds of acquires the library abandoned by its own retry policy. "+
		"same holder again = share of acquisitions by the goroutine that had just released (with 8 goroutines, fair FIFO would give about 0%%).",
		cfg.handoffGoroutines, cfg.handoffDur)
	for _, ct := range handoffContenders {
		t.notes = append(t.notes, "**"+ct.name+"**: "+ct.desc+".")
	}
	for r := range cfg.fastRounds {
		for vi, hold := range cfg.holds {
			for i := range handoffContenders {
				ct := handoffContenders[(i+r)%len(handoffContenders)]
				res, err := measureHandoff(ctx, e, ct, cfg.handoffGoroutines, cfg.handoffDur, hold)
				if err != nil {
					if ctx.Err() != nil {
						return t, ctx.Err()
					}
					t.fail(variants[vi], ct.name, r, err)
					progress(fmt.Sprintf("handoff r%d hold=%s %-18s FAILED: %v", r+1, variants[vi], ct.name, err))
					continue
				}
				sets := res.counts.byName["set"]
				vals := map[string]float64{
					"acq":      float64(res.acquisitions) / res.elapsed.Seconds(),
					"p50":      quantile(res.lat, 0.50),
					"p99":      quantile(res.lat, 0.99),
					"p50other": quantile(res.latOther, 0.50),
					"p99other": quantile(res.latOther, 0.99),
					"cmds":     perOp(res.counts.total, res.acquisitions),
					"rt":       perOp(res.counts.rt, res.acquisitions),
					"failed":   perOp(max(sets-res.acquisitions, 0), res.acquisitions),
					"gaveup":   float64(res.gaveUp),
					"self":     100 * perOp(res.self, res.acquisitions),
				}
				if res.acquisitions == 0 {
					vals["acq"] = 0
				}
				t.record(variants[vi], ct.name, vals)
				t.addSamples(variants[vi], ct.name, res.lat)
				progress(fmt.Sprintf("handoff r%d hold=%-5s %-18s %7.0f acq/s p50 %8.1fµs p99 %8.1fµs cmds/acq %.1f gave up %d",
					r+1, variants[vi], ct.name, vals["acq"], vals["p50"], vals["p99"], vals["cmds"], res.gaveUp))
			}
		}
	}
	return t, nil
}

// spin busy-waits for d: the work done under the lock. time.Sleep cannot
// stand in for it, as its resolution can be a millisecond.
func spin(d time.Duration) {
	if d <= 0 {
		return
	}
	for start := time.Now(); time.Since(start) < d; {
	}
}

func holdLabel(h time.Duration) string {
	if h == 0 {
		return "0"
	}
	return h.String()
}
