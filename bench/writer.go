package main

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redlease/redlease"
)

// Scenario 8: a writer's wait under a stream of readers. Readers hold
// shared leases back to back on one key; a writer asks for the exclusive
// lease now and then. Exclusive waiters come first, so the writer should
// wait about one reader hold (the readers already in finish) plus a
// hand-off, however many readers keep coming.

// streamConfig is scenario 8's shape; results.md prints it.
type streamConfig struct {
	readers, lockers int           // reader goroutines, spread over that many Lockers
	readerHold       time.Duration // each shared lease is held this long
	writerEvery      time.Duration // the writer asks for the lock this often
	writerHold       time.Duration // and holds it this long
}

var stream = streamConfig{
	readers: 8, lockers: 4,
	readerHold:  time.Millisecond,
	writerEvery: 50 * time.Millisecond,
	writerHold:  100 * time.Microsecond,
}

// Names of scenario 8's contenders; readersWriterName is its reference.
const (
	readersWriterName = "readers + writer"
	readersAloneName  = "readers alone"
	writerAloneName   = "writer alone"
)

// streamContender says which of the stream's parts run.
type streamContender struct {
	name            string
	readers, writer bool
	desc            string
}

var streamContenders = []streamContender{
	{name: readersWriterName, readers: true, writer: true,
		desc: fmt.Sprintf("%d reader goroutines on %d `Locker`s (each on its own client, as %d processes would be) loop "+
			"`ObtainShared(ctx, key)`, hold %v (`time.Sleep`: %d readers busy-waiting at once would starve a 2-CPU machine), `Release`; "+
			"a writer on a `Locker` of its own calls `Obtain(ctx, key)` every %v, holds %v (busy-wait), `Release`",
			stream.readers, stream.lockers, stream.lockers, stream.readerHold, stream.readers, stream.writerEvery, stream.writerHold)},
	{name: readersAloneName, readers: true, desc: "the same readers without the writer: what the writer costs them"},
	{name: writerAloneName, writer: true, desc: "the same writer without readers: an uncontended `Obtain`, the floor of its wait"},
}

// maxWriterAcquires bounds the writer's loop beyond the run's length.
const maxWriterAcquires = 1 << 12

type streamResult struct {
	writerWaits []float64 // µs, sorted: the writer's Obtain call to holding
	handoffs    []float64 // µs, sorted: the last reader's Release call to the writer holding
	holds       []float64 // µs, sorted: readers' holds as they happened
	readerWaits []float64 // µs, sorted: a reader's ObtainShared call to holding
	readerAcq   int64
	perReader   []int64
	elapsed     time.Duration
}

// releaseClock keeps the latest time (since the run's start) a reader
// called Release.
type releaseClock struct {
	mu   sync.Mutex
	last time.Duration
}

func (c *releaseClock) mark(t time.Duration) {
	c.mu.Lock()
	c.last = max(c.last, t)
	c.mu.Unlock()
}

