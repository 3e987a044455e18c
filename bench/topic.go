package main

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redlease/redlease"
	"github.com/redlease/redlease/internal/redistest"
)

// Scenario 9: topics. What one Publish costs next to one plain Enqueue as
// the subscriptions grow; how fast a fanned-out backlog drains next to a
// plain queue holding as many deliveries; and what a message takes of
// Redis's memory per subscription, next to a copy in a plain queue per
// subscription.

// The scenario's shape; the counts that scale with -quick are in config.
var (
	topicSubs       = []int{1, 10, 100} // subscriptions of the publish runs
	topicGoroutines = []int{1, 16}      // publishing goroutines
	topicMemSubs    = []int{1, 10}
	topicMemSizes   = []int{16, 100, 1024} // payload bytes of the memory runs
)

const (
	topicPayloadSize = 100 // bytes, of the publish and fan-out runs
	topicFanSubs     = 10  // subscriptions of the fan-out runs
	topicFanConc     = 16  // WithConcurrency of each of their Consume calls
	// memSettle is the pause before each used_memory reading, after the
	// writing client's connections were closed.
	memSettle = 200 * time.Millisecond
)

// Names of scenario 9's contenders; the first of each part is its
// reference.
const (
	enqueueName   = "Queue.Enqueue"
	fanPlainName  = "plain Queue"
	fanTopicName  = "Topic fan-out"
	memCopiesName = "a plain Queue per subscription"
	memTopicName  = "Topic"
)

func publishName(subs int) string {
	return "Topic.Publish, " + plural(subs, "subscription")
}

func topicPayloads(n, size int) [][]byte {
	p := bytes.Repeat([]byte("x"), size)
	out := make([][]byte, n)
	for i := range out {
		out[i] = p
	}
	return out
}

// topicPublishContenders are part 1's: one Enqueue or one Publish per
// cycle, on the run's client, into a fresh queue or topic.
func topicPublishContenders(e *env) []cycleContender {
	payload := topicPayloads(1, topicPayloadSize)[0]
	cs := []cycleContender{{enqueueName, func(_ context.Context, c *redis.Client, _ []string) (cycleFunc, func(), error) {
		q := redlease.NewQueue(c, e.uniq("q"))
		return func(ctx context.Context, _, _ int) error {
			_, err := q.Enqueue(ctx, payload)
			return err
		}, func() {}, nil
	}}}
	for _, subs := range topicSubs {
		cs = append(cs, cycleContender{publishName(subs), func(ctx context.Context, c *redis.Client, _ []string) (cycleFunc, func(), error) {
			tp, err := subscribedTopic(ctx, c, e.uniq("topic"), subs)
			if err != nil {
				return nil, nil, err
			}
			return func(ctx context.Context, _, _ int) error {
				_, err := tp.Publish(ctx, payload)
				return err
			}, func() {}, nil
		}})
	}
	return cs
}

// subscribedTopic returns topic name on c with subs subscriptions s0, s1, ...
func subscribedTopic(ctx context.Context, c *redis.Client, name string, subs int) (*redlease.Topic, error) {
	tp := redlease.NewTopic(c, name)
	for i := range subs {
		if _, err := tp.Subscribe(ctx, "s"+strconv.Itoa(i)); err != nil {
			return nil, err
		}
	}
	return tp, nil
}

// fanResult is one run of part 2.
type fanResult struct {
	write, drain             time.Duration
	writeCounts, drainCounts counts
}

type fanContender struct {
	name, desc string
	run        func(ctx context.Context, e *env, n, subs, conc int, timeout time.Duration) (fanResult, error)
}

var fanContenders = []fanContender{
	{fanPlainName, fmt.Sprintf("one queue; the producer `EnqueueBatch`es n × %d messages in one call; %d `Consume` calls at `WithConcurrency(%d)`, "+
		"each on a `Queue` of its own on a client of its own, drain it", topicFanSubs, topicFanSubs, topicFanConc), fanPlain},
	{fanTopicName, fmt.Sprintf("a topic with %d subscriptions (subscribed before the run); the producer `PublishBatch`es n messages in one call; "+
		"each subscription is drained by one `Consume` at `WithConcurrency(%d)` on a client of its own", topicFanSubs, topicFanConc), fanTopic},
}

