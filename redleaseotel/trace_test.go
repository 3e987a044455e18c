package redleaseotel

import (
	"context"
	"errors"
	"maps"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/redlease/redlease"
)

// attrs returns a span's attributes as a set.
func attrs(sp sdktrace.ReadOnlySpan) attribute.Set { return attribute.NewSet(sp.Attributes()...) }

// only returns the one span named name that s ended, or fails.
func only(t *testing.T, s *side, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	spans := s.ended(name)
	if len(spans) != 1 {
		var names []string
		for _, sp := range s.spans.Ended() {
			names = append(names, sp.Name())
		}
		t.Fatalf("%d spans named %q, want 1; ended: %q", len(spans), name, names)
	}
	return spans[0]
}

// checkProducer checks a send span.
func checkProducer(t *testing.T, sp sdktrace.ReadOnlySpan, dest, id string) {
	t.Helper()
	if sp.SpanKind() != trace.SpanKindProducer {
		t.Errorf("%s: kind %v, want producer", sp.Name(), sp.SpanKind())
	}
	want := []attribute.KeyValue{semconv.MessagingSystemKey.String("redlease"), semconv.MessagingDestinationName(dest),
		semconv.MessagingOperationName("send"), semconv.MessagingOperationTypeSend, semconv.MessagingMessageID(id)}
	if !has(attrs(sp), want...) {
		t.Errorf("%s: attributes %v, want %v", sp.Name(), sp.Attributes(), want)
	}
	if sp.Status().Code != codes.Unset {
		t.Errorf("%s: status %v", sp.Name(), sp.Status())
	}
}

// checkConsumer checks a process span: kind, attributes, and parent: the
// producer's span when parent is invalid, else parent with a link to the
// producer's span.
func checkConsumer(t *testing.T, sp sdktrace.ReadOnlySpan, dest, id string, attempt int, producer, parent trace.SpanContext) {
	t.Helper()
	if sp.SpanKind() != trace.SpanKindConsumer {
		t.Errorf("%s: kind %v, want consumer", sp.Name(), sp.SpanKind())
	}
	want := append(queueAttrs(dest), semconv.MessagingOperationName("process"),
		semconv.MessagingOperationTypeProcess, semconv.MessagingMessageID(id), AttemptKey.Int(attempt))
	if !has(attrs(sp), want...) {
		t.Errorf("%s: attributes %v, want %v", sp.Name(), sp.Attributes(), want)
	}
	links := sp.Links()
	if !parent.IsValid() {
		parent = producer
		if len(links) != 0 {
			t.Errorf("%s: links %+v, want none: the producer is the parent", sp.Name(), links)
		}
	} else if len(links) != 1 || !links[0].SpanContext.Equal(producer.WithRemote(true)) {
		t.Errorf("%s: links %+v, want one to %v", sp.Name(), links, producer)
	}
	if sp.Parent().SpanID() != parent.SpanID() || sp.SpanContext().TraceID() != parent.TraceID() {
		t.Errorf("%s: parent %v in trace %v, want parent %v in trace %v", sp.Name(), sp.Parent().SpanID(),
			sp.SpanContext().TraceID(), parent.SpanID(), parent.TraceID())
	}
}

