// Package queueload holds the queue load that compare.sh's queue programs
// (queuecmp, otelcmp) share: an Enqueue loop and a Consume drain. It uses
// only API that every compared version of redlease has.
package queueload

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/redlease/redlease"
)

const (
	// MaxEnqueues bounds the Enqueue loop in count as well as time.
	MaxEnqueues = 1 << 20
	// StopWait bounds how long Consume may take to return once cancelled.
	StopWait = 10 * time.Second
)

// EnqueueLoop enqueues payload one message at a time for d, and returns
// how many it enqueued.
func EnqueueLoop(ctx context.Context, q *redlease.Queue, payload []byte, d time.Duration, opts ...redlease.EnqueueOption) (int, error) {
	deadline := time.Now().Add(d)
	n := 0
	for ; n < MaxEnqueues && time.Now().Before(deadline); n++ {
		if _, err := q.Enqueue(ctx, payload, opts...); err != nil {
			return n, fmt.Errorf("enqueue: %w", err)
		}
	}
	return n, nil
}

// Drain runs Consume with a no-op handler at concurrency conc until n
// messages were handled, then cancels it and waits for it to return (so
// that its last acks fall inside a measured window). It returns the time
// from Consume's start to the n-th handler call.
func Drain(ctx context.Context, q *redlease.Queue, n, conc int, timeout time.Duration) (time.Duration, error) {
	var (
		handled  atomic.Int64
		last     atomic.Int64 // UnixNano of the n-th handler call
		finished = make(chan struct{})
		errCount atomic.Int64
		firstErr atomic.Pointer[error]
	)
	handler := func(context.Context, *redlease.Message) error {
		if handled.Add(1) == int64(n) {
			last.Store(time.Now().UnixNano())
			close(finished)
		}
		return nil
	}
	// Errors while messages remain fail the run; once all were handled
	// and Consume is being cancelled, context errors are expected.
	onError := func(err error) {
		if handled.Load() >= int64(n) && errors.Is(err, context.Canceled) {
			return
		}
		errCount.Add(1)
		firstErr.CompareAndSwap(nil, &err)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	returned := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(returned)
		_ = q.Consume(cctx, handler, redlease.WithConcurrency(conc), redlease.WithErrorHandler(onError))
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	var err error
	select {
	case <-finished:
	case <-t.C:
		err = fmt.Errorf("timed out after %v with %d of %d messages handled", timeout, handled.Load(), n)
	}
	cancel()
	select {
	case <-returned:
	case <-time.After(StopWait):
		return 0, fmt.Errorf("Consume did not return within %v of being cancelled", StopWait)
	}
	if err != nil {
		return 0, err
	}
	if k := errCount.Load(); k > 0 {
		return 0, fmt.Errorf("Consume reported %d errors, the first: %v", k, *firstErr.Load())
	}
	return time.Unix(0, last.Load()).Sub(start), nil
}
