package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bsm/redislock"
	"github.com/go-redsync/redsync/v4"
	goredsync "github.com/go-redsync/redsync/v4/redis/goredis/v9"
	"github.com/redis/go-redis/v9"

	"github.com/redlease/redlease"
)

// Scenario 4: many locks held past their TTL; what does keeping them
// alive cost Redis?

// holder holds a set of locks alive, then lets them go.
type holder interface {
	// release stops renewing and releases every lock; it returns how many
	// were lost (a renewal or the release found the lease gone).
	release(ctx context.Context) (lost int, err error)
}

type watchdogContender struct {
	name, desc string
	// hold obtains every key with the TTL and keeps them alive.
	hold func(ctx context.Context, c *redis.Client, keys []string, ttl time.Duration) (holder, error)
}

var watchdogContenders = []watchdogContender{
	{"redlease", "`TryObtain(ctx, key, WithTTL(ttl))`; its watchdog renews every TTL/3, batched into one script call per 100 keys, sent in one pipeline", holdRedlease},
	{"redsync", "`NewMutex(key, WithExpiry(ttl))`, `TryLockContext`, then one goroutine per lock calling `ExtendContext` every TTL/3", holdRedsync},
	{"redislock", "`Obtain(ctx, key, ttl, nil)`, then one goroutine per lock calling `Refresh(ctx, ttl, nil)` every TTL/3", holdRedislock},
}

type redleaseHolder struct {
	l     *redlease.Locker
	locks []*redlease.Lock
}

func holdRedlease(ctx context.Context, c *redis.Client, keys []string, ttl time.Duration) (holder, error) {
	h := &redleaseHolder{l: redlease.NewLocker(c)}
	for _, k := range keys {
		lk, err := h.l.TryObtain(ctx, k, redlease.WithTTL(ttl))
		if err != nil {
			h.release(ctx)
			return nil, err
		}
		h.locks = append(h.locks, lk)
	}
	return h, nil
}

func (h *redleaseHolder) release(ctx context.Context) (int, error) {
	defer h.l.Close()
	lost := 0
	for _, lk := range h.locks {
		select {
		case <-lk.Lost():
			lost++
			continue
		default:
		}
		if err := lk.Release(ctx); err != nil {
			if !errors.Is(err, redlease.ErrNotHeld) {
				return lost, err
			}
			lost++
		}
	}
	return lost, nil
}

// refresher runs one renewal goroutine per lock, as the peers require.
type refresher struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	lost   atomic.Int64
	errs   atomic.Int64
}

// start renews one lock every period until stopped; renew reports false
// when the lock is gone.
func (r *refresher) start(ctx context.Context, period time.Duration, renew func(context.Context) (bool, error)) {
	r.wg.Go(func() {
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			ok, err := renew(ctx)
			if ctx.Err() != nil {
				return
			}
			if err != nil && !ok {
				r.errs.Add(1)
			}
			if !ok {
				r.lost.Add(1)
				return
			}
		}
	})
}

func (r *refresher) stop() {
	r.cancel()
	r.wg.Wait()
}

type redsyncHolder struct {
	refresher
	ms []*redsync.Mutex
}

func holdRedsync(ctx context.Context, c *redis.Client, keys []string, ttl time.Duration) (holder, error) {
	rs := redsync.New(goredsync.NewPool(c))
	h := &redsyncHolder{}
	var rctx context.Context
	rctx, h.cancel = context.WithCancel(context.WithoutCancel(ctx))
	for _, k := range keys {
		m := rs.NewMutex(k, redsync.WithExpiry(ttl))
		if err := m.TryLockContext(ctx); err != nil {
			h.release(ctx)
			return nil, err
		}
		h.ms = append(h.ms, m)
		h.start(rctx, ttl/3, m.ExtendContext)
	}
	return h, nil
}

func (h *redsyncHolder) release(ctx context.Context) (int, error) {
	h.stop()
	lost := int(h.lost.Load())
	for _, m := range h.ms {
		ok, err := m.UnlockContext(ctx)
		if err != nil && !errors.Is(err, redsync.ErrLockAlreadyExpired) {
			var taken *redsync.ErrTaken
			if !errors.As(err, &taken) {
				return lost, err
			}
		}
		if !ok {
			lost++
		}
	}
	return lost, nil
}

type redislockHolder struct {
	refresher
	locks []*redislock.Lock
}

func holdRedislock(ctx context.Context, c *redis.Client, keys []string, ttl time.Duration) (holder, error) {
	rl := redislock.New(c)
	h := &redislockHolder{}
	var rctx context.Context
	rctx, h.cancel = context.WithCancel(context.WithoutCancel(ctx))
	for _, k := range keys {
		lk, err := rl.Obtain(ctx, k, ttl, nil)
		if err != nil {
			h.release(ctx)
			return nil, err
		}
		h.locks = append(h.locks, lk)
		h.start(rctx, ttl/3, func(ctx context.Context) (bool, error) {
			err := lk.Refresh(ctx, ttl, nil)
			return err == nil, err
		})
	}
	return h, nil
}