// TestQueueTrace: a message enqueued by one process and consumed by another
// (each with its own client, providers and Hook) gives a producer span and
// a consumer span in the same trace, the consumer's parent the producer's
// span; the handler's context carries the consumer span; the caller's
// headers are not changed.
func TestQueueTrace(t *testing.T) {
	mr := newRedis(t)
	prod, cons := newSide(t, mr.Addr()), newSide(t, mr.Addr())
	ctx := context.Background()
	pq := redlease.NewQueue(prod.client, "jobs", redlease.WithHook(prod.hook))
	cq := redlease.NewQueue(cons.client, "jobs", redlease.WithHook(cons.hook))

	headers := map[string]string{"tenant": "a"}
	before := maps.Clone(headers)
	id, err := pq.Enqueue(ctx, []byte("x"), redlease.WithHeaders(headers))
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(headers, before) {
		t.Errorf("Enqueue changed the caller's headers: %v", headers)
	}
	send := only(t, prod, "send jobs")
	checkProducer(t, send, "jobs", id)

	var inHandler trace.SpanContext
	var got map[string]string
	consume(t, ctx, cq, 1, func(ctx context.Context, m *redlease.Message) error {
		inHandler = trace.SpanContextFromContext(ctx)
		got = m.Headers
		return nil
	})
	if got["tenant"] != "a" || got["traceparent"] == "" {
		t.Errorf("consumer saw headers %v, want tenant and traceparent", got)
	}
	proc := only(t, cons, processSpan("jobs"))
	checkConsumer(t, proc, "jobs", id, 1, send.SpanContext(), trace.SpanContext{})
	if !inHandler.Equal(proc.SpanContext()) {
		t.Errorf("handler's context carries span %v, want the consumer span %v", inHandler, proc.SpanContext())
	}
	if len(prod.ended(processSpan("jobs"))) != 0 || len(cons.ended("send jobs")) != 0 {
		t.Error("a side recorded the other side's span")
	}
}

