// Command otelcmp measures what the OpenTelemetry hook (redleaseotel)
// costs on the queue's hot path against a running redis-server, so that
// compare.sh can run it with the hook off and on in turns: Enqueue of one
// message at a time on one goroutine, then, per Consume concurrency, a
// queue filled (unmeasured) and drained by Consume with a no-op handler.
// With the hook on, every queue has a Hook with an SDK MeterProvider (a
// ManualReader), an SDK TracerProvider sampling every span into a span
// processor that drops them (-spans discard) or the SDK's batch span
// processor with an exporter that drops them (-spans batch), and the TraceContext
// propagator; so the messages consumed carry a traceparent header, as
// they would in a traced program. Besides msgs/s it reports the heap
// allocations per message of the whole process.
//
//	otelcmp run -hook on -addr 127.0.0.1:6379 -conc 1,16 -msgs 20000 -dur 1s
//	otelcmp summary FILE   # lines "round mode kind operation measure value", mode off or on
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/redlease/redlease"
	"github.com/redlease/redlease/bench/internal/cmpstat"
	"github.com/redlease/redlease/bench/internal/queueload"
	"github.com/redlease/redlease/redleaseotel"
)

const (
	// fillers is how many goroutines fill a queue with Enqueue.
	fillers = 16
	// cleanupTimeout bounds deleting the run's keys at the end.
	cleanupTimeout = 10 * time.Second
	// scanCount is the COUNT hint of the SCAN that finds the run's keys.
	scanCount = 1000
	// Line kinds: a rate compares as on ÷ off, allocations as on − off.
	kindRate, kindAllocs = "rate", "allocs"
)

func main() { cmpstat.Main("otelcmp", runCmd, summary) }

// config is what one run measures.
type config struct {
	conc     []int
	msgs     int
	warmMsgs int
	payload  []byte
	dur      time.Duration
	warm     time.Duration
	timeout  time.Duration
}

// runCmd prints lines "kind operation measure value".
func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	addr := fs.String("addr", "", "redis-server address (required)")
	hook := fs.String("hook", "", "off or on (required)")
	conc := fs.String("conc", "1,16", "comma-separated Consume concurrencies")
	msgs := fs.Int("msgs", 20_000, "messages filled and drained by Consume, per concurrency")
	warmMsgs := fs.Int("warmup-msgs", 2_000, "messages filled and drained, unmeasured, before each measured drain")
	size := fs.Int("payload", 100, "payload bytes per message")
	dur := fs.Duration("dur", time.Second, "length of the measured Enqueue loop")
	warm := fs.Duration("warmup", 200*time.Millisecond, "unmeasured Enqueue loop before the measured one")
	timeout := fs.Duration("timeout", time.Minute, "longest one drain may take")
	spans := fs.String("spans", "discard", "with -hook on, where ended spans go: discard (a span processor that drops them), batch (the SDK's batch span processor, to an exporter that drops them), or none (a no-op TracerProvider: metrics only)")
	sample := fs.Float64("sample", 1, "with -hook on, the fraction of traces sampled: 1 samples every one (AlwaysSample), less a ParentBased TraceIDRatioBased sampler")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the run to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" || (*hook != "on" && *hook != "off") {
		return errors.New("-addr and -hook on|off are required")
	}
	if *spans != "discard" && *spans != "batch" && *spans != "none" {
		return errors.New("-spans must be discard, batch or none")
	}
	if *sample < 0 || *sample > 1 {
		return errors.New("-sample must be 0 to 1")
	}
	if *msgs < 1 || *warmMsgs < 1 || *size < 0 || *size > redlease.MaxPayload {
		return errors.New("-msgs and -warmup-msgs must be positive, -payload 0 to redlease.MaxPayload")
	}
	cfg := config{msgs: *msgs, warmMsgs: *warmMsgs, payload: []byte(strings.Repeat("x", *size)),
		dur: *dur, warm: *warm, timeout: *timeout}
	for f := range strings.SplitSeq(*conc, ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return fmt.Errorf("bad concurrency %q", f)
		}
		cfg.conc = append(cfg.conc, n)
	}

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	ctx := context.Background()
	client := redis.NewClient(&redis.Options{Addr: *addr, PoolSize: 2 * fillers})
	defer client.Close()
	prefix := fmt.Sprintf("otelcmp-%d-%d", os.Getpid(), time.Now().UnixNano())
	defer cleanup(client, prefix)
	opts := []redlease.QueueOption{redlease.WithPrefix(prefix)}
	if *hook == "on" {
		h, shutdown := newHook(*spans, *sample)
		defer shutdown()
		opts = append(opts, redlease.WithHook(h))
	}
	return measure(ctx, client, opts, cfg)
}

