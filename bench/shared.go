package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/redlease/redlease"
)

// Scenario 7: shared leases against exclusive ones, uncontended and with
// every goroutine on one key; what a shared lease costs in commands, and
// how its throughput compares with the exclusive cycle and the raw floor.

// sharedLimit is the WithLimit variant's permit count: below the
// goroutine count, so that some goroutines always wait for a permit.
const sharedLimit = 4

// Names of scenario 7's contenders; exclusiveName is the reference of its
// "×" columns.
const (
	exclusiveName       = "redlease exclusive"
	exclusiveOneKeyName = "redlease exclusive, one key"
	sharedName          = "redlease shared"
)

var sharedLimitName = fmt.Sprintf("redlease shared, limit %d", sharedLimit)

// sharedContender is a cycle contender of scenario 7; a contended one runs
// only with more than one goroutine (with one it would repeat another).
type sharedContender struct {
	cycleContender
	desc      string
	contended bool
}

// acquireLock takes a lease on key with l: one of the Locker's calls.
type acquireLock func(ctx context.Context, l *redlease.Locker, key string) (*redlease.Lock, error)

// lockCycle builds acquire + Release on one Locker over the run's client:
// on goroutine g's own key, or with oneKey on the one key all share.
func lockCycle(acquire acquireLock, oneKey bool) func(context.Context, *redis.Client, []string) (cycleFunc, func(), error) {
	return func(_ context.Context, c *redis.Client, keys []string) (cycleFunc, func(), error) {
		l := redlease.NewLocker(c)
		return func(ctx context.Context, g, _ int) error {
			key := keys[g]
			if oneKey {
				key = keys[0]
			}
			lk, err := acquire(ctx, l, key)
			if err != nil {
				return err
			}
			return lk.Release(ctx)
		}, func() { l.Close() }, nil
	}
}

// cycleContenderNamed returns one of scenario 2's contenders.
func cycleContenderNamed(name string) cycleContender {
	for _, c := range cycleContenders {
		if c.name == name {
			return c
		}
	}
	panic("no cycle contender " + name)
}

var sharedContenders = []sharedContender{
	{cycleContender: cycleContender{exclusiveName, lockCycle(func(ctx context.Context, l *redlease.Locker, key string) (*redlease.Lock, error) {
		return l.TryObtain(ctx, key)
	}, false)}, desc: "`TryObtain` + `Release`, each goroutine on its own key: scenario 2's redlease cycle, run again here so that its ratios pair with runs of the same rounds"},
	{cycleContender: cycleContender{sharedName, lockCycle(func(ctx context.Context, l *redlease.Locker, key string) (*redlease.Lock, error) {
		return l.TryObtainShared(ctx, key)
	}, true)}, desc: "`TryObtainShared` + `Release`, every goroutine on ONE key, no limit: never refused, as nothing exclusive takes that key"},
	{cycleContender: cycleContender{sharedLimitName, lockCycle(func(ctx context.Context, l *redlease.Locker, key string) (*redlease.Lock, error) {
		return l.ObtainShared(ctx, key, redlease.WithLimit(sharedLimit))
	}, true)}, contended: true,
		desc: fmt.Sprintf("`ObtainShared(ctx, key, WithLimit(%d))` + `Release` on ONE key: a semaphore of %d permits; the goroutines beyond %d queue "+
			"and are let in by releases (`ObtainShared` rather than `TryObtainShared`, which would spin on refusals)", sharedLimit, sharedLimit, sharedLimit)},
	{cycleContender: cycleContender{exclusiveOneKeyName, lockCycle(func(ctx context.Context, l *redlease.Locker, key string) (*redlease.Lock, error) {
		return l.Obtain(ctx, key)
	}, true)}, contended: true,
		desc: "`Obtain` + `Release` on ONE key: the exclusive lock the shared leases would replace for readers (scenario 3's hand-off at hold 0, on one Locker)"},
	{cycleContender: cycleContenderNamed(rawFloorName), desc: "scenario 1's `SET NX PX` + `EVALSHA` compare-and-delete, each goroutine on its own key"},
}