// TestQueueTraceAmbient: Consume called under a span of the consumer's own
// makes it the process span's parent, and the producer's span a link only.
func TestQueueTraceAmbient(t *testing.T) {
	mr := newRedis(t)
	prod, cons := newSide(t, mr.Addr()), newSide(t, mr.Addr())
	pq := redlease.NewQueue(prod.client, "jobs", redlease.WithHook(prod.hook))
	cq := redlease.NewQueue(cons.client, "jobs", redlease.WithHook(cons.hook))
	id, err := pq.Enqueue(context.Background(), []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	send := only(t, prod, "send jobs")

	ctx, worker := cons.tp.Tracer("test").Start(context.Background(), "worker")
	consume(t, ctx, cq, 1, func(context.Context, *redlease.Message) error { return nil })
	worker.End()
	proc := only(t, cons, processSpan("jobs"))
	checkConsumer(t, proc, "jobs", id, 1, send.SpanContext(), worker.SpanContext())
	if proc.SpanContext().TraceID() == send.SpanContext().TraceID() {
		t.Error("the process span joined the producer's trace despite an ambient span")
	}
}

// TestTopicTrace: the same through a topic: Publish on one side, a
// subscription's Consume on the other.
func TestTopicTrace(t *testing.T) {
	mr := newRedis(t)
	prod, cons := newSide(t, mr.Addr()), newSide(t, mr.Addr())
	ctx := context.Background()
	sub, err := redlease.NewTopic(cons.client, "events", redlease.WithHook(cons.hook)).Subscribe(ctx, "billing")
	if err != nil {
		t.Fatal(err)
	}
	pt := redlease.NewTopic(prod.client, "events", redlease.WithHook(prod.hook))
	id, err := pt.Publish(ctx, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	send := only(t, prod, "send events")
	checkProducer(t, send, "events", id)
	consume(t, ctx, sub, 1, func(context.Context, *redlease.Message) error { return nil })
	proc := only(t, cons, processSpan("events/billing"))
	checkConsumer(t, proc, "events/billing", id, 1, send.SpanContext(), trace.SpanContext{})
}

// TestTraceSurvivesRetry: a message nacked, redelivered, dead-lettered and
// moved back by RetryDead keeps its trace context: every delivery's
// process span is a child of the one producer span, with the attempt
// counted, and a failed handler sets the error status.
func TestTraceSurvivesRetry(t *testing.T) {
	mr := newRedis(t)
	prod, cons := newSide(t, mr.Addr()), newSide(t, mr.Addr())
	ctx := context.Background()
	pq := redlease.NewQueue(prod.client, "jobs", redlease.WithHook(prod.hook))
	cq := redlease.NewQueue(cons.client, "jobs", redlease.WithHook(cons.hook), redlease.WithMaxAttempts(2),
		redlease.WithRetryBackoff(func(int) time.Duration { return time.Millisecond }))
	id, err := pq.Enqueue(ctx, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	send := only(t, prod, "send jobs")
	failed := errors.New("boom")
	consume(t, ctx, cq, 2, func(context.Context, *redlease.Message) error { return failed })
	if dl, err := cq.DeadLetters(ctx, 10); err != nil || len(dl) != 1 {
		t.Fatalf("dead letters %v, %v; want the message", dl, err)
	}
	if n, err := cq.RetryDead(ctx, id); err != nil || n != 1 {
		t.Fatalf("RetryDead: %d, %v", n, err)
	}
	consume(t, ctx, cq, 1, func(context.Context, *redlease.Message) error { return nil })

	spans := cons.ended(processSpan("jobs"))
	if len(spans) != 3 {
		t.Fatalf("%d process spans, want 3", len(spans))
	}
	for i, want := range []struct {
		attempt int
		status  codes.Code
	}{{1, codes.Error}, {2, codes.Error}, {1, codes.Unset}} {
		checkConsumer(t, spans[i], "jobs", id, want.attempt, send.SpanContext(), trace.SpanContext{})
		if spans[i].Status().Code != want.status {
			t.Errorf("delivery %d: status %v, want %v", i+1, spans[i].Status(), want.status)
		}
	}
	if d := spans[0].Status().Description; d != "boom" {
		t.Errorf("status description %q, want the handler's error", d)
	}
}

// TestEnqueueError: a failed Enqueue ends its send span with an error
// status and error.type.
func TestEnqueueError(t *testing.T) {
	mr := newRedis(t)
	prod := newSide(t, mr.Addr())
	q := redlease.NewQueue(prod.client, "jobs", redlease.WithHook(prod.hook))
	if _, err := q.Enqueue(context.Background(), []byte("x"), redlease.WithID("a")); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Enqueue(context.Background(), []byte("x"), redlease.WithID("a")); !errors.Is(err, redlease.ErrDuplicate) {
		t.Fatalf("second Enqueue: %v, want ErrDuplicate", err)
	}
	spans := prod.ended("send jobs")
	if len(spans) != 2 {
		t.Fatalf("%d send spans, want 2", len(spans))
	}
	if spans[0].Status().Code != codes.Unset || spans[1].Status().Code != codes.Error {
		t.Errorf("statuses %v, %v; want unset, error", spans[0].Status(), spans[1].Status())
	}
	if !has(attrs(spans[1]), semconv.ErrorTypeKey.String("_OTHER")) {
		t.Errorf("failed send's attributes %v lack error.type", spans[1].Attributes())
	}
}

// TestHandlerPanic: a handler's panic, which Consume recovers, still ends
// its process span with an error status and records its duration.
func TestHandlerPanic(t *testing.T) {
	mr := newRedis(t)
	s := newSide(t, mr.Addr())
	ctx := context.Background()
	q := redlease.NewQueue(s.client, "jobs", redlease.WithHook(s.hook), redlease.WithMaxAttempts(1))
	if _, err := q.Enqueue(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
	var errs atomic.Int64
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		q.Consume(cctx, func(context.Context, *redlease.Message) error { panic("boom") },
			redlease.WithErrorHandler(func(error) { errs.Add(1) }))
	}()
	eventually(t, "the panic reported", func() bool { return errs.Load() > 0 })
	cancel()
	<-done
	spans := s.ended(processSpan("jobs"))
	if len(spans) != 1 || spans[0].Status().Code != codes.Error {
		t.Fatalf("process spans %v, want one with an error status", spans)
	}
	n, _, _ := histogram(s.collect(t), "messaging.process.duration", semconv.ErrorTypeKey.String("_OTHER"))
	if n != 1 {
		t.Errorf("messaging.process.duration: %d failed calls, want 1", n)
	}
}
