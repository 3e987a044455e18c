package redleaseotel

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/redlease/redlease"
	"github.com/redlease/redlease/internal/redistest"
)

// Bounds on the tests' waits.
const (
	waitFor     = 10 * time.Second // longest a test waits for handlers or an observation
	leakGrace   = 2 * time.Second  // how long goroutines may take to end after a test
	stopTimeout = 5 * time.Second  // longest Consume may take to return once cancelled
)

func TestMain(m *testing.M) {
	flag.Parse()
	if !testing.Verbose() {
		slog.SetDefault(slog.New(slog.DiscardHandler))
	}
	code := m.Run()
	if code == 0 {
		if err := redistest.Leaks(leakGrace); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines outlived the tests:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// processSpan is the name of the process span of a message of queue name.
func processSpan(name string) string { return "process " + name }

// side is one "process": its own Redis client, providers, recorders and
// Hook, as a producer or consumer in another program would have.
type side struct {
	client *redis.Client
	tp     *sdktrace.TracerProvider
	spans  *tracetest.SpanRecorder
	reader *sdkmetric.ManualReader
	hook   *Hook
}

// newRedis starts a miniredis for one test and returns its address.
func newRedis(t *testing.T) *miniredis.Miniredis {
	t.Helper()
	return miniredis.RunT(t)
}

// newSide returns a side on the Redis at addr, its Hook made with opts
// after the side's own providers and a TraceContext propagator.
func newSide(t *testing.T, addr string, opts ...Option) *side {
	t.Helper()
	s := &side{
		client: redis.NewClient(&redis.Options{Addr: addr}),
		spans:  tracetest.NewSpanRecorder(),
		reader: sdkmetric.NewManualReader(),
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSpanProcessor(s.spans))
	s.tp = tp
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(s.reader))
	t.Cleanup(func() {
		s.client.Close()
		tp.Shutdown(context.Background())
		mp.Shutdown(context.Background())
	})
	s.hook = NewHook(append([]Option{WithTracerProvider(tp), WithMeterProvider(mp),
		WithPropagator(propagation.TraceContext{})}, opts...)...)
	return s
}

// ended returns the side's ended spans named name.
func (s *side) ended(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, sp := range s.spans.Ended() {
		if sp.Name() == name {
			out = append(out, sp)
		}
	}
	return out
}

// collect reads the side's metrics.
func (s *side) collect(t *testing.T) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := s.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("collect: %v", err)
	}
	return rm
}

// find returns the metric called name, if recorded.
func find(rm metricdata.ResourceMetrics, name string) (metricdata.Metrics, bool) {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

// has reports whether set holds every attribute of want.
func has(set attribute.Set, want ...attribute.KeyValue) bool {
	for _, kv := range want {
		if v, ok := set.Value(kv.Key); !ok || v != kv.Value {
			return false
		}
	}
	return true
}

// sum adds up the int64 sum or gauge points of metric name whose
// attributes include want; ok is false if the metric has no such point.
func sum(rm metricdata.ResourceMetrics, name string, want ...attribute.KeyValue) (total int64, ok bool) {
	m, found := find(rm, name)
	if !found {
		return 0, false
	}
	var points []metricdata.DataPoint[int64]
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		points = d.DataPoints
	case metricdata.Gauge[int64]:
		points = d.DataPoints
	}
	for _, p := range points {
		if has(p.Attributes, want...) {
			total += p.Value
			ok = true
		}
	}
	return total, ok
}

// histogram returns the points of float64 histogram name whose attributes
// include want, merged: their count, sum and maximum.
func histogram(rm metricdata.ResourceMetrics, name string, want ...attribute.KeyValue) (count uint64, total, maxV float64) {
	m, found := find(rm, name)
	if !found {
		return 0, 0, 0
	}
	d, _ := m.Data.(metricdata.Histogram[float64])
	for _, p := range d.DataPoints {
		if has(p.Attributes, want...) {
			count += p.Count
			total += p.Sum
			if mx, ok := p.Max.Value(); ok && mx > maxV {
				maxV = mx
			}
		}
	}
	return count, total, maxV
}

// consume runs q.Consume with handler under ctx until handler was called
// n times, then cancels it and waits for it to return; it fails the test
// if that takes longer than waitFor.
func consume(t *testing.T, ctx context.Context, q *redlease.Queue, n int, handler func(context.Context, *redlease.Message) error) {
	t.Helper()
	var calls atomic.Int64
	done := make(chan struct{})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	returned := make(chan error, 1)
	go func() {
		returned <- q.Consume(ctx, func(ctx context.Context, m *redlease.Message) error {
			err := handler(ctx, m)
			if calls.Add(1) == int64(n) {
				close(done)
			}
			return err
		}, redlease.WithShutdownTimeout(stopTimeout))
	}()
	timer := time.NewTimer(waitFor)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		t.Errorf("%d of %d handler calls within %v", calls.Load(), n, waitFor)
	}
	cancel()
	select {
	case err := <-returned:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Consume: %v", err)
		}
	case <-time.After(stopTimeout + 2*time.Second):
		t.Fatalf("Consume did not return")
	}
}

// eventually polls cond every 10ms until it holds or waitFor passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", waitFor, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// histogramPoints returns the attribute sets of a float64 histogram's
// points.
func histogramPoints(m metricdata.Metrics) []attribute.Set {
	d, _ := m.Data.(metricdata.Histogram[float64])
	var sets []attribute.Set
	for _, p := range d.DataPoints {
		sets = append(sets, p.Attributes)
	}
	return sets
}
