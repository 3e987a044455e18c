package redleaseotel_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/redlease/redlease"
	"github.com/redlease/redlease/redleaseotel"
)

// Example sets up a Hook with an SDK TracerProvider and MeterProvider (a
// real program would give them exporters), installs it on a queue, and
// shows the spans and a counter that one message leaves.
func Example() {
	mr, err := miniredis.Run() // a real program connects to its Redis
	if err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer client.Close()

	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())

	hook := redleaseotel.NewHook(
		redleaseotel.WithTracerProvider(tp),
		redleaseotel.WithMeterProvider(mp),
		// Or otel.SetTextMapPropagator(propagation.TraceContext{}) once.
		redleaseotel.WithPropagator(propagation.TraceContext{}),
	)
	q := redlease.NewQueue(client, "emails", redlease.WithHook(hook))
	stop, err := hook.ObserveQueues(q) // depth gauges
	if err != nil {
		log.Fatal(err)
	}
	defer stop()

	ctx := context.Background()
	if _, err := q.Enqueue(ctx, []byte("hello")); err != nil {
		log.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_ = q.Consume(cctx, func(ctx context.Context, m *redlease.Message) error {
		defer cancel() // one message is enough here
		// ctx carries the "process emails" span, child of "send emails".
		return nil
	})

	for _, s := range spans.Ended() {
		fmt.Println(s.SpanKind(), s.Name())
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		log.Fatal(err)
	}
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if m.Name == "messaging.client.sent.messages" {
			fmt.Println(m.Name, m.Data.(metricdata.Sum[int64]).DataPoints[0].Value)
		}
	}
	// Output:
	// producer send emails
	// consumer process emails
	// messaging.client.sent.messages 1
}