// discard is a span exporter, and a span processor, that drops what it
// is given.
type discard struct{}

func (discard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discard) OnStart(context.Context, sdktrace.ReadWriteSpan)            {}
func (discard) OnEnd(sdktrace.ReadOnlySpan)                                {}
func (discard) ForceFlush(context.Context) error                           { return nil }
func (discard) Shutdown(context.Context) error                             { return nil }

// newHook returns a Hook on SDK providers that record everything (every
// span sampled, recorded and ended) and export nothing, and their
// shutdown. Ended spans go to a processor that drops them (spans
// "discard"), or through the SDK's batch span processor, which hands each
// to a goroutine of its own, to an exporter that drops them ("batch"); with
// "none" the TracerProvider is a no-op, so that only metrics are recorded.
func newHook(spans string, sample float64) (*redleaseotel.Hook, func()) {
	processor := sdktrace.WithSpanProcessor(discard{})
	if spans == "batch" {
		processor = sdktrace.WithBatcher(discard{})
	}
	sampler := sdktrace.AlwaysSample()
	if sample < 1 {
		sampler = sdktrace.ParentBased(sdktrace.TraceIDRatioBased(sample))
	}
	sdk := sdktrace.NewTracerProvider(sdktrace.WithSampler(sampler), processor)
	var tp trace.TracerProvider = sdk
	if spans == "none" {
		tp = tracenoop.NewTracerProvider()
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	h := redleaseotel.NewHook(redleaseotel.WithTracerProvider(tp), redleaseotel.WithMeterProvider(mp),
		redleaseotel.WithPropagator(propagation.TraceContext{}))
	return h, func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		sdk.Shutdown(ctx)
		mp.Shutdown(ctx)
	}
}

// measure runs every measurement of one run and prints its lines.
func measure(ctx context.Context, client *redis.Client, opts []redlease.QueueOption, cfg config) error {
	producer := redlease.NewQueue(client, "enqueue", opts...)
	if _, err := queueload.EnqueueLoop(ctx, producer, cfg.payload, cfg.warm); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	var n int
	start, mallocs := time.Now(), mallocCount()
	n, err := queueload.EnqueueLoop(ctx, producer, cfg.payload, cfg.dur)
	if err != nil {
		return err
	}
	emit(kindRate, "Enqueue", "msgs/s", float64(n)/time.Since(start).Seconds())
	emit(kindAllocs, "Enqueue", "allocs/msg", float64(mallocCount()-mallocs)/float64(n))

	for _, conc := range cfg.conc {
		q := redlease.NewQueue(client, "consume-"+strconv.Itoa(conc), opts...)
		if err := fill(ctx, q, cfg.payload, cfg.warmMsgs); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		if _, err := queueload.Drain(ctx, q, cfg.warmMsgs, conc, cfg.timeout); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		if err := fill(ctx, q, cfg.payload, cfg.msgs); err != nil {
			return err
		}
		runtime.GC() // the fill's garbage is not the drain's
		mallocs := mallocCount()
		took, err := queueload.Drain(ctx, q, cfg.msgs, conc, cfg.timeout)
		if err != nil {
			return fmt.Errorf("consume at concurrency %d: %w", conc, err)
		}
		op := "Consume/c=" + strconv.Itoa(conc)
		emit(kindRate, op, "msgs/s", float64(cfg.msgs)/took.Seconds())
		emit(kindAllocs, op, "allocs/msg", float64(mallocCount()-mallocs)/float64(cfg.msgs))
		if s, err := q.Stats(ctx); err != nil || s.Ready+s.Delayed+s.InFlight+s.Dead != 0 {
			return fmt.Errorf("queue not empty after consume at concurrency %d: %+v %v", conc, s, err)
		}
	}
	return nil
}

