package redleaseotel

import (
	"errors"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/redlease/redlease"
)

// ScopeName is the instrumentation scope of the Meter and Tracer a Hook
// gets from its providers.
const ScopeName = "github.com/redlease/redlease/redleaseotel"

// System is the value of the messaging.system attribute on every queue
// measurement and span.
const System = "redlease"

// Attribute keys of this package's own (the rest are the semantic
// conventions').
const (
	// AttemptKey is a consumer span's delivery count of the message
	// ([redlease.Message.Attempt]), 1 on the first delivery.
	AttemptKey = attribute.Key("messaging.redlease.message.attempt")
	// LockSharedKey says whether a lock measurement is of a shared lease.
	LockSharedKey = attribute.Key("redlease.lock.shared")
	// LockKeyKey is a lock measurement's key, present only with
	// [WithLockKeyAttribute].
	LockKeyKey = attribute.Key("redlease.lock.key")
)

// DefaultStatsTimeout bounds the [redlease.Queue.Stats] calls of one
// collection of [Hook.ObserveQueues]'s gauges, unless [WithStatsTimeout]
// says otherwise.
const DefaultStatsTimeout = 2 * time.Second

// maxCached bounds how many destinations (queue and topic names) and lock
// keys a Hook keeps precomputed attribute sets for; past it, measurements
// of new names build their sets each time, so memory stays bounded
// whatever the names.
const maxCached = 1024

// An Option configures [NewHook].
type Option func(*config)

type config struct {
	mp           metric.MeterProvider
	tp           trace.TracerProvider
	prop         propagation.TextMapPropagator
	lockKey      func(string) string
	statsTimeout time.Duration
}

// WithMeterProvider makes the Hook record metrics with mp instead of otel's
// global MeterProvider.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) { c.mp = mp }
}

// WithTracerProvider makes the Hook record spans with tp instead of otel's
// global TracerProvider.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.tp = tp }
}

// WithPropagator makes the Hook carry trace context in message headers with
// p instead of otel's global propagator (a no-op unless the program sets
// one with otel.SetTextMapPropagator). Producer and consumer must use
// propagators that agree, e.g. both propagation.TraceContext{}.
func WithPropagator(p propagation.TextMapPropagator) Option {
	return func(c *config) { c.prop = p }
}

// WithLockKeyAttribute adds the attribute redlease.lock.key to lock
// measurements, with value f(key) (the key itself if f is nil). By default
// lock measurements carry no key: keys often name users, orders or jobs, and
// each distinct value is a time series kept by every metrics backend. Pass
// an f that maps keys onto a few values, e.g. "user:42" to "user", unless the
// program's lock keys are few and fixed. f must be quick and safe for
// concurrent use.
func WithLockKeyAttribute(f func(key string) string) Option {
	return func(c *config) {
		if f == nil {
			f = func(key string) string { return key }
		}
		c.lockKey = f
	}
}

// WithStatsTimeout bounds the Stats calls of one collection of
// [Hook.ObserveQueues]'s gauges to d (default [DefaultStatsTimeout]); a
// queue whose Stats does not answer in time reports nothing in that
// collection. A d ≤ 0 keeps the default.
func WithStatsTimeout(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.statsTimeout = d
		}
	}
}

// A Hook is a [redlease.Hook] that records OpenTelemetry metrics and traces.
// It is safe for concurrent use, and one Hook may serve any number of
// Lockers, Queues and Topics. Its methods make no network calls of their
// own: spans and measurements go to the providers, which export them apart.
type Hook struct {
	tracer       trace.Tracer
	meter        metric.Meter
	prop         propagation.TextMapPropagator
	lockKey      func(string) string
	statsTimeout time.Duration

	// Queue instruments.
	sent, consumed, acked, nacked, dead, reclaimed    metric.Int64Counter
	process                                           metric.Float64Histogram
	ready, delayed, inFlight, deadDepth               metric.Int64ObservableGauge
	totalEnqueued, totalAcked, totalNacked, totalDead metric.Int64ObservableCounter

	// Lock instruments.
	lockLatency, lockWait                   metric.Float64Histogram
	handoffs, lost, renewals, renewFailures metric.Int64Counter

	dests    cache[string, *dest]
	locks    cache[lockKey, metric.MeasurementOption]
	lockOpts [2]metric.MeasurementOption // without key: [shared]
}

var _ redlease.Hook = (*Hook)(nil)

// Instrument names; the messaging.* ones are the semantic conventions'.
const (
	sentName          = "messaging.client.sent.messages"
	consumedName      = "messaging.client.consumed.messages"
	processName       = "messaging.process.duration"
	ackedName         = "redlease.messages.acked"
	nackedName        = "redlease.messages.nacked"
	deadName          = "redlease.messages.dead_lettered"
	reclaimedName     = "redlease.messages.reclaimed"
	readyName         = "redlease.queue.ready"
	delayedName       = "redlease.queue.delayed"
	inFlightName      = "redlease.queue.in_flight"
	deadDepthName     = "redlease.queue.dead"
	totalEnqueuedName = "redlease.queue.enqueued"
	totalAckedName    = "redlease.queue.acked"
	totalNackedName   = "redlease.queue.nacked"
	totalDeadName     = "redlease.queue.dead_lettered"
	lockLatencyName   = "redlease.lock.acquire.duration"
	lockWaitName      = "redlease.lock.wait.duration"
	handoffsName      = "redlease.lock.handoffs"
	lostName          = "redlease.lock.lost"
	renewalsName      = "redlease.lock.renewals"
	renewFailuresName = "redlease.lock.renewal.failures"
)

