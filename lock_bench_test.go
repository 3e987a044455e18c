package redlease

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// rawRelease is the least a compare-and-delete can cost: the floor that
// every lock built on SET NX PX pays.
var rawRelease = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`)

// BenchmarkCycle measures an uncontended TryObtain+Release with default
// options next to the raw floor (SET NX PX, then one EVALSHA delete),
// interleaved in blocks in the same run. ratio is redlease's rate over the
// floor's, the median over blocks.
func BenchmarkCycle(b *testing.B) {
	c := realRedis(b)
	ctx := context.Background()
	l := NewLocker(c, WithPrefix("bench-cycle"))
	defer l.Close()
	const block = 200
	var redleaseNs, rawNs []float64
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; {
		n := min(block, b.N-i)
		start := time.Now()
		for range n {
			lk, err := l.TryObtain(ctx, "k")
			require.NoError(b, err)
			require.NoError(b, lk.Release(ctx))
		}
		mid := time.Now()
		for range n {
			tok := strconv.Itoa(i)
			if ok, err := c.SetNX(ctx, "bench-cycle:raw", tok, 30*time.Second).Result(); err != nil || !ok {
				b.Fatal(ok, err)
			}
			require.NoError(b, rawRelease.Run(ctx, c, []string{"bench-cycle:raw"}, tok).Err())
		}
		redleaseNs = append(redleaseNs, float64(mid.Sub(start))/float64(n))
		rawNs = append(rawNs, float64(time.Since(mid))/float64(n))
		i += n
	}
	ratios := make([]float64, len(rawNs))
	for i := range rawNs {
		ratios[i] = rawNs[i] / redleaseNs[i]
	}
	b.ReportMetric(median(redleaseNs), "redlease-ns/cycle")
	b.ReportMetric(median(rawNs), "raw-ns/cycle")
	b.ReportMetric(median(ratios), "rate-ratio")
}

func median(v []float64) float64 { return quantile(v, 0.5) }

func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(int(q*float64(len(s))), len(s)-1)]
}

// BenchmarkHandoff measures the time from a holder's Release to the return
// of an Obtain blocked on the same key in another Locker on its own client.
func BenchmarkHandoff(b *testing.B) {
	c := realRedis(b)
	ctx := context.Background()
	addr := c.Options().Addr
	var lockers [2]*Locker
	for i := range lockers {
		cl := redis.NewClient(&redis.Options{Addr: addr})
		defer cl.Close()
		lockers[i] = NewLocker(cl, WithPrefix("bench-handoff"))
		defer lockers[i].Close()
	}
	lat := handoffs(b, ctx, lockers, b.N)
	b.ReportMetric(quantile(lat, 0.5)/1e3, "p50-µs")
	b.ReportMetric(quantile(lat, 0.99)/1e3, "p99-µs")
}

// handoffs passes one lock back and forth between two Lockers n times and
// returns each hand-off's latency in ns.
func handoffs(tb testing.TB, ctx context.Context, lockers [2]*Locker, n int) []float64 {
	held, err := lockers[0].TryObtain(ctx, "k")
	require.NoError(tb, err)
	lat := make([]float64, 0, n)
	for i := range n {
		waiter := lockers[(i+1)%2]
		got := make(chan *Lock)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			lk, err := waiter.Obtain(ctx, "k")
			if err != nil {
				tb.Error(err)
			}
			got <- lk
		}()
		for !queuedIn(waiter, held.name) {
			time.Sleep(20 * time.Microsecond)
		}
		start := time.Now()
		require.NoError(tb, held.Release(ctx))
		held = <-got
		lat = append(lat, float64(time.Since(start)))
		wg.Wait()
		if held == nil {
			tb.FailNow()
		}
	}
	held.Release(ctx)
	return lat
}

// BenchmarkLockVariants measures an uncontended TryObtain+Release cycle on
// one Redis, with WithReplicaAck(1) on a master with one replica, and on a
// quorum of 3 independent Redis servers, interleaved in blocks in one run.
// The *-ratio metrics are each variant's cycle time over the single
// instance's (the cost factor), medians over blocks.
func BenchmarkLockVariants(b *testing.B) {
	master, _ := redistest.OwnReplicated(b)
	mc := redis.NewClient(&redis.Options{Addr: master.Addr})
	defer mc.Close()
	var qnodes []redis.UniversalClient
	for range 3 {
		n := redistest.Own(b)
		c := redis.NewClient(&redis.Options{Addr: n.Addr})
		defer c.Close()
		qnodes = append(qnodes, c)
	}
	ctx := context.Background()
	single := NewLocker(mc, WithPrefix("bench-single"))
	defer single.Close()
	quorum := NewQuorumLocker(qnodes, WithPrefix("bench-quorum"))
	defer quorum.Close()
	variants := []struct {
		name string
		l    *Locker
		opts []LockOption
	}{
		{"single", single, nil},
		{"replica-ack", single, []LockOption{WithReplicaAck(1, time.Second)}},
		{"quorum3", quorum, nil},
	}
	const block = 100
	perBlock := make([][]float64, len(variants))
	b.ResetTimer()
	for i := 0; i < b.N; {
		n := min(block, b.N-i)
		for v, variant := range variants {
			start := time.Now()
			for range n {
				lk, err := variant.l.TryObtain(ctx, "k-"+variant.name, variant.opts...)
				if err != nil {
					b.Fatal(variant.name, err)
				}
				if err := lk.Release(ctx); err != nil {
					b.Fatal(variant.name, err)
				}
			}
			perBlock[v] = append(perBlock[v], float64(time.Since(start))/float64(n))
		}
		i += n
	}
	for v, variant := range variants {
		b.ReportMetric(median(perBlock[v])/1e3, variant.name+"-µs/cycle")
		if v > 0 {
			ratios := make([]float64, len(perBlock[v]))
			for i := range ratios {
				ratios[i] = perBlock[v][i] / perBlock[0][i]
			}
			b.ReportMetric(median(ratios), variant.name+"-ratio")
		}
	}
}