// fanPlain runs part 2's reference: n×subs messages in one plain queue,
// drained by subs Consume calls.
func fanPlain(ctx context.Context, e *env, n, subs, conc int, timeout time.Duration) (fanResult, error) {
	var res fanResult
	pc := e.client()
	defer pc.Close()
	name := e.uniq("fanq")
	msgs := topicPayloads(n*subs, topicPayloadSize)
	if err := dial(ctx, pc); err != nil {
		return res, err
	}
	var err error
	res.writeCounts, err = window(ctx, e, func() error {
		start := time.Now()
		_, err := redlease.NewQueue(pc, name).EnqueueBatch(ctx, msgs)
		res.write = time.Since(start)
		return err
	})
	if err != nil {
		return res, err
	}
	qs := make([]*redlease.Queue, subs)
	for i := range qs {
		c := e.client()
		defer c.Close()
		qs[i] = redlease.NewQueue(c, name)
	}
	res.drain, res.drainCounts, err = drainQueues(ctx, e, qs, n*subs, -1, conc, timeout)
	return res, err
}

// dial connects c before a measured window, so that the window's round
// trips are the write's alone. A pipeline, since go-redis dials another
// connection for the first pipeline after a lone command.
func dial(ctx context.Context, c *redis.Client) error {
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Ping(ctx)
		return nil
	})
	return err
}

// fanTopic runs part 2's topic: n messages published to subs
// subscriptions, each drained by a Consume call.
func fanTopic(ctx context.Context, e *env, n, subs, conc int, timeout time.Duration) (fanResult, error) {
	var res fanResult
	pc := e.client()
	defer pc.Close()
	name := e.uniq("fantopic")
	qs := make([]*redlease.Queue, subs)
	for i := range qs {
		c := e.client()
		defer c.Close()
		q, err := redlease.NewTopic(c, name).Subscribe(ctx, "s"+strconv.Itoa(i))
		if err != nil {
			return res, err
		}
		qs[i] = q
	}
	msgs := topicPayloads(n, topicPayloadSize)
	if err := dial(ctx, pc); err != nil {
		return res, err
	}
	var err error
	res.writeCounts, err = window(ctx, e, func() error {
		start := time.Now()
		_, err := redlease.NewTopic(pc, name).PublishBatch(ctx, msgs)
		res.write = time.Since(start)
		return err
	})
	if err != nil {
		return res, err
	}
	res.drain, res.drainCounts, err = drainQueues(ctx, e, qs, n*subs, n, conc, timeout)
	if err != nil {
		return res, err
	}
	// Every payload's last reference went with its last ack: only the
	// reference counter ("seq") is left.
	key := redlease.DefaultPrefix + ":topic:{" + name + "}:payloads"
	if left, err := e.admin.HLen(ctx, key).Result(); err != nil || left > 1 {
		return res, fmt.Errorf("%s holds %d fields after every delivery was acked (want 1, the counter) %v", key, left, err)
	}
	return res, nil
}

// drainQueues runs one Consume per queue at concurrency conc, in a
// measured window, until total handler calls; each queue must then have
// handled perQueue (unless -1) and be empty. It returns the time from the
// start of the consumers to the last handler call.
func drainQueues(ctx context.Context, e *env, qs []*redlease.Queue, total, perQueue, conc int, timeout time.Duration) (time.Duration, counts, error) {
	var took time.Duration
	comp := newCompletion(total)
	handled := make([]atomic.Int64, len(qs))
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	cnt, err := window(ctx, e, func() error {
		start := time.Now()
		for i, q := range qs {
			wg.Go(func() {
				_ = q.Consume(cctx, func(context.Context, *redlease.Message) error {
					handled[i].Add(1)
					comp.handle()
					return nil
				}, redlease.WithConcurrency(conc), redlease.WithErrorHandler(comp.consumeError))
			})
		}
		err := comp.wait(ctx, timeout)
		took = comp.since(start)
		return err
	})
	cancel()
	wg.Wait()
	if err != nil {
		return took, cnt, err
	}
	if err := comp.consumeErr(); err != nil {
		return took, cnt, err
	}
	for i, q := range qs {
		if h := handled[i].Load(); perQueue >= 0 && h != int64(perQueue) {
			return took, cnt, fmt.Errorf("queue %d handled %d messages, want %d", i, h, perQueue)
		}
		if s, err := q.Stats(ctx); err != nil || s.Ready+s.Delayed+s.InFlight+s.Dead != 0 {
			return took, cnt, fmt.Errorf("queue %d not empty after the run: %+v %v", i, s, err)
		}
	}
	return took, cnt, nil
}

// memResult is one run of part 3.
type memResult struct {
	delta int64 // used_memory after less before, bytes
	write time.Duration
}

type memContender struct {
	name, desc string
	// run stores n payloads of size bytes for subs subscriptions and
	// measures what that added to used_memory.
	run func(ctx context.Context, e *env, n, subs, size int) (memResult, error)
}

