package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
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
	// goroutines, if set, replaces the scenario's goroutine count; holds,
	// if set, limits the contender to those holds.
	goroutines int
	holds      []time.Duration
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

// redleaseLockers gives each goroutine its own Locker on its own client, as
// that many processes would have.
func redleaseLockers(newClient func() *redis.Client, key string, n int) (acquireFunc, func()) {
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
}

const (
	// manyLockers is the goroutine count of the many-lockers variant: the
	// crowd a release must not wake all at once.
	manyLockers = 64
	// manyLockersHold is the one hold it runs at, where a fair queue of
	// manyLockers waiters is still a fraction of a run long.
	manyLockersHold = time.Millisecond
)

// manyLockersName names the many-lockers variant in tables and plots.
var manyLockersName = fmt.Sprintf("redlease %d lockers", manyLockers)

var handoffContenders = []handoffContender{
	{name: "redlease", desc: "one `Locker` on one client shared by all goroutines, `Obtain(ctx, key)` with default options (woken by the release through pub/sub; fallback retry exponential 16ms–1s)",
		make: func(newClient func() *redis.Client, key string, _ int) (acquireFunc, func()) {
			c := newClient()
			l := redlease.NewLocker(c)
			return redleaseAcquire([]*redlease.Locker{l}, key), func() { l.Close(); c.Close() }
		}},
	{name: "redlease 8 lockers", desc: "one `Locker` per goroutine, each on its own client (as 8 processes would be), `Obtain` with default options",
		make: redleaseLockers},
	{name: manyLockersName, goroutines: manyLockers, holds: []time.Duration{manyLockersHold},
		desc: fmt.Sprintf("as redlease 8 lockers with %d goroutines, each with its own `Locker` and client; runs at hold %s only, interleaved with the others",
			manyLockers, holdLabel(manyLockersHold)),
		make: redleaseLockers},
	{name: "redsync defaults", desc: "`redsync.New(goredis.NewPool(c)).NewMutex(key)` per goroutine, `LockContext`: 32 tries, random 50–250ms between them; a failed try also sends a release",
		make: func(newClient func() *redis.Client, key string, n int) (acquireFunc, func()) {
			return redsyncAcquire(newClient, key, n)
		}},
	{name: "redsync tuned", desc: "as above with `WithRetryDelay(1ms)`, `WithTries(1<<30)`",
		make: func(newClient func() *redis.Client, key string, n int) (acquireFunc, func()) {
			return redsyncAcquire(newClient, key, n, redsync.WithRetryDelay(time.Millisecond), redsync.WithTries(1<<30))
		}},
	{name: "redislock defaults", desc: "`Obtain(ctx, key, 30s, opts)` with `LimitRetry(LinearBackoff(100ms), 3)`, the retry its package example (`ExampleClient_Obtain_retry`) shows; its real default, nil options, never retries. A give-up is counted and the goroutine tries again",
		make: func(newClient func() *redis.Client, key string, _ int) (acquireFunc, func()) {
			return redislockAcquire(newClient, key, func() redislock.RetryStrategy {
				return redislock.LimitRetry(redislock.LinearBackoff(100*time.Millisecond), 3)
			})
		}},
	{name: "redislock tuned", desc: "`Obtain` with `LinearBackoff(1ms)`, retrying until the run ends",
		make: func(newClient func() *redis.Client, key string, _ int) (acquireFunc, func()) {
			return redislockAcquire(newClient, key, func() redislock.RetryStrategy {
				return redislock.LinearBackoff(time.Millisecond)
			})
		}},
}

// runsAt reports whether the contender runs at hold.
func (c handoffContender) runsAt(hold time.Duration) bool {
	return c.holds == nil || slices.Contains(c.holds, hold)
}

// goroutinesOr is the contender's goroutine count, def unless it sets its own.
func (c handoffContender) goroutinesOr(def int) int {
	if c.goroutines > 0 {
		return c.goroutines
	}
	return def
}

// warmupSettle is the pause between a warm-up and its measured run.
const warmupSettle = 100 * time.Millisecond

