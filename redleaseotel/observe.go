package redleaseotel

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/redlease/redlease"
)

// Operation names (messaging.operation.name) of this package's spans and
// measurements.
const (
	opSend    = "send"
	opClaim   = "claim"
	opProcess = "process"
)

// errorOther is the error.type of a failed operation: the semantic
// conventions' value for an error of no more specific known type, which
// keeps the attribute's values few.
const errorOther = "_OTHER"

// A dest holds what the Hook precomputes for one queue or topic name.
type dest struct {
	plain      metric.MeasurementOption // system, destination
	send       metric.MeasurementOption // and operation send
	claim      metric.MeasurementOption // and operation claim
	process    metric.MeasurementOption // and operation process
	processErr metric.MeasurementOption // and operation process, error.type

	sendSpan, processSpan string                  // span names
	sendStart             []trace.SpanStartOption // a send span's kind and attributes
	processAttrs          []attribute.KeyValue    // a process span's first attributes
}

// newDest builds the dest of a queue or topic name. An empty name, a
// destination not known, leaves messaging.destination.name out, and the
// span names are the operation's alone, as the semantic conventions ask.
func newDest(name string) *dest {
	base := []attribute.KeyValue{semconv.MessagingSystemKey.String(System)}
	sendSpan, processSpan := opSend, opProcess
	if name != "" {
		base = append(base, semconv.MessagingDestinationName(name))
		sendSpan, processSpan = opSend+" "+name, opProcess+" "+name
	}
	with := func(kv ...attribute.KeyValue) []attribute.KeyValue {
		return append(append(make([]attribute.KeyValue, 0, len(base)+len(kv)), base...), kv...)
	}
	opt := func(kv ...attribute.KeyValue) metric.MeasurementOption {
		return metric.WithAttributeSet(attribute.NewSet(with(kv...)...))
	}
	return &dest{
		plain:       opt(),
		send:        opt(semconv.MessagingOperationName(opSend)),
		claim:       opt(semconv.MessagingOperationName(opClaim)),
		process:     opt(semconv.MessagingOperationName(opProcess)),
		processErr:  opt(semconv.MessagingOperationName(opProcess), semconv.ErrorTypeKey.String(errorOther)),
		sendSpan:    sendSpan,
		processSpan: processSpan,
		sendStart: []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(with(semconv.MessagingOperationName(opSend), semconv.MessagingOperationTypeSend)...)},
		processAttrs: with(semconv.MessagingOperationName(opProcess), semconv.MessagingOperationTypeProcess),
	}
}

// dest returns the precomputed dest of a queue or topic name.
func (h *Hook) dest(name string) *dest { return h.dests.get(name, newDest) }

// A lockKey is what a lock measurement's attributes depend on when they
// carry the key.
type lockKey struct {
	key    string // the value of WithLockKeyAttribute's function
	shared bool
}

// lockOpt returns the attributes of a measurement of the lock o is about.
func (h *Hook) lockOpt(o *redlease.Observation) metric.MeasurementOption {
	if h.lockKey == nil {
		if o.Shared {
			return h.lockOpts[1]
		}
		return h.lockOpts[0]
	}
	return h.locks.get(lockKey{h.lockKey(o.Name), o.Shared}, func(k lockKey) metric.MeasurementOption {
		return metric.WithAttributeSet(attribute.NewSet(LockSharedKey.Bool(k.shared), LockKeyKey.String(k.key)))
	})
}

// Observe records o in the Hook's metrics: lock acquisitions in the
// latency and wait histograms (and the hand-off counter when handed off),
// lost leases, renewals and failed renewals in their counters, and each
// message event in its queue's counter. It does not block, and for a name
// seen before it allocates nothing of its own.
func (h *Hook) Observe(ctx context.Context, o redlease.Observation) {
	// A measurement made inside a span would carry it as an exemplar;
	// that is the SDK's to decide, so ctx is passed on as it is.
	switch o.Kind {
	case redlease.LockAcquired:
		opt := h.lockOpt(&o)
		h.lockLatency.Record(ctx, o.Latency.Seconds(), opt)
		h.lockWait.Record(ctx, o.Wait.Seconds(), opt)
		if o.HandedOff {
			h.handoffs.Add(ctx, 1, opt)
		}
	case redlease.LockLost:
		h.lost.Add(ctx, 1, h.lockOpt(&o))
	case redlease.LockRenewed:
		h.renewals.Add(ctx, 1, h.lockOpt(&o))
	case redlease.LockRenewFailed:
		h.renewFailures.Add(ctx, 1, h.lockOpt(&o))
	case redlease.MessageEnqueued:
		h.sent.Add(ctx, count(o.N), h.dest(o.Name).send)
	case redlease.MessageClaimed:
		h.consumed.Add(ctx, 1, h.dest(o.Name).claim)
	case redlease.MessageAcked:
		h.acked.Add(ctx, 1, h.dest(o.Name).plain)
	case redlease.MessageNacked:
		h.nacked.Add(ctx, 1, h.dest(o.Name).plain)
	case redlease.MessageDead:
		h.dead.Add(ctx, count(o.N), h.dest(o.Name).plain)
	case redlease.MessagesReclaimed:
		h.reclaimed.Add(ctx, int64(o.N), h.dest(o.Name).plain)
	}
}

// count is the number of messages an observation reports: N, or 1 for a
// single message that left N unset.
func count(n int) int64 {
	if n < 1 {
		return 1
	}
	return int64(n)
}