// runsWith reports whether the contender runs with n goroutines.
func (c sharedContender) runsWith(n int) bool { return !c.contended || n > 1 }

// commandMix prints a run's commands per cycle by name, e.g.
// "evalsha 1, set 1", in name order.
func commandMix(cnt counts, cycles int64) string {
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(cnt.byName)) {
		if strings.HasPrefix(name, "config") || strings.HasPrefix(name, "info") {
			continue // the measurement's own
		}
		parts = append(parts, name+" "+format(perOp(cnt.byName[name], cycles), unitCount))
	}
	return strings.Join(parts, ", ")
}

// scenarioShared runs scenario 7, interleaved over rounds.
func scenarioShared(ctx context.Context, e *env, cfg config, progress func(string)) (*table, error) {
	variants := make([]string, len(cfg.cycleGoroutines))
	for i, n := range cfg.cycleGoroutines {
		variants[i] = strconv.Itoa(n)
	}
	names := contenderNames(sharedContenders, func(c sharedContender) string { return c.name })
	t := newTable("shared", "7. Shared leases: acquire + release cycle", "goroutines", variants, names, []metric{
		{key: "ops", label: "cycles/s", unit: unitRate, higher: true, ratio: true, against: rawFloorName},
		{key: "p50", label: "p50 cycle", unit: unitMicros},
		{key: "p99", label: "p99 cycle", unit: unitMicros},
		{key: "cmds", label: "cmds/cycle", unit: unitCount, ratio: true},
		{key: "rt", label: "round trips/cycle", unit: unitCount},
		{key: "allocs", label: "allocs/cycle", unit: unitCount},
	})
	t.ref = exclusiveName
	t.intro = fmt.Sprintf("As scenario 2 (%v per run after an unmeasured warm-up, every library default: TTL 30s, watchdog on), "+
		"with shared leases next to the exclusive cycle and the raw floor, all in the same interleaved rounds. "+
		"With 1 goroutine every lease is uncontended: cmds/cycle there is what one shared acquire + release costs in Redis commands "+
		"(`INFO commandstats`, commands inside scripts included, as everywhere), next to the exclusive one measured the same way. "+
		"\"× %s\" divides by the exclusive cycle's figure in the same round; \"× raw floor\" by the raw floor's. "+
		"The limited and one-key exclusive variants run with more than one goroutine only.", cfg.cycleDur, exclusiveName)
	for _, ct := range sharedContenders {
		t.notes = append(t.notes, "**"+ct.name+"**: "+ct.desc+".")
	}
	mixes := map[string]string{} // contender -> its command mix at 1 goroutine, last round
	for r := range cfg.fastRounds {
		for vi, n := range cfg.cycleGoroutines {
			var cts []sharedContender
			for _, ct := range sharedContenders {
				if ct.runsWith(n) {
					cts = append(cts, ct)
				}
			}
			for i := range cts {
				ct := cts[(i+r)%len(cts)]
				res, err := measureCycle(ctx, e, ct.cycleContender, n, cfg.cycleDur)
				if err != nil {
					if ctx.Err() != nil {
						return t, ctx.Err()
					}
					t.fail(variants[vi], ct.name, r, err)
					progress(fmt.Sprintf("shared r%d g=%d %-27s FAILED: %v", r+1, n, ct.name, err))
					continue
				}
				vals := res.values()
				if n == 1 {
					mixes[ct.name] = commandMix(res.counts, res.cycles)
				}
				t.record(variants[vi], ct.name, vals)
				progress(fmt.Sprintf("shared r%d g=%-2d %-27s %8.0f cycles/s p50 %6.1fµs cmds/op %.2f",
					r+1, n, ct.name, vals["ops"], vals["p50"], vals["cmds"]))
			}
		}
	}
	for _, name := range names {
		if mix, ok := mixes[name]; ok {
			t.notes = append(t.notes, fmt.Sprintf("Commands per cycle of %s, 1 goroutine, last round: %s.", name, mix))
		}
	}
	return t, nil
}
