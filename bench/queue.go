package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/redlease/redlease"
)

// Scenarios 5 and 6: a work queue end to end, and the latency of one
// message reaching an idle consumer.

// queueResult is one run of scenario 5.
type queueResult struct {
	enqueue, consume time.Duration
	enqCounts        counts
	conCounts        counts
}

type queueContender struct {
	name, desc string
	run        func(ctx context.Context, e *env, n, conc int, timeout time.Duration) (queueResult, error)
	pickup     func(ctx context.Context, e *env, n int, gap, wait time.Duration) ([]time.Duration, counts, error)
}

var queueContenders = []queueContender{
	{"redlease", "producer `EnqueueBatch` (one round trip); consumer `Consume(ctx, h, WithConcurrency(n))` on its own client; the idle consumer is `Consume` at concurrency 1",
		queueRedlease, pickupRedlease},
	{"asynq", "producer `Client.Enqueue(NewTask(\"noop\", payload), Queue(q))` in a loop (asynq has no batch enqueue); consumer `NewServerFromRedisClient(c, Config{Concurrency: n, Queues: {q: 1}, LogLevel: FatalLevel})` " +
		"(the same server as `NewServer(RedisClientOpt{Addr})`, but on a client whose round trips we can count), `Start(mux)`, `Shutdown()` after the last handler call; " +
		"everything else default, so an idle server polls every `TaskCheckInterval` (1s, jittered)",
		queueAsynq, pickupAsynq},
	{"raw floor", "producer `LPUSH` of 1000 ids per command, all in one pipeline; n consumers each looping `BLMOVE src processing RIGHT LEFT` + `LREM processing 1 id` as the ack (two round trips per message). No lease, no retry, no payload: the fewest commands a reliable list queue can send",
		queueRaw, pickupRaw},
}

// completion counts handler calls and notes when the n-th arrives, and
// the errors a redlease Consume reports meanwhile.
type completion struct {
	n        int64
	done     atomic.Int64
	last     atomic.Int64 // UnixNano of the n-th call
	finished chan struct{}
	errs     atomic.Int64
	firstErr atomic.Pointer[error]
}

func newCompletion(n int) *completion {
	return &completion{n: int64(n), finished: make(chan struct{})}
}

func (c *completion) handle() {
	if c.done.Add(1) == c.n {
		c.last.Store(time.Now().UnixNano())
		close(c.finished)
	}
}

