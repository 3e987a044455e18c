package redleaseotel

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/redlease/redlease"
)

// discard is a span processor that drops the spans it is given.
type discard struct{}

func (discard) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (discard) OnEnd(sdktrace.ReadOnlySpan)                     {}
func (discard) ForceFlush(context.Context) error                { return nil }
func (discard) Shutdown(context.Context) error                  { return nil }

// benchHook returns a Hook on SDK providers that record everything and
// export nothing, as bench's otelcmp does by default.
func benchHook(b *testing.B) *Hook {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSpanProcessor(discard{}))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	b.Cleanup(func() {
		tp.Shutdown(context.Background())
		mp.Shutdown(context.Background())
	})
	return NewHook(WithTracerProvider(tp), WithMeterProvider(mp), WithPropagator(propagation.TraceContext{}))
}

// BenchmarkObserve: one message observation of a known queue.
func BenchmarkObserve(b *testing.B) {
	h := benchHook(b)
	ctx := context.Background()
	o := redlease.Observation{Kind: redlease.MessageAcked, Name: "jobs", ID: "a", Attempt: 1}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h.Observe(ctx, o)
		}
	})
}

// BenchmarkEnqueue: Hook.Enqueue around a send that does nothing.
func BenchmarkEnqueue(b *testing.B) {
	h := benchHook(b)
	ctx := context.Background()
	next := func(context.Context, map[string]string) (string, error) { return "id", nil }
	b.ReportAllocs()
	for b.Loop() {
		h.Enqueue(ctx, "jobs", nil, next)
	}
}

// BenchmarkHandle: Hook.Handle of a message that carries a trace context,
// around a handler that does nothing.
func BenchmarkHandle(b *testing.B) {
	h := benchHook(b)
	ctx := context.Background()
	var headers map[string]string
	h.Enqueue(ctx, "jobs", nil, func(_ context.Context, hd map[string]string) (string, error) {
		headers = hd
		return "id", nil
	})
	m := &redlease.Message{ID: "id", Headers: headers, Attempt: 1}
	next := func(context.Context, *redlease.Message) error { return nil }
	b.ReportAllocs()
	for b.Loop() {
		h.Handle(ctx, m, next)
	}
}