// maxAcquiresPerGoroutine bounds each contending loop in count.
const maxAcquiresPerGoroutine = 1 << 17

// latCap presizes each goroutine's sample buffers, so that appends rarely
// allocate during the measured run.
const latCap = 4096

// releaseTimeout bounds a release, which must not be cut short by the end
// of the run.
const releaseTimeout = 5 * time.Second

type handoffResult struct {
	acquisitions int64
	gaveUp       int64
	self         int64     // acquisitions by the goroutine that released last
	lat          []float64 // µs, sorted: every acquisition after a release
	latOther     []float64 // µs, sorted: those by another goroutine than the releaser
	// waits are µs, sorted: from the first acquire call of a goroutine's
	// turn (give-ups included) to holding the lock; a wait the run's end
	// cut off counts as far as the end, a lower bound.
	waits   []float64
	perG    []int64 // acquisitions per goroutine
	elapsed time.Duration
	counts  counts
	ping    []float64 // µs, sorted: PING round trips right before and after the run
}

// contend runs n goroutines on one key for d. Each acquisition computes
// now minus the time the previous holder took just before calling
// Release: the hand-off latency. Each goroutine also records how long it
// waited for each turn and how many turns it got.
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
	waits := make([][]time.Duration, n)
	res.perG = make([]int64, n)
	for g := range n {
		lats[g] = make([]time.Duration, 0, latCap)
		others[g] = make([]time.Duration, 0, latCap)
		waits[g] = make([]time.Duration, 0, latCap)
		wg.Go(func() {
			var acq, gaveUp, self int64
			want := time.Since(base) // when this goroutine began wanting the lock
			for range maxAcquiresPerGoroutine {
				release, err := acquire(rctx, g)
				if err != nil {
					if rctx.Err() != nil {
						if want < d {
							waits[g] = append(waits[g], d-want)
						}
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
				if want < d {
					waits[g] = append(waits[g], now-want)
				}
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
				rctx2, cancel2 := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
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
				want = time.Since(base)
			}
			mu.Lock()
			res.acquisitions += acq
			res.gaveUp += gaveUp
			res.self += self
			res.perG[g] = acq
			mu.Unlock()
		})
	}
	wg.Wait()
	res.elapsed = min(time.Since(base), d)
	var all, other, wait []time.Duration
	for g := range lats {
		all = append(all, lats[g]...)
		other = append(other, others[g]...)
		wait = append(wait, waits[g]...)
	}
	res.lat, res.latOther, res.waits = durationsToMicros(all), durationsToMicros(other), durationsToMicros(wait)
	return res, firstErr
}

// fairShare returns the fewest and the most acquisitions any goroutine
// made, as percentages of a fair share (total ÷ goroutines).
func fairShare(perG []int64) (lo, hi float64) {
	var total int64
	for _, a := range perG {
		total += a
	}
	if total == 0 || len(perG) == 0 {
		return math.NaN(), math.NaN()
	}
	fair := float64(total) / float64(len(perG))
	return 100 * float64(slices.Min(perG)) / fair, 100 * float64(slices.Max(perG)) / fair
}

const (
	// pingsPerSide PINGs are timed right before and right after each
	// measured run: enough for a steady p50, a few ms in all.
	pingsPerSide = 50
	// pingTimeout bounds one PING.
	pingTimeout = time.Second
	// boundSlack is what "Lock waiting v2" allows a hand-off above two
	// round trips (the release's, and the waiter's acquire).
	boundSlack = 150 * time.Microsecond
)

// pingBurst times n PINGs on c, one after another.
func pingBurst(ctx context.Context, c *redis.Client, n int) ([]time.Duration, error) {
	lat := make([]time.Duration, 0, n)
	for range n {
		pctx, cancel := context.WithTimeout(ctx, pingTimeout)
		t0 := time.Now()
		err := c.Ping(pctx).Err()
		rtt := time.Since(t0)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("PING: %w", err)
		}
		lat = append(lat, rtt)
	}
	return lat, nil
}