// wait returns when all n were handled, or an error at the timeout.
func (c *completion) wait(ctx context.Context, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-c.finished:
		return nil
	case <-t.C:
		return fmt.Errorf("timed out after %v with %d of %d messages handled", timeout, c.done.Load(), c.n)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// consumeError is a redlease Consume's error handler. Errors while
// messages remain fail the run; once all were handled and Consume is
// being cancelled, context errors are expected.
func (c *completion) consumeError(err error) {
	if c.done.Load() >= c.n && errors.Is(err, context.Canceled) {
		return
	}
	c.errs.Add(1)
	c.firstErr.CompareAndSwap(nil, &err)
}

// consumeErr describes the errors consumeError kept, if any.
func (c *completion) consumeErr() error {
	if n := c.errs.Load(); n > 0 {
		return fmt.Errorf("redlease Consume reported %d errors, the first: %v", n, *c.firstErr.Load())
	}
	return nil
}

func (c *completion) since(start time.Time) time.Duration {
	return time.Unix(0, c.last.Load()).Sub(start)
}

// window runs f inside a measured window.
func window(ctx context.Context, e *env, f func() error) (counts, error) {
	if err := e.startWindow(ctx); err != nil {
		return counts{}, err
	}
	ferr := f()
	c, err := e.endWindow(ctx)
	if ferr != nil {
		return c, ferr
	}
	return c, err
}

func payloads(n int) [][]byte {
	p := make([][]byte, n)
	for i := range p {
		p[i] = []byte("x")
	}
	return p
}

func queueRedlease(ctx context.Context, e *env, n, conc int, timeout time.Duration) (queueResult, error) {
	var res queueResult
	pc, cc := e.client(), e.client()
	defer pc.Close()
	defer cc.Close()
	name := e.uniq("q")
	producer := redlease.NewQueue(pc, name)
	msgs := payloads(n)
	var err error
	res.enqCounts, err = window(ctx, e, func() error {
		start := time.Now()
		_, err := producer.EnqueueBatch(ctx, msgs)
		res.enqueue = time.Since(start)
		return err
	})
	if err != nil {
		return res, err
	}

	consumer := redlease.NewQueue(cc, name)
	comp := newCompletion(n)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	res.conCounts, err = window(ctx, e, func() error {
		start := time.Now()
		wg.Go(func() {
			_ = consumer.Consume(cctx, func(context.Context, *redlease.Message) error {
				comp.handle()
				return nil
			}, redlease.WithConcurrency(conc), redlease.WithErrorHandler(comp.consumeError))
		})
		err := comp.wait(ctx, timeout)
		res.consume = comp.since(start)
		return err
	})
	cancel()
	wg.Wait()
	if err != nil {
		return res, err
	}
	if err := comp.consumeErr(); err != nil {
		return res, err
	}
	if s, err := consumer.Stats(ctx); err != nil || s.Ready+s.Delayed+s.InFlight+s.Dead != 0 {
		return res, fmt.Errorf("queue not empty after the run: %+v %v", s, err)
	}
	return res, nil
}

// asynqServer is an asynq server with default settings but for its
// concurrency, its one queue and quiet logging.
func asynqServer(c *redis.Client, qname string, conc int, h func(*asynq.Task)) (*asynq.Server, *asynq.ServeMux) {
	srv := asynq.NewServerFromRedisClient(c, asynq.Config{
		Concurrency: conc,
		Queues:      map[string]int{qname: 1},
		LogLevel:    asynq.FatalLevel,
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc("noop", func(_ context.Context, t *asynq.Task) error {
		h(t)
		return nil
	})
	return srv, mux
}

func queueAsynq(ctx context.Context, e *env, n, conc int, timeout time.Duration) (queueResult, error) {
	var res queueResult
	pc, cc := e.client(), e.client()
	defer pc.Close()
	defer cc.Close()
	qname := e.uniq("q")
	client := asynq.NewClientFromRedisClient(pc)
	var err error
	res.enqCounts, err = window(ctx, e, func() error {
		start := time.Now()
		for i := range n {
			if _, err := client.Enqueue(asynq.NewTask("noop", []byte("x")), asynq.Queue(qname)); err != nil {
				return fmt.Errorf("enqueue %d: %w", i, err)
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		res.enqueue = time.Since(start)
		return nil
	})
	if err != nil {
		return res, err
	}

	comp := newCompletion(n)
	srv, mux := asynqServer(cc, qname, conc, func(*asynq.Task) { comp.handle() })
	started := false
	res.conCounts, err = window(ctx, e, func() error {
		start := time.Now()
		if err := srv.Start(mux); err != nil {
			return err
		}
		started = true
		err := comp.wait(ctx, timeout)
		res.consume = comp.since(start)
		return err
	})
	if started {
		srv.Shutdown()
	}
	return res, err
}

func queueRaw(ctx context.Context, e *env, n, conc int, timeout time.Duration) (queueResult, error) {
	var res queueResult
	pc, cc := e.client(), e.client()
	defer pc.Close()
	defer cc.Close()
	name := e.uniq("raw")
	src, processing := name+":ready", name+":processing"
	var err error
	res.enqCounts, err = window(ctx, e, func() error {
		start := time.Now()
		_, err := pc.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := 0; i < n; i += 1000 {
				ids := make([]any, 0, 1000)
				for j := i; j < min(i+1000, n); j++ {
					ids = append(ids, strconv.Itoa(j))
				}
				p.LPush(ctx, src, ids...)
			}
			return nil
		})
		res.enqueue = time.Since(start)
		return err
	})
	if err != nil {
		return res, err
	}

	comp := newCompletion(n)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var consumeErr atomic.Pointer[error]
	res.conCounts, err = window(ctx, e, func() error {
		start := time.Now()
		for range conc {
			wg.Go(func() {
				if err := rawConsume(cctx, cc, src, processing, n, func(string) { comp.handle() }); err != nil {
					consumeErr.CompareAndSwap(nil, &err)
				}
			})
		}
		err := comp.wait(ctx, timeout)
		res.consume = comp.since(start)
		return err
	})
	cancel()
	wg.Wait()
	if err != nil {
		return res, err
	}
	if p := consumeErr.Load(); p != nil {
		return res, *p
	}
	return res, nil
}

// rawConsume moves ids to processing, handles them and acks with LREM,
// until ctx ends or max messages were handled.
func rawConsume(ctx context.Context, c *redis.Client, src, processing string, max int, h func(id string)) error {
	for handled := 0; handled < max && ctx.Err() == nil; {
		// A fractional timeout through Do: go-redis's BLMove rounds it up to
		// whole seconds.
		id, err := c.Do(ctx, "BLMOVE", src, processing, "RIGHT", "LEFT", "0.1").Text()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		h(id)
		handled++
		if err := c.LRem(context.WithoutCancel(ctx), processing, 1, id).Err(); err != nil {
			return err
		}
	}
	return nil
}

// scenarioQueue runs scenario 5.
func scenarioQueue(ctx context.Context, e *env, cfg config, progress func(string)) (*table, error) {
	variants := make([]string, len(cfg.queueConc))
	for i, c := range cfg.queueConc {
		variants[i] = strconv.Itoa(c)
	}
	names := contenderNames(queueContenders, func(c queueContender) string { return c.name })
	t := newTable("queue", "5. Queue end to end", "concurrency", variants, names, []metric{
		{key: "consume", label: "consume msgs/s", unit: unitRate, higher: true, ratio: true},
		{key: "e2e", label: "end-to-end msgs/s", unit: unitRate, higher: true, ratio: true},
		{key: "enqueue", label: "enqueue time", unit: unitMicros},
		{key: "cmds", label: "cmds/msg", unit: unitCount, ratio: true},
		{key: "rt", label: "round trips/msg", unit: unitCount},
		{key: "enqcmds", label: "of which enqueue cmds/msg", unit: unitCount},
	})
	t.intro = fmt.Sprintf("%d no-op messages are enqueued into a fresh queue (after `FLUSHALL`), then consumed at the given concurrency "+
		"until all were handled. consume msgs/s counts from the start of the consumer to the last handler call; end-to-end adds the "+
		"enqueue time. cmds/msg and round trips/msg cover both phases (producer and consumer each on their own client). "+
		"A run that does not finish within %v fails.", cfg.queueMsgs, cfg.queueTimeout)
	for _, ct := range queueContenders {
		t.notes = append(t.notes, "**"+ct.name+"**: "+ct.desc+".")
	}
	for r := range cfg.rounds {
		for vi, conc := range cfg.queueConc {
			for i := range queueContenders {
				ct := queueContenders[(i+r)%len(queueContenders)]
				if err := e.flush(ctx); err != nil {
					return t, err
				}
				res, err := ct.run(ctx, e, cfg.queueMsgs, conc, cfg.queueTimeout)
				if err != nil {
					if ctx.Err() != nil {
						return t, ctx.Err()
					}
					t.fail(variants[vi], ct.name, r, err)
					progress(fmt.Sprintf("queue r%d c=%d %-9s FAILED: %v", r+1, conc, ct.name, err))
					continue
				}
				n := int64(cfg.queueMsgs)
				vals := map[string]float64{
					"consume": float64(n) / res.consume.Seconds(),
					"e2e":     float64(n) / (res.enqueue + res.consume).Seconds(),
					"enqueue": float64(res.enqueue) / float64(time.Microsecond),
					"cmds":    perOp(res.enqCounts.total+res.conCounts.total, n),
					"rt":      perOp(res.enqCounts.rt+res.conCounts.rt, n),
					"enqcmds": perOp(res.enqCounts.total, n),
				}
				t.record(variants[vi], ct.name, vals)
				progress(fmt.Sprintf("queue r%d c=%-2d %-9s consume %7.0f msgs/s enqueue %v cmds/msg %.1f rt/msg %.2f",
					r+1, conc, ct.name, vals["consume"], res.enqueue.Round(time.Millisecond), vals["cmds"], vals["rt"]))
			}
		}
	}
	return t, nil
}

// pickupLatencies records, per message index, the time from the enqueue
// call to the handler's start.
type pickupLatencies struct {
	enq  []atomic.Int64 // UnixNano just before the enqueue call
	lat  []atomic.Int64 // ns; 0 = not yet handled
	comp *completion
}

func newPickup(n int) *pickupLatencies {
	return &pickupLatencies{enq: make([]atomic.Int64, n), lat: make([]atomic.Int64, n), comp: newCompletion(n)}
}

func (p *pickupLatencies) handled(payload string) {
	now := time.Now().UnixNano()
	i, err := strconv.Atoi(payload)
	if err != nil || i < 0 || i >= len(p.lat) {
		return
	}
	if p.lat[i].CompareAndSwap(0, now-p.enq[i].Load()) {
		p.comp.handle()
	}
}

// produce enqueues message i every gap, bounded by n.
func (p *pickupLatencies) produce(ctx context.Context, n int, gap time.Duration, enqueue func(i int) error) error {
	for i := range n {
		p.enq[i].Store(time.Now().UnixNano())
		if err := enqueue(i); err != nil {
			return err
		}
		sleep(ctx, gap)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

func (p *pickupLatencies) result() []time.Duration {
	out := make([]time.Duration, 0, len(p.lat))
	for i := range p.lat {
		if v := p.lat[i].Load(); v != 0 {
			out = append(out, time.Duration(v))
		}
	}
	return out
}

// idleSettle lets a freshly started consumer reach its idle wait before
// the first message.
const idleSettle = 100 * time.Millisecond

func pickupRedlease(ctx context.Context, e *env, n int, gap, wait time.Duration) ([]time.Duration, counts, error) {
	pc, cc := e.client(), e.client()
	defer pc.Close()
	defer cc.Close()
	name := e.uniq("pickup")
	producer, consumer := redlease.NewQueue(pc, name), redlease.NewQueue(cc, name)
	p := newPickup(n)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = consumer.Consume(cctx, func(_ context.Context, m *redlease.Message) error {
			p.handled(string(m.Payload))
			return nil
		})
	})
	defer wg.Wait()
	defer cancel()
	return p.measure(ctx, e, n, gap, wait, func(i int) error {
		_, err := producer.Enqueue(ctx, []byte(strconv.Itoa(i)))
		return err
	})
}

// measure lets the consumer settle idle, then enqueues n messages gap
// apart through enqueue and waits for all to be handled, counting the Redis
// work meanwhile.
func (p *pickupLatencies) measure(ctx context.Context, e *env, n int, gap, wait time.Duration, enqueue func(i int) error) ([]time.Duration, counts, error) {
	sleep(ctx, idleSettle)
	cnt, err := window(ctx, e, func() error {
		if err := p.produce(ctx, n, gap, enqueue); err != nil {
			return err
		}
		return p.comp.wait(ctx, wait)
	})
	return p.result(), cnt, err
}

func pickupAsynq(ctx context.Context, e *env, n int, gap, wait time.Duration) ([]time.Duration, counts, error) {
	pc, cc := e.client(), e.client()
	defer pc.Close()
	defer cc.Close()
	qname := e.uniq("pickup")
	client := asynq.NewClientFromRedisClient(pc)
	p := newPickup(n)
	srv, mux := asynqServer(cc, qname, 1, func(t *asynq.Task) { p.handled(string(t.Payload())) })
	if err := srv.Start(mux); err != nil {
		return nil, counts{}, err
	}
	defer srv.Shutdown()
	return p.measure(ctx, e, n, gap, wait, func(i int) error {
		_, err := client.Enqueue(asynq.NewTask("noop", []byte(strconv.Itoa(i))), asynq.Queue(qname))
		return err
	})
}

func pickupRaw(ctx context.Context, e *env, n int, gap, wait time.Duration) ([]time.Duration, counts, error) {
	pc, cc := e.client(), e.client()
	defer pc.Close()
	defer cc.Close()
	name := e.uniq("rawpickup")
	src, processing := name+":ready", name+":processing"
	p := newPickup(n)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { _ = rawConsume(cctx, cc, src, processing, n, p.handled) })
	defer wg.Wait()
	defer cancel()
	return p.measure(ctx, e, n, gap, wait, func(i int) error {
		return pc.LPush(ctx, src, strconv.Itoa(i)).Err()
	})
}

// scenarioPickup runs scenario 6.
func scenarioPickup(ctx context.Context, e *env, cfg config, progress func(string)) (*table, error) {
	names := contenderNames(queueContenders, func(c queueContender) string { return c.name })
	t := newTable("pickup", "6. Idle pick-up latency", "", nil, names, []metric{
		{key: "p50", label: "pick-up p50", unit: unitMicros, ratio: true},
		{key: "p99", label: "pick-up p99", unit: unitMicros, ratio: true},
		{key: "cmds", label: "cmds/msg", unit: unitCount},
		{key: "rt", label: "round trips/msg", unit: unitCount},
	})
	t.intro = fmt.Sprintf("One consumer waits on an empty queue; %d messages are enqueued one at a time, %v apart. "+
		"Latency runs from just before the enqueue call to the start of the handler. With %d samples a run's p99 is its maximum. "+
		"cmds/msg and round trips/msg include the idle consumer's waiting and polling. "+
		"A run fails if the last message is not handled within %v of being enqueued.",
		cfg.pickupMsgs, cfg.pickupGap, cfg.pickupMsgs, cfg.pickupWait)
	for r := range cfg.fastRounds {
		for i := range queueContenders {
			ct := queueContenders[(i+r)%len(queueContenders)]
			if err := e.flush(ctx); err != nil {
				return t, err
			}
			lat, cnt, err := ct.pickup(ctx, e, cfg.pickupMsgs, cfg.pickupGap, cfg.pickupWait)
			if err != nil {
				if ctx.Err() != nil {
					return t, ctx.Err()
				}
				t.fail("", ct.name, r, err)
				progress(fmt.Sprintf("pickup r%d %-9s FAILED: %v", r+1, ct.name, err))
				continue
			}
			us := durationsToMicros(lat)
			n := int64(cfg.pickupMsgs)
			vals := map[string]float64{
				"p50":  quantile(us, 0.50),
				"p99":  quantile(us, 0.99),
				"cmds": perOp(cnt.total, n),
				"rt":   perOp(cnt.rt, n),
			}
			t.record("", ct.name, vals)
			t.addSamples("", ct.name, us)
			progress(fmt.Sprintf("pickup r%d %-9s p50 %8.1fµs p99 %8.1fµs cmds/msg %.1f", r+1, ct.name, vals["p50"], vals["p99"], vals["cmds"]))
		}
	}
	return t, nil
}
