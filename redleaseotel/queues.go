package redleaseotel

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/metric"

	"github.com/redlease/redlease"
)

// ObserveQueues reports the depth of each queue by state in four gauges,
// redlease.queue.ready, redlease.queue.delayed, redlease.queue.in_flight
// and redlease.queue.dead, and the queue's totals in four counters,
// redlease.queue.enqueued, redlease.queue.acked, redlease.queue.nacked and
// redlease.queue.dead_lettered (unit {message}, attributes
// messaging.system and messaging.destination.name), read with
// [redlease.Queue.Stats] each time the MeterProvider collects. The totals
// count what every client did to the queue, where the counters the Hook
// keeps from observations (messaging.client.sent.messages,
// redlease.messages.acked, ...) count what this program's clients did. The Stats calls of one collection run one
// after the other, all within [WithStatsTimeout]'s bound; a queue whose
// call fails reports nothing that time, while the others report, and its
// error is the collection's (a periodic reader hands it to otel.Handle). Queues may come from any
// clients, with or without this Hook installed.
//
// stop ends the reporting; it is safe to call more than once. A nil queue
// is an error and registers nothing.
func (h *Hook) ObserveQueues(queues ...*redlease.Queue) (stop func() error, err error) {
	for i, q := range queues {
		if q == nil {
			return nil, fmt.Errorf("redleaseotel: ObserveQueues: queue %d is nil", i)
		}
	}
	qs := append([]*redlease.Queue(nil), queues...)
	reg, err := h.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ctx, cancel := context.WithTimeout(ctx, h.statsTimeout)
		defer cancel()
		var errs []error
		for _, q := range qs {
			st, err := q.Stats(ctx)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			opt := h.dest(q.Name()).plain
			o.ObserveInt64(h.ready, st.Ready, opt)
			o.ObserveInt64(h.delayed, st.Delayed, opt)
			o.ObserveInt64(h.inFlight, st.InFlight, opt)
			o.ObserveInt64(h.deadDepth, st.Dead, opt)
			o.ObserveInt64(h.totalEnqueued, st.Enqueued, opt)
			o.ObserveInt64(h.totalAcked, st.Acked, opt)
			o.ObserveInt64(h.totalNacked, st.Nacked, opt)
			o.ObserveInt64(h.totalDead, st.DeadLettered, opt)
		}
		return errors.Join(errs...)
	}, h.ready, h.delayed, h.inFlight, h.deadDepth, h.totalEnqueued, h.totalAcked, h.totalNacked, h.totalDead)
	if err != nil {
		return nil, fmt.Errorf("redleaseotel: ObserveQueues: %w", err)
	}
	return reg.Unregister, nil
}