// measureHandoff runs one measured run of ct with n goroutines; pinger
// times the round trip right before and right after it.
func measureHandoff(ctx context.Context, e *env, pinger *redis.Client, ct handoffContender, n int, d, hold time.Duration) (handoffResult, error) {
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
	// What the warm-up's end set off (waiters that gave up leaving their
	// queue, in the background) settles before the counted window.
	time.Sleep(warmupSettle)
	// The PINGs stay outside the counted window and off the counted clients.
	before, err := pingBurst(ctx, pinger, pingsPerSide)
	if err != nil {
		return handoffResult{}, err
	}
	if err := e.startWindow(ctx); err != nil {
		return handoffResult{}, err
	}
	// Commands are counted until the run's end, as acquisitions are: what
	// the waiters still queued then send as they give up is left out.
	var (
		cnt  counts
		cerr error
	)
	counted := make(chan struct{})
	stop := time.AfterFunc(d, func() { cnt, cerr = e.endWindow(ctx); close(counted) })
	res, err := contend(ctx, acquire, n, d, hold)
	if stop.Stop() { // the run ended early (an error)
		cnt, cerr = e.endWindow(ctx)
	} else {
		<-counted
	}
	if err != nil {
		return res, err
	}
	if cerr != nil {
		return res, cerr
	}
	after, err := pingBurst(ctx, pinger, pingsPerSide)
	if err != nil {
		return res, err
	}
	res.counts, res.ping = cnt, durationsToMicros(append(before, after...))
	return res, nil
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
		{key: "bound", label: fmt.Sprintf("p50 bound (2×PING p50 + %v)", boundSlack), unit: unitMicros},
		{key: "ping", label: "PING p50", unit: unitMicros},
		{key: "p99other", label: "p99 to another goroutine", unit: unitMicros},
		{key: "wait", label: "wait p99 (holds)", unit: unitCount},
		{key: "fairmin", label: "min share (% of fair)", unit: unitPct, higher: true},
		{key: "fairmax", label: "max share (% of fair)", unit: unitPct},
		{key: "cmds", label: "cmds/acq", unit: unitCount},
		{key: "rt", label: "round trips/acq", unit: unitCount},
		{key: "failed", label: "failed attempts/acq", unit: unitCount},
		{key: "gaveup", label: "give-ups", unit: unitInt, sum: true},
		{key: "self", label: "same holder again", unit: unitPct},
	})
	t.intro = fmt.Sprintf("%d goroutines contend for ONE key for %v per run (after an unmeasured warm-up); "+
		"%s runs %d goroutines, at hold %s only. "+
		"A holder keeps the lock for the hold time (a busy-wait: `time.Sleep` can round 100µs up to a millisecond; 0 = release at once), "+
		"takes `time.Now()` and calls Release; "+
		"every acquisition measures now minus that time: the hand-off latency (the first of a run has none). "+
		"\"to another goroutine\" keeps only acquisitions by a goroutine other than the one that released, i.e. real hand-offs "+
		"(n/a when there were none). "+
		"PING p50: a separate client (one connection, not counted) times %d PINGs one after another right before each measured run "+
		"and %d right after it, outside the counted window; the p50 is over those %d. Bracketing the run rather than pinging during it "+
		"adds nothing to the measured run, and keeps the contender's own load (a herd of waiters retrying) from inflating its yardstick, "+
		"while the machine's drift from one second to the next is still caught. "+
		"p50 bound = 2 × that run's PING p50 + %s (a release's round trip, the waiter's acquire round trip, and slack), "+
		"to read against \"p50 to another goroutine\"; both are medians over rounds of per-round figures. "+
		"wait p99 (holds) = p99 over all of a run's waits, each from a goroutine's first acquire call for its turn (give-ups and retries included) "+
		"to holding the lock, divided by the hold time (n/a for hold 0); a wait still open at the run's end counts up to the end (a lower bound), "+
		"so a goroutine starved for the whole run shows. "+
		"min / max share = the fewest and most acquisitions one goroutine made in a run, as a percentage of a fair share (acquisitions ÷ goroutines); "+
		"100%% / 100%% is perfectly even, \"within ±50%% of fair\" means both between 50%% and 150%%. "+
		"cmds/acq and round trips/acq count what was sent until the run's end, as acquisitions are counted: "+
		"what waiters still queued then send as the end cancels them is left out. "+
		"failed attempts/acq = (Redis `SET` calls − acquisitions) ÷ acquisitions: every contender's acquire sends exactly one `SET` per try, "+
		"directly or inside its script; redlease's release also `SET`s the lease it hands to the next waiter, so its 1.0 is the one "+
		"attempt per acquisition that found the lock held and queued. give-ups are totals over all rounds of acquires the library abandoned by its own retry policy. "+
		"same holder again = share of acquisitions by the goroutine that had just released (fair FIFO would give about 0%%).",
		cfg.handoffGoroutines, cfg.handoffDur, manyLockersName, manyLockers, holdLabel(manyLockersHold),
		pingsPerSide, pingsPerSide, 2*pingsPerSide, boundSlack)
	for _, ct := range handoffContenders {
		t.notes = append(t.notes, "**"+ct.name+"**: "+ct.desc+".")
	}
	// One connection, not counted as a contender's round trip; dialled now
	// so that the first run's PINGs do not include a dial.
	pinger := redis.NewClient(&redis.Options{Addr: e.addr, PoolSize: 1})
	defer pinger.Close()
	if err := pinger.Ping(ctx).Err(); err != nil {
		return t, err
	}
	for r := range cfg.fastRounds {
		for vi, hold := range cfg.holds {
			var cts []handoffContender
			for _, ct := range handoffContenders {
				if ct.runsAt(hold) {
					cts = append(cts, ct)
				}
			}
			for i := range cts {
				ct := cts[(i+r)%len(cts)]
				n := ct.goroutinesOr(cfg.handoffGoroutines)
				res, err := measureHandoff(ctx, e, pinger, ct, n, cfg.handoffDur, hold)
				if err != nil {
					if ctx.Err() != nil {
						return t, ctx.Err()
					}
					t.fail(variants[vi], ct.name, r, err)
					progress(fmt.Sprintf("handoff r%d hold=%s %-19s FAILED: %v", r+1, variants[vi], ct.name, err))
					continue
				}
				sets := res.counts.byName["set"]
				ping := quantile(res.ping, 0.50)
				fairMin, fairMax := fairShare(res.perG)
				vals := map[string]float64{
					"acq":      float64(res.acquisitions) / res.elapsed.Seconds(),
					"p50":      quantile(res.lat, 0.50),
					"p99":      quantile(res.lat, 0.99),
					"p50other": quantile(res.latOther, 0.50),
					"bound":    2*ping + float64(boundSlack)/float64(time.Microsecond),
					"ping":     ping,
					"p99other": quantile(res.latOther, 0.99),
					"wait":     math.NaN(),
					"fairmin":  fairMin,
					"fairmax":  fairMax,
					"cmds":     perOp(res.counts.total, res.acquisitions),
					"rt":       perOp(res.counts.rt, res.acquisitions),
					"failed":   perOp(max(sets-res.acquisitions, 0), res.acquisitions),
					"gaveup":   float64(res.gaveUp),
					"self":     100 * perOp(res.self, res.acquisitions),
				}
				if hold > 0 {
					vals["wait"] = quantile(res.waits, 0.99) / (float64(hold) / float64(time.Microsecond))
				}
				if res.acquisitions == 0 {
					vals["acq"] = 0
				}
				t.record(variants[vi], ct.name, vals)
				t.addSamples(variants[vi], ct.name, res.lat)
				progress(fmt.Sprintf("handoff r%d hold=%-5s %-19s %7.0f acq/s p50 %s p99 %s other p50 %s bound %s (PING %s) wait p99 %s holds share %s–%s cmds/acq %.1f gave up %d",
					r+1, variants[vi], ct.name, vals["acq"], format(vals["p50"], unitMicros), format(vals["p99"], unitMicros),
					format(vals["p50other"], unitMicros), format(vals["bound"], unitMicros), format(ping, unitMicros),
					format(vals["wait"], unitCount), format(fairMin, unitPct), format(fairMax, unitPct), vals["cmds"], res.gaveUp))
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