var memContenders = []memContender{
	{memCopiesName, "`subs` plain queues; `EnqueueBatch` of the n payloads into each: the payload stored once per subscription, " +
		"as a topic that copied per subscription would", memCopies},
	{memTopicName, "a topic with `subs` subscriptions (subscribed before the baseline reading); `PublishBatch` of the n payloads: " +
		"each payload stored once, each subscription holding a reference", memTopic},
}

// usedMemory reads used_memory from INFO memory.
func usedMemory(ctx context.Context, e *env) (int64, error) {
	v, err := redistest.InfoField(ctx, e.admin, "memory", "used_memory")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(v, 10, 64)
}

// memoryDelta reads used_memory, runs write on a client of its own,
// closes that client (so no connection's buffers count), and reads
// used_memory again; each reading after memSettle.
func memoryDelta(ctx context.Context, e *env, write func(c *redis.Client) error) (memResult, error) {
	var res memResult
	sleep(ctx, memSettle)
	before, err := usedMemory(ctx, e)
	if err != nil {
		return res, err
	}
	c := e.client()
	start := time.Now()
	err = write(c)
	res.write = time.Since(start)
	c.Close()
	if err != nil {
		return res, err
	}
	sleep(ctx, memSettle)
	after, err := usedMemory(ctx, e)
	res.delta = after - before
	return res, err
}

func memCopies(ctx context.Context, e *env, n, subs, size int) (memResult, error) {
	name := e.uniq("memq")
	msgs := topicPayloads(n, size)
	return memoryDelta(ctx, e, func(c *redis.Client) error {
		for i := range subs {
			if _, err := redlease.NewQueue(c, name+"-"+strconv.Itoa(i)).EnqueueBatch(ctx, msgs); err != nil {
				return err
			}
		}
		return nil
	})
}

func memTopic(ctx context.Context, e *env, n, subs, size int) (memResult, error) {
	name := e.uniq("memtopic")
	setup := e.client()
	_, err := subscribedTopic(ctx, setup, name, subs)
	setup.Close()
	if err != nil {
		return memResult{}, err
	}
	msgs := topicPayloads(n, size)
	return memoryDelta(ctx, e, func(c *redis.Client) error {
		_, err := redlease.NewTopic(c, name).PublishBatch(ctx, msgs)
		return err
	})
}

// loadTopicScripts has Redis load the enqueue and publish scripts, unmeasured,
// so that no measured write meets NOSCRIPT (nor counts the script's memory).
func loadTopicScripts(ctx context.Context, e *env) error {
	for _, ct := range memContenders {
		if _, err := ct.run(ctx, e, 1, 1, 1); err != nil {
			return fmt.Errorf("warm-up %s: %w", ct.name, err)
		}
	}
	return nil
}

// scenarioTopic runs scenario 9: three tables, the first returned with
// the other two in its more.
func scenarioTopic(ctx context.Context, e *env, cfg config, progress func(string)) (*table, error) {
	pub := newTopicPublishTable(cfg)
	fan := newTopicFanTable(cfg)
	mem := newTopicMemTable(cfg)
	pub.more = []*table{fan, mem}
	if err := topicPublish(ctx, e, cfg, pub, progress); err != nil {
		return pub, err
	}
	if err := topicFan(ctx, e, cfg, fan, progress); err != nil {
		return pub, err
	}
	return pub, topicMemory(ctx, e, cfg, mem, progress)
}

func newTopicPublishTable(cfg config) *table {
	variants := make([]string, len(topicGoroutines))
	for i, n := range topicGoroutines {
		variants[i] = strconv.Itoa(n)
	}
	var names []string
	for _, c := range topicPublishContenders(nil) {
		names = append(names, c.name)
	}
	t := newTable("topic", "9a. Topics: publish against enqueue", "goroutines", variants, names, []metric{
		{key: "ops", label: "calls/s", unit: unitRate, higher: true, ratio: true},
		{key: "deliveries", label: "deliveries/s", unit: unitRate, higher: true, ratio: true},
		{key: "p50", label: "p50 call", unit: unitMicros},
		{key: "p99", label: "p99 call", unit: unitMicros},
		{key: "cmds", label: "cmds/call", unit: unitCount, ratio: true},
		{key: "rt", label: "round trips/call", unit: unitCount},
		{key: "allocs", label: "allocs/call", unit: unitCount},
	})
	t.ref = enqueueName
	t.intro = fmt.Sprintf("%d interleaved rounds. Each goroutine calls `Queue.Enqueue` or `Topic.Publish` of a %d-byte payload in a loop for %v per run "+
		"(after an unmeasured warm-up, which also lets the Topic learn its subscriptions), on one client, into a fresh queue, or a fresh topic "+
		"subscribed to beforehand (`Subscribe` with defaults), every library default otherwise; nobody consumes. "+
		"A call is one Enqueue or one Publish; deliveries/s is calls/s times the subscriptions (1 for Enqueue). "+
		"cmds/call counts every command Redis ran (`INFO commandstats`, commands inside the scripts included), round trips/call the client's "+
		"go-redis hook calls. \"× %s\" divides by Enqueue's figure in the same round. allocs/call as in scenario 2.",
		cfg.fastRounds, topicPayloadSize, cfg.topicDur, enqueueName)
	return t
}