// Bucket boundaries, in seconds: the semantic conventions' for durations,
// and finer ones below a millisecond for lock acquisition, which is
// usually one round trip.
var (
	durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}
	lockBuckets     = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}
)

// NewHook returns a Hook that records with the providers and propagator the
// options give, or otel's global ones. It returns a *Hook rather than a
// [redlease.Hook] so that [Hook.ObserveQueues] can share its providers. An
// instrument the MeterProvider refuses is reported to otel.Handle and left
// out; the Hook works without it.
func NewHook(opts ...Option) *Hook {
	c := config{statsTimeout: DefaultStatsTimeout}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	if c.prop == nil {
		c.prop = otel.GetTextMapPropagator()
	}
	h := &Hook{
		tracer:       c.tp.Tracer(ScopeName, trace.WithSchemaURL(semconv.SchemaURL)),
		meter:        c.mp.Meter(ScopeName, metric.WithSchemaURL(semconv.SchemaURL)),
		prop:         c.prop,
		lockKey:      c.lockKey,
		statsTimeout: c.statsTimeout,
	}
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Counter {
		i, err := h.meter.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		if i == nil {
			return noop.Int64Counter{}
		}
		errs = append(errs, err)
		return i
	}
	histogram := func(name, desc string, buckets []float64) metric.Float64Histogram {
		i, err := h.meter.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(buckets...))
		if i == nil {
			return noop.Float64Histogram{}
		}
		errs = append(errs, err)
		return i
	}
	gauge := func(name, desc string) metric.Int64ObservableGauge {
		i, err := h.meter.Int64ObservableGauge(name, metric.WithUnit("{message}"), metric.WithDescription(desc))
		if i == nil {
			return noop.Int64ObservableGauge{}
		}
		errs = append(errs, err)
		return i
	}
	total := func(name, desc string) metric.Int64ObservableCounter {
		i, err := h.meter.Int64ObservableCounter(name, metric.WithUnit("{message}"), metric.WithDescription(desc))
		if i == nil {
			return noop.Int64ObservableCounter{}
		}
		errs = append(errs, err)
		return i
	}
	h.sent = counter(sentName, "{message}", "Messages added by Enqueue, EnqueueBatch and Publish.")
	h.consumed = counter(consumedName, "{message}", "Messages claimed by Claim or Consume.")
	h.acked = counter(ackedName, "{message}", "Messages acked.")
	h.nacked = counter(nackedName, "{message}", "Messages nacked and scheduled for another attempt.")
	h.dead = counter(deadName, "{message}", "Messages moved to the dead letters.")
	h.reclaimed = counter(reclaimedName, "{message}", "Claims taken back by a reclaim after their lease ended.")
	h.process = histogram(processName, "Duration of Consume handler calls.", durationBuckets)
	h.ready = gauge(readyName, "Messages waiting to be claimed.")
	h.delayed = gauge(delayedName, "Messages waiting for their delay or retry backoff.")
	h.inFlight = gauge(inFlightName, "Messages claimed and not yet acked or nacked.")
	h.deadDepth = gauge(deadDepthName, "Messages in the dead letters.")
	h.totalEnqueued = total(totalEnqueuedName, "Messages ever added to the queue, by any client.")
	h.totalAcked = total(totalAckedName, "Messages ever acked in the queue, by any client.")
	h.totalNacked = total(totalNackedName, "Nacks and ended leases that sent a message back to be retried, by any client.")
	h.totalDead = total(totalDeadName, "Messages ever moved to the queue's dead letters.")
	h.lockLatency = histogram(lockLatencyName, "Duration of the calls that acquired a lock.", lockBuckets)
	h.lockWait = histogram(lockWaitName, "Part of a lock acquisition spent waiting for other holders.", lockBuckets)
	h.handoffs = counter(handoffsName, "{acquisition}", "Locks granted to a waiter by the previous holder's release.")
	h.lost = counter(lostName, "{lease}", "Held leases that ended before their release.")
	h.renewals = counter(renewalsName, "{renewal}", "Leases renewed by the watchdog.")
	h.renewFailures = counter(renewFailuresName, "{renewal}", "Lease renewals that failed on a Redis error.")
	if err := errors.Join(errs...); err != nil {
		otel.Handle(err)
	}
	for i, shared := range []bool{false, true} {
		h.lockOpts[i] = metric.WithAttributeSet(attribute.NewSet(LockSharedKey.Bool(shared)))
	}
	return h
}
