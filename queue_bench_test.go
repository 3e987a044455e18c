package redlease

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkQueue enqueues b.N no-op messages in one batch, then consumes
// them with Consume at concurrency 16, against the real Redis. It reports
// end-to-end messages per second and Redis commands per message (from INFO
// commandstats, commands inside scripts included).
func BenchmarkQueue(b *testing.B) {
	for _, conc := range []int{1, 16} {
		b.Run("concurrency="+strconv.Itoa(conc), func(b *testing.B) {
			c := realRedis(b)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			q := NewQueue(c, fmt.Sprintf("bench-%d-%d", conc, b.N), WithPrefix("bench"))
			payloads := make([][]byte, b.N)
			for i := range payloads {
				payloads[i] = []byte("x")
			}
			before := commandStats(b, c)
			b.ResetTimer()
			start := time.Now()
			if _, err := q.EnqueueBatch(ctx, payloads); err != nil {
				b.Fatal(err)
			}
			var done atomic.Int64
			err := q.Consume(ctx, func(context.Context, *Message) error {
				if done.Add(1) == int64(b.N) {
					cancel()
				}
				return nil
			}, WithConcurrency(conc))
			elapsed := time.Since(start)
			b.StopTimer()
			if err != context.Canceled {
				b.Fatal(err)
			}
			_, total := commandsSince(b, c, before)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
			b.ReportMetric(float64(total)/float64(b.N), "cmds/msg")
			if s, _ := q.Stats(context.Background()); s.depth() != (Stats{}) {
				b.Fatalf("stats %+v after consuming everything", s)
			}
		})
	}
}

// BenchmarkIdlePickup measures how long a message enqueued into an idle
// queue takes to reach a consumer waiting in Claim.
func BenchmarkIdlePickup(b *testing.B) {
	c := realRedis(b)
	ctx := context.Background()
	q := NewQueue(c, "bench-pickup", WithPrefix("bench"))
	lat := make([]float64, 0, b.N)
	for range b.N {
		got := make(chan time.Time, 1)
		go func() {
			m, err := q.Claim(ctx)
			if err != nil {
				b.Error(err)
			} else {
				m.Ack(ctx)
			}
			got <- time.Now()
		}()
		time.Sleep(2 * time.Millisecond) // let the consumer block
		start := time.Now()
		if _, err := q.Enqueue(ctx, []byte("x")); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, float64((<-got).Sub(start)))
	}
	b.ReportMetric(quantile(lat, 0.5)/1e3, "p50-µs")
	b.ReportMetric(quantile(lat, 0.99)/1e3, "p99-µs")
}