func topicPublish(ctx context.Context, e *env, cfg config, t *table, progress func(string)) error {
	cs := topicPublishContenders(e)
	mixes := map[string]string{}
	for r := range cfg.fastRounds {
		for vi, n := range topicGoroutines {
			for i := range cs {
				ct := cs[(i+r)%len(cs)]
				if err := e.flush(ctx); err != nil {
					return err
				}
				res, err := measureCycle(ctx, e, ct, n, cfg.topicDur)
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					t.fail(t.variants[vi], ct.name, r, err)
					progress(fmt.Sprintf("topic r%d g=%d %-36s FAILED: %v", r+1, n, ct.name, err))
					continue
				}
				vals := res.values()
				vals["deliveries"] = vals["ops"] * float64(subsOf(ct.name))
				if n == 1 {
					mixes[ct.name] = commandMix(res.counts, res.cycles)
				}
				t.record(t.variants[vi], ct.name, vals)
				progress(fmt.Sprintf("topic r%d g=%-2d %-36s %8.0f calls/s p50 %6.1fµs cmds/call %.2f rt/call %.3f",
					r+1, n, ct.name, vals["ops"], vals["p50"], vals["cmds"], vals["rt"]))
			}
		}
	}
	for _, name := range t.contenders {
		if mix, ok := mixes[name]; ok {
			t.notes = append(t.notes, fmt.Sprintf("Commands per call of %s, 1 goroutine, last round: %s.", name, mix))
		}
	}
	return nil
}

// subsOf is how many deliveries one call of a part-1 contender makes.
func subsOf(name string) int {
	for _, s := range topicSubs {
		if name == publishName(s) {
			return s
		}
	}
	return 1
}

func newTopicFanTable(cfg config) *table {
	names := contenderNames(fanContenders, func(c fanContender) string { return c.name })
	t := newTable("topicfan", "9b. Topics: fan-out end to end", "", nil, names, []metric{
		{key: "rate", label: "deliveries/s", unit: unitRate, higher: true, ratio: true},
		{key: "drain", label: "drain time", unit: unitMicros},
		{key: "write", label: "write time (one batch call)", unit: unitMicros, ratio: true},
		{key: "cmds", label: "drain cmds/delivery", unit: unitCount, ratio: true},
		{key: "rt", label: "drain round trips/delivery", unit: unitCount},
		{key: "wcmds", label: "write cmds/delivery", unit: unitCount},
		{key: "wrt", label: "write round trips", unit: unitCount},
	})
	t.ref = fanPlainName
	d := cfg.topicFanMsgs * topicFanSubs
	t.intro = fmt.Sprintf("%d interleaved rounds of %d deliveries of a %d-byte payload, after `FLUSHALL`: %d messages published to %d subscriptions, "+
		"next to a plain queue holding %d messages, both drained by %d workers in all (%d `Consume` calls at `WithConcurrency(%d)`), "+
		"no-op handlers; every subscription must end up with exactly %d handler calls, every queue empty and, for the topic, "+
		"no payload left. deliveries/s is %d over the drain time, from the start of the consumers to the last handler call; "+
		"the write (one `PublishBatch` or one `EnqueueBatch` call) is timed and counted apart. The topic's first publish learns "+
		"its subscriptions (the publishing Topic is new each run), so its write takes two round trips. A run that does not finish within %v fails.",
		cfg.rounds, d, topicPayloadSize, cfg.topicFanMsgs, topicFanSubs, d, topicFanSubs*topicFanConc, topicFanSubs, topicFanConc,
		cfg.topicFanMsgs, d, cfg.queueTimeout)
	for _, ct := range fanContenders {
		t.notes = append(t.notes, "**"+ct.name+"**: "+ct.desc+".")
	}
	return t
}

