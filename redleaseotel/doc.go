// Package redleaseotel reports what redlease's Lockers, Queues and Topics
// do as OpenTelemetry metrics and traces.
//
// [NewHook] returns a [Hook]; install it with [redlease.WithHook] on each
// Locker, Queue and Topic to be observed. It records:
//
//   - a PRODUCER span "send <destination>" around each [redlease.Queue.Enqueue]
//     and [redlease.Topic.Publish], whose context travels to the consumer in
//     the message's headers;
//   - a CONSUMER span "process <queue>" around each [redlease.Queue.Consume]
//     handler call, a child of the producer's span (or, when Consume runs
//     under a span of its own, that span's child, linked to the producer's);
//   - counters of messages sent, claimed, acked, nacked, dead-lettered and
//     reclaimed, and a histogram of handler durations, per queue;
//   - histograms of lock acquisition latency and wait, and counters of
//     hand-offs, lost leases, renewals and failed renewals;
//   - with [Hook.ObserveQueues], gauges of each queue's depth by state.
//
// Names follow the OpenTelemetry semantic conventions for messaging where
// they have one (messaging.client.sent.messages,
// messaging.client.consumed.messages, messaging.process.duration, with
// messaging.system "redlease"); the rest are named redlease.*.
//
// The trace context crosses from producer to consumer only through a
// propagator: [WithPropagator]'s, or else otel's global one, which is a
// no-op until the program sets one, e.g.
//
//	otel.SetTextMapPropagator(propagation.TraceContext{})
//
// Without one, producer and consumer spans are recorded but not connected.
package redleaseotel