func (c *releaseClock) latest() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// streamRun runs ct's readers on readerLockers and its writer on
// writerLocker, all on key, for d.
func streamRun(ctx context.Context, ct streamContender, readerLockers []*redlease.Locker, writerLocker *redlease.Locker, key string, d time.Duration) (streamResult, error) {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		res      streamResult
		released releaseClock
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	base := time.Now()
	rctx, cancel := context.WithDeadline(ctx, base.Add(d))
	defer cancel()
	release := func(lk *redlease.Lock) error {
		c, cancelRelease := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		defer cancelRelease()
		return lk.Release(c)
	}
	nReaders := 0
	if ct.readers {
		nReaders = stream.readers
	}
	res.perReader = make([]int64, nReaders)
	holds := make([][]time.Duration, nReaders)
	waits := make([][]time.Duration, nReaders)
	for g := range nReaders {
		holds[g] = make([]time.Duration, 0, latCap)
		waits[g] = make([]time.Duration, 0, latCap)
		wg.Go(func() {
			l := readerLockers[g%len(readerLockers)]
			var acq int64
			want := time.Since(base)
			for range maxAcquiresPerGoroutine {
				lk, err := l.ObtainShared(rctx, key)
				if err != nil {
					if rctx.Err() == nil {
						fail(fmt.Errorf("reader: %w", err))
						cancel()
					}
					break
				}
				got := time.Since(base)
				if got < d {
					acq++
					waits[g] = append(waits[g], got-want)
				}
				time.Sleep(stream.readerHold)
				done := time.Since(base)
				holds[g] = append(holds[g], done-got)
				released.mark(done)
				if err := release(lk); err != nil {
					fail(fmt.Errorf("reader release: %w", err))
					cancel()
					break
				}
				if rctx.Err() != nil {
					break
				}
				want = time.Since(base)
			}
			mu.Lock()
			res.readerAcq += acq
			res.perReader[g] = acq
			mu.Unlock()
		})
	}
	var writerWaits, handoffs []time.Duration
	if ct.writer {
		wg.Go(func() {
			tick := time.NewTicker(stream.writerEvery)
			defer tick.Stop()
			for range maxWriterAcquires {
				select {
				case <-rctx.Done():
					return
				case <-tick.C:
				}
				asked := time.Since(base)
				lk, err := writerLocker.Obtain(rctx, key)
				if err != nil {
					if rctx.Err() == nil {
						fail(fmt.Errorf("writer: %w", err))
						cancel()
					}
					return
				}
				got := time.Since(base)
				// Readers cannot start while the writer waits, so the latest
				// reader release after it asked is the one that let it in.
				if lr := released.latest(); lr > asked && got < d {
					handoffs = append(handoffs, got-lr)
				}
				if got < d {
					writerWaits = append(writerWaits, got-asked)
				}
				spin(stream.writerHold)
				if err := release(lk); err != nil {
					fail(fmt.Errorf("writer release: %w", err))
					cancel()
					return
				}
			}
		})
	}
	wg.Wait()
	res.elapsed = min(time.Since(base), d)
	var allHolds, allWaits []time.Duration
	for g := range nReaders {
		allHolds = append(allHolds, holds[g]...)
		allWaits = append(allWaits, waits[g]...)
	}
	res.holds, res.readerWaits = durationsToMicros(allHolds), durationsToMicros(allWaits)
	res.writerWaits, res.handoffs = durationsToMicros(writerWaits), durationsToMicros(handoffs)
	return res, firstErr
}

// measureStream runs one measured run of ct after a warm-up on the same
// Lockers (connections dialled, scripts loaded, subscriptions made).
func measureStream(ctx context.Context, e *env, ct streamContender, d time.Duration) (streamResult, error) {
	var (
		clients []*redis.Client
		lockers []*redlease.Locker
	)
	defer func() {
		for i := range lockers {
			lockers[i].Close()
			clients[i].Close()
		}
	}()
	for range stream.lockers + 1 { // the last is the writer's
		c := e.client()
		clients = append(clients, c)
		lockers = append(lockers, redlease.NewLocker(c))
	}
	readerLockers, writerLocker := lockers[:stream.lockers], lockers[stream.lockers]
	// The warm-up lasts long enough for the writer to ask at least once.
	if _, err := streamRun(ctx, ct, readerLockers, writerLocker, e.uniq("stream"), 2*stream.writerEvery); err != nil {
		return streamResult{}, fmt.Errorf("warm-up: %w", err)
	}
	time.Sleep(warmupSettle)
	return streamRun(ctx, ct, readerLockers, writerLocker, e.uniq("stream"), d)
}