func topicFan(ctx context.Context, e *env, cfg config, t *table, progress func(string)) error {
	if err := loadTopicScripts(ctx, e); err != nil {
		return err
	}
	d := int64(cfg.topicFanMsgs * topicFanSubs)
	for r := range cfg.rounds {
		for i := range fanContenders {
			ct := fanContenders[(i+r)%len(fanContenders)]
			if err := e.flush(ctx); err != nil {
				return err
			}
			res, err := ct.run(ctx, e, cfg.topicFanMsgs, topicFanSubs, topicFanConc, cfg.queueTimeout)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				t.fail("", ct.name, r, err)
				progress(fmt.Sprintf("topic fan-out r%d %-13s FAILED: %v", r+1, ct.name, err))
				continue
			}
			vals := map[string]float64{
				"rate":  float64(d) / res.drain.Seconds(),
				"drain": float64(res.drain) / float64(time.Microsecond),
				"write": float64(res.write) / float64(time.Microsecond),
				"cmds":  perOp(res.drainCounts.total, d),
				"rt":    perOp(res.drainCounts.rt, d),
				"wcmds": perOp(res.writeCounts.total, d),
				"wrt":   float64(res.writeCounts.rt),
			}
			t.record("", ct.name, vals)
			progress(fmt.Sprintf("topic fan-out r%d %-13s %7.0f deliveries/s write %v cmds/delivery %.2f",
				r+1, ct.name, vals["rate"], res.write.Round(time.Millisecond), vals["cmds"]))
		}
	}
	return nil
}

func newTopicMemTable(cfg config) *table {
	var variants []string
	for _, s := range topicMemSubs {
		for _, size := range topicMemSizes {
			variants = append(variants, memVariant(s, size))
		}
	}
	names := contenderNames(memContenders, func(c memContender) string { return c.name })
	t := newTable("topicmem", "9c. Topics: memory per message per subscription", "subscriptions, payload", variants, names, []metric{
		{key: "per", label: "bytes/message/subscription", unit: unitCount, ratio: true},
		{key: "mib", label: "used_memory delta (MiB)", unit: unitCount},
		{key: "write", label: "write time", unit: unitMicros, ratio: true},
	})
	t.ref = memCopiesName
	t.intro = fmt.Sprintf("`INFO memory` `used_memory` after writing %d messages (random ids, as `PublishBatch` and `EnqueueBatch` give) "+
		"less before, divided by %d × the subscriptions; the delta itself in MiB. Each run starts with `FLUSHALL`; both readings "+
		"are taken %v after the writing client closed its connections, so no client buffer counts, and after an unmeasured "+
		"warm-up loaded the scripts. used_memory counts allocations, not pages, and the same writes allocate the same, so one "+
		"round is enough: the figures are of one run each. Write time is the `PublishBatch` call, or the `EnqueueBatch` calls one "+
		"queue after another (one round, so noisier than the figures above). Nobody consumes.", cfg.topicMemMsgs, cfg.topicMemMsgs, memSettle)
	for _, ct := range memContenders {
		t.notes = append(t.notes, "**"+ct.name+"**: "+ct.desc+".")
	}
	return t
}

func memVariant(subs, size int) string { return fmt.Sprintf("%d, %d B", subs, size) }

func topicMemory(ctx context.Context, e *env, cfg config, t *table, progress func(string)) error {
	if err := loadTopicScripts(ctx, e); err != nil {
		return err
	}
	for _, subs := range topicMemSubs {
		for vi, size := range topicMemSizes {
			v := memVariant(subs, size)
			for i := range memContenders {
				ct := memContenders[(i+vi)%len(memContenders)]
				if err := e.flush(ctx); err != nil {
					return err
				}
				res, err := ct.run(ctx, e, cfg.topicMemMsgs, subs, size)
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					t.fail(v, ct.name, 0, err)
					progress(fmt.Sprintf("topic memory %s %-30s FAILED: %v", v, ct.name, err))
					continue
				}
				vals := map[string]float64{
					"per":   perOp(res.delta, int64(cfg.topicMemMsgs*subs)),
					"mib":   float64(res.delta) / (1 << 20),
					"write": float64(res.write) / float64(time.Microsecond),
				}
				t.record(v, ct.name, vals)
				progress(fmt.Sprintf("topic memory %-9s %-30s %6.0f B/msg/sub %6.1f MiB write %v",
					v, ct.name, vals["per"], vals["mib"], res.write.Round(time.Millisecond)))
			}
		}
	}
	return e.flush(ctx)
}