// mallocCount is the process's heap allocations so far.
func mallocCount() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Mallocs
}

// fill enqueues n copies of payload with Enqueue from fillers goroutines,
// so that with the hook on each message carries its trace context.
func fill(ctx context.Context, q *redlease.Queue, payload []byte, n int) error {
	var wg sync.WaitGroup
	errs := make([]error, fillers)
	for g := range fillers {
		wg.Go(func() {
			for i := g; i < n && errs[g] == nil; i += fillers {
				_, errs[g] = q.Enqueue(ctx, payload)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("fill: %w", err)
	}
	return nil
}

// cleanup deletes the run's keys.
func cleanup(c *redis.Client, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	iter := c.Scan(ctx, 0, prefix+":*", scanCount).Iterator()
	for iter.Next(ctx) {
		c.Unlink(ctx, iter.Val())
	}
	if err := iter.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "otelcmp: deleting the run's keys:", err)
	}
}

// emit prints one result line.
func emit(kind, op, measure string, v float64) {
	fmt.Printf("%s %s %s %g\n", kind, op, measure, v)
}

// A key names one figure of one round.
type key struct {
	round    int
	mode     string
	kind, op string
}

// summary reads lines "round mode kind operation measure value" and
// prints, per operation, each mode's msgs/s median [min–max] and the
// median [min–max] of the per-round ratios on ÷ off, then the median
// allocations per message of each mode.
func summary(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	vals := map[key]float64{}
	var ops []string
	var rounds []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var k key
		var measure string
		var v float64
		if _, err := fmt.Sscan(sc.Text(), &k.round, &k.mode, &k.kind, &k.op, &measure, &v); err != nil {
			return fmt.Errorf("bad line %q: %w", sc.Text(), err)
		}
		vals[k] = v
		if !slices.Contains(ops, k.op) {
			ops = append(ops, k.op)
		}
		if !slices.Contains(rounds, k.round) {
			rounds = append(rounds, k.round)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	series := func(kind, op string) (offs, ons []float64) {
		for _, r := range rounds {
			off, okOff := vals[key{r, "off", kind, op}]
			on, okOn := vals[key{r, "on", kind, op}]
			if okOff && okOn && off > 0 {
				offs, ons = append(offs, off), append(ons, on)
			}
		}
		return offs, ons
	}
	fmt.Println("| operation | hook off msgs/s | hook on msgs/s | on ÷ off (median [min–max] of per-round ratios) | rounds | allocs/msg off | allocs/msg on |")
	fmt.Println("| --- | --- | --- | --- | --- | --- | --- |")
	for _, op := range ops {
		offs, ons := series(kindRate, op)
		ratios := make([]float64, len(offs))
		for i := range offs {
			ratios[i] = ons[i] / offs[i]
		}
		aOff, aOn := series(kindAllocs, op)
		mOff, _, _ := cmpstat.Spread(aOff)
		mOn, _, _ := cmpstat.Spread(aOn)
		fmt.Printf("| %s | %s | %s | ×%s | %d | %.1f | %.1f |\n", op, spread(offs, "%.0f"), spread(ons, "%.0f"),
			spread(ratios, "%.3f"), len(ratios), mOff, mOn)
	}
	return nil
}

// spread formats vals' median [min–max].
func spread(vals []float64, format string) string {
	med, lo, hi := cmpstat.Spread(vals)
	return fmt.Sprintf(format+" ["+format+"–"+format+"]", med, lo, hi)
}