// scenarioWriter runs scenario 8, interleaved over rounds.
func scenarioWriter(ctx context.Context, e *env, cfg config, progress func(string)) (*table, error) {
	names := contenderNames(streamContenders, func(c streamContender) string { return c.name })
	t := newTable("writer", "8. A writer's wait under a stream of readers", "", nil, names, []metric{
		{key: "wp50", label: "writer wait p50", unit: unitMicros, ratio: true},
		{key: "wp99", label: "writer wait p99", unit: unitMicros, ratio: true},
		{key: "wmax", label: "writer wait max", unit: unitMicros},
		{key: "wholds", label: "writer wait p50 (reader holds)", unit: unitCount},
		{key: "handoff", label: "hand-off p50 (last reader → writer)", unit: unitMicros},
		{key: "hold", label: "reader hold p50", unit: unitMicros},
		{key: "racq", label: "reader acquisitions/s", unit: unitRate, higher: true, ratio: true},
		{key: "rwait", label: "reader wait p99", unit: unitMicros},
		{key: "rmin", label: "min reader share (% of fair)", unit: unitPct, higher: true},
		{key: "wacq", label: "writer acquisitions", unit: unitInt, sum: true},
	})
	t.ref = readersWriterName
	t.intro = fmt.Sprintf("ONE key, %v per run after an unmeasured warm-up. The writer asks every %v (a ticker, so it asks "+
		"whether or not readers hold); its wait runs from its `Obtain` call to holding the lock. Exclusive waiters come first: "+
		"once it is queued, new shared leases queue behind it, so it should wait for the readers already holding, about one reader hold "+
		"(%v) plus a hand-off. \"writer wait p50 (reader holds)\" divides that run's writer wait p50 by its reader hold p50 "+
		"(the hold as it happened: the sleep overshoots). hand-off = from the latest reader's `Release` call (after the writer asked) "+
		"to the writer holding. reader wait = from a reader's `ObtainShared` call to holding, which includes waiting behind the writer. "+
		"min reader share = the fewest acquisitions one reader made, as a percentage of a fair share: readers carry on, none starved. "+
		"Per-run p99s rest on about %d writer waits each; the pooled figures below the table take every round's together. "+
		"writer acquisitions is the total over all rounds.",
		cfg.streamDur, stream.writerEvery, stream.readerHold, int(cfg.streamDur/stream.writerEvery))
	for _, ct := range streamContenders {
		t.notes = append(t.notes, "**"+ct.name+"**: "+ct.desc+".")
	}
	for r := range cfg.fastRounds {
		for i := range streamContenders {
			ct := streamContenders[(i+r)%len(streamContenders)]
			res, err := measureStream(ctx, e, ct, cfg.streamDur)
			if err != nil {
				if ctx.Err() != nil {
					return t, ctx.Err()
				}
				t.fail("", ct.name, r, err)
				progress(fmt.Sprintf("writer r%d %-16s FAILED: %v", r+1, ct.name, err))
				continue
			}
			hold := quantile(res.holds, 0.50)
			rmin, _ := fairShare(res.perReader)
			vals := map[string]float64{
				"wp50":    quantile(res.writerWaits, 0.50),
				"wp99":    quantile(res.writerWaits, 0.99),
				"wmax":    quantile(res.writerWaits, 1),
				"wholds":  quantile(res.writerWaits, 0.50) / hold,
				"handoff": quantile(res.handoffs, 0.50),
				"hold":    hold,
				"racq":    math.NaN(),
				"rwait":   quantile(res.readerWaits, 0.99),
				"rmin":    rmin,
				"wacq":    math.NaN(),
			}
			if ct.writer {
				vals["wacq"] = float64(len(res.writerWaits))
			}
			if ct.readers {
				vals["racq"] = float64(res.readerAcq) / res.elapsed.Seconds()
			}
			t.record("", ct.name, vals)
			t.addSamples("", ct.name, res.writerWaits)
			progress(fmt.Sprintf("writer r%d %-16s writer wait p50 %s p99 %s (%s holds) hand-off %s; readers %s acq/s, hold %s, wait p99 %s, min share %s",
				r+1, ct.name, format(vals["wp50"], unitMicros), format(vals["wp99"], unitMicros), format(vals["wholds"], unitCount),
				format(vals["handoff"], unitMicros), format(vals["racq"], unitRate), format(hold, unitMicros),
				format(vals["rwait"], unitMicros), format(rmin, unitPct)))
		}
	}
	for _, name := range names {
		if pooled := sortedCopy(t.samples[cellKey{"", name}]); len(pooled) > 0 {
			t.notes = append(t.notes, fmt.Sprintf("Pooled over all rounds, %s: writer wait p50 %s, p99 %s, max %s (n=%d).",
				name, format(quantile(pooled, 0.50), unitMicros), format(quantile(pooled, 0.99), unitMicros),
				format(quantile(pooled, 1), unitMicros), len(pooled)))
		}
	}
	return t, nil
}
