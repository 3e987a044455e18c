package main

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sampling defaults: how often the dashboard reads every queue's stats,
// how much history it keeps, and how often it scans for new queues.
const (
	defaultInterval = 5 * time.Second
	defaultWindow   = 15 * time.Minute
	rediscoverEvery = 6 // samples
	rateSpan        = time.Minute
	sampleTimeout   = 30 * time.Second
)

// totals are a queue's counters at one instant.
type totals struct {
	at                                    time.Time
	enqueued, acked, nacked, deadLettered int64
}

// snapshot is what the sampler last saw.
type snapshot struct {
	At        time.Time
	Queues    queuesView
	Inventory inventory
	Err       error // the last sample's, if it failed
}

// sampler reads every queue's stats every interval, keeping the totals
// for window, so the dashboard shows throughput from its own samples.
type sampler struct {
	client   redis.UniversalClient
	prefix   string
	scan     scanner
	interval time.Duration
	keep     int // samples kept per queue

	mu      sync.RWMutex
	snap    snapshot
	history map[string][]totals // by queue name, oldest first
	samples int
}

func newSampler(c redis.UniversalClient, prefix string, scan scanner, interval, window time.Duration) *sampler {
	return &sampler{client: c, prefix: prefix, scan: scan, interval: interval,
		keep: max(int(window/interval), 2) + 1, history: map[string][]totals{}}
}

// run samples until ctx ends. The first sample is taken by the caller.
func (s *sampler) run(ctx context.Context) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.sample(ctx)
		}
	}
}

// sample takes one sample: a scan every few samples (and the first), then
// every known queue's stats.
func (s *sampler) sample(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, sampleTimeout)
	defer cancel()
	s.mu.RLock()
	inv, n := s.snap.Inventory, s.samples
	s.mu.RUnlock()
	var err error
	if n%rediscoverEvery == 0 {
		var fresh inventory
		if fresh, err = discover(ctx, s.client, s.prefix, s.scan); err == nil {
			inv = fresh
		}
	}
	var qs queuesView
	if err == nil {
		qs, err = loadQueues(ctx, s.client, s.prefix, inv)
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples++
	if err != nil {
		s.snap.Err = err
		return
	}
	s.snap = snapshot{At: now, Queues: qs, Inventory: inv}
	seen := map[string]bool{}
	for _, q := range allQueues(qs) {
		seen[q.Name] = true
		st := q.Stats
		h := append(s.history[q.Name], totals{at: now, enqueued: st.Enqueued, acked: st.Acked, nacked: st.Nacked, deadLettered: st.DeadLettered})
		if len(h) > s.keep {
			h = h[len(h)-s.keep:]
		}
		s.history[q.Name] = h
	}
	for name := range s.history {
		if !seen[name] {
			delete(s.history, name)
		}
	}
}

// allQueues lists the queues and then the subscriptions of v.
func allQueues(v queuesView) []queueView {
	out := append([]queueView(nil), v.Queues...)
	for _, t := range v.Topics {
		out = append(out, t.Subscriptions...)
	}
	return out
}

// latest returns the last snapshot.
func (s *sampler) latest() snapshot {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.snap
}

// throughput is a queue's recent rates and the history they come from.
type throughput struct {
	EnqueuedPerMin, AckedPerMin, NackedPerMin, DeadPerMin float64
	Known                                                 bool // at least two samples span some time
	Enqueued, Acked                                       []int64
}

// rates returns queue name's rates per minute over the last rateSpan (or
// what history there is), and per-sample deltas over the window.
func (s *sampler) rates(name string) throughput {
	s.mu.RLock()
	h := s.history[name]
	s.mu.RUnlock()
	var r throughput
	if len(h) < 2 {
		return r
	}
	last := h[len(h)-1]
	first := h[0]
	for _, p := range h {
		if last.at.Sub(p.at) <= rateSpan {
			first = p
			break
		}
	}
	if first.at.Equal(last.at) {
		first = h[len(h)-2]
	}
	mins := last.at.Sub(first.at).Minutes()
	if mins <= 0 {
		return r
	}
	per := func(a, b int64) float64 { return float64(max(b-a, 0)) / mins }
	r = throughput{Known: true,
		EnqueuedPerMin: per(first.enqueued, last.enqueued), AckedPerMin: per(first.acked, last.acked),
		NackedPerMin: per(first.nacked, last.nacked), DeadPerMin: per(first.deadLettered, last.deadLettered)}
	for i := 1; i < len(h); i++ {
		r.Enqueued = append(r.Enqueued, max(h[i].enqueued-h[i-1].enqueued, 0))
		r.Acked = append(r.Acked, max(h[i].acked-h[i-1].acked, 0))
	}
	return r
}