func (h *redislockHolder) release(ctx context.Context) (int, error) {
	h.stop()
	lost := int(h.lost.Load())
	for _, lk := range h.locks {
		if err := lk.Release(ctx); err != nil {
			if !errors.Is(err, redislock.ErrLockNotHeld) {
				return lost, err
			}
			lost++
		}
	}
	return lost, nil
}

type watchdogResult struct {
	counts counts
	held   time.Duration
	lost   int
}

func measureWatchdog(ctx context.Context, e *env, ct watchdogContender, n int, ttl, hold time.Duration) (watchdogResult, error) {
	period := ttl / 3
	_, hold = watchWindow(ttl, hold)
	c := e.client()
	defer c.Close()
	prefix := e.uniq("watchdog")
	keys := make([]string, n)
	for i := range keys {
		keys[i] = prefix + ":" + strconv.Itoa(i)
	}
	rctx, cancel := context.WithTimeout(ctx, hold+60*time.Second)
	defer cancel()
	h, err := ct.hold(rctx, c, keys, ttl)
	if err != nil {
		return watchdogResult{}, err
	}
	// The window covers only the holding: acquisition and release are
	// not renewal costs. Renewals come in bursts one period apart (the
	// locks were obtained within a short time), so the window starts half
	// a period after the last acquisition and lasts a whole number of
	// periods: each lock renews the same number of times in it whatever
	// the phase.
	sleep(ctx, period/2)
	if err := e.startWindow(ctx); err != nil {
		h.release(rctx)
		return watchdogResult{}, err
	}
	start := time.Now()
	sleep(ctx, hold)
	held := time.Since(start)
	cnt, err := e.endWindow(ctx)
	lost, rerr := h.release(rctx)
	if err != nil {
		return watchdogResult{}, err
	}
	if rerr != nil {
		return watchdogResult{}, rerr
	}
	return watchdogResult{counts: cnt, held: held, lost: lost}, nil
}

// watchWindow is the measured window: the whole number of renewal periods
// (TTL/3) nearest to hold, at least one.
func watchWindow(ttl, hold time.Duration) (int, time.Duration) {
	period := ttl / 3
	k := max(int((hold+period/2)/period), 1)
	return k, time.Duration(k) * period
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// scenarioWatchdog runs scenario 4.
func scenarioWatchdog(ctx context.Context, e *env, cfg config, progress func(string)) (*table, error) {
	names := contenderNames(watchdogContenders, func(c watchdogContender) string { return c.name })
	t := newTable("watchdog", "4. Watchdog cost: keeping many locks alive", "", nil, names, []metric{
		{key: "cmds", label: "Redis cmds/s", unit: unitRate, ratio: true},
		{key: "rt", label: "round trips/s", unit: unitRate, ratio: true},
		{key: "renewals", label: "renewals/s", unit: unitRate},
		{key: "perrenewal", label: "cmds/renewal", unit: unitCount},
		{key: "lost", label: "locks lost", unit: unitInt, sum: true},
	})
	k, window := watchWindow(cfg.watchTTL, cfg.watchHold)
	t.intro = fmt.Sprintf("%d locks with a TTL of %v are obtained, then held; the measured window lasts %d renewal periods (TTL/3, %v in all) "+
		"and starts half a period after the last acquisition, so every lock renews %d times in it whatever its phase; then all are released. "+
		"Commands and round trips in the window are all renewal traffic. A lock counts as lost if a renewal failed, "+
		"its loss was signalled, or its release found it gone (without renewal every lock would have expired). "+
		"renewals counts Redis `PEXPIRE` calls (each contender's renewal sends exactly one per lock, inside its script). locks lost is the total over all rounds.", cfg.watchLocks, cfg.watchTTL, k, window.Round(time.Millisecond), k)
	for _, ct := range watchdogContenders {
		t.notes = append(t.notes, "**"+ct.name+"**: "+ct.desc+".")
	}
	for r := range cfg.rounds {
		for i := range watchdogContenders {
			ct := watchdogContenders[(i+r)%len(watchdogContenders)]
			if err := e.flush(ctx); err != nil {
				return t, err
			}
			res, err := measureWatchdog(ctx, e, ct, cfg.watchLocks, cfg.watchTTL, cfg.watchHold)
			if err != nil {
				if ctx.Err() != nil {
					return t, ctx.Err()
				}
				t.fail("", ct.name, r, err)
				progress(fmt.Sprintf("watchdog r%d %-10s FAILED: %v", r+1, ct.name, err))
				continue
			}
			secs := res.held.Seconds()
			// Every contender's renewal runs exactly one PEXPIRE per lock.
			renewals := res.counts.byName["pexpire"]
			vals := map[string]float64{
				"cmds":       float64(res.counts.total) / secs,
				"rt":         float64(res.counts.rt) / secs,
				"renewals":   float64(renewals) / secs,
				"perrenewal": perOp(res.counts.total, renewals),
				"lost":       float64(res.lost),
			}
			t.record("", ct.name, vals)
			progress(fmt.Sprintf("watchdog r%d %-10s %8.0f cmds/s %8.1f rt/s lost %d", r+1, ct.name, vals["cmds"], vals["rt"], res.lost))
		}
	}
	return t, nil
}
