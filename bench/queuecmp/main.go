// Command queuecmp measures redlease's queue hot path against a running
// redis-server, so that compare.sh can build it against two versions of
// the library and run them in turns: Enqueue of one message at a time on
// one goroutine, EnqueueBatch (filling a queue), Consume draining that
// queue at each concurrency, and one Stats call. Besides rates it counts
// Redis commands per message (INFO commandstats deltas: commands run
// inside Lua scripts count) and client round trips per message (a go-redis
// hook: one per command or pipeline). It uses only API that every version
// has, and deletes its keys (under a prefix of its own) when done.
//
//	queuecmp run -addr 127.0.0.1:6379 -conc 1,16 -msgs 20000 -dur 1s
//	queuecmp summary FILE   # lines "round version kind operation measure value"
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redlease/redlease"
	"github.com/redlease/redlease/bench/internal/cmpstat"
	"github.com/redlease/redlease/bench/internal/queueload"
)

const (
	// cleanupTimeout bounds deleting the run's keys at the end.
	cleanupTimeout = 10 * time.Second
	// scanCount is the COUNT hint of the SCAN that finds the run's keys.
	scanCount = 1000
	// cmdPrefix marks a measure that is one Redis command's share of the
	// commands per message, e.g. "cmd:evalsha".
	cmdPrefix = "cmd:"
	// countFormat prints commands and round trips per message: one
	// command in 10,000 messages still shows.
	countFormat = "%.4f"
	// diffFormat prints new − old of a count.
	diffFormat = "%+.4f"
	// rateFormat and ratioFormat print msgs/s and new ÷ old.
	rateFormat, ratioFormat = "%.0f", "%.3f"
)

// Line kinds: a rate is compared as a ratio new ÷ old, a count as a
// difference new − old.
const (
	kindRate  = "rate"
	kindCount = "count"
)

// Operations, as the summary names them.
const (
	opEnqueue = "Enqueue"
	opBatch   = "EnqueueBatch"
	opConsume = "Consume"
	opStats   = "Stats"
)

func main() { cmpstat.Main("queuecmp", runCmd, summary) }

// config is what one run measures.
type config struct {
	conc     []int         // Consume concurrencies
	msgs     int           // messages per measured fill and drain
	warmMsgs int           // messages per unmeasured fill and drain before each measured one
	payload  []byte        // every message's body
	dur      time.Duration // length of the measured Enqueue loop
	warm     time.Duration // length of the unmeasured Enqueue loop before it
	timeout  time.Duration // longest a drain may take
}

// runCmd prints lines "kind operation measure value" (see summary).
func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	addr := fs.String("addr", "", "redis-server address (required)")
	conc := fs.String("conc", "1,16", "comma-separated Consume concurrencies")
	msgs := fs.Int("msgs", 20_000, "messages filled with EnqueueBatch and drained by Consume, per concurrency")
	warmMsgs := fs.Int("warmup-msgs", 2_000, "messages filled and drained, unmeasured, before each measured drain")
	size := fs.Int("payload", 100, "payload bytes per message")
	dur := fs.Duration("dur", time.Second, "length of the measured Enqueue loop")
	warm := fs.Duration("warmup", 200*time.Millisecond, "unmeasured Enqueue loop before the measured one")
	timeout := fs.Duration("timeout", time.Minute, "longest one drain may take")
	lib := fs.Bool("lib", false, "print where the redlease module came from, and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *lib {
		fmt.Println(cmpstat.LibSource())
		return nil
	}
	if *addr == "" {
		return errors.New("-addr is required")
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

	ctx := context.Background()
	e, err := newEnv(ctx, *addr)
	if err != nil {
		return err
	}
	defer e.close()
	return measure(ctx, e, cfg)
}

// measure runs every measurement of one run and prints its lines.
func measure(ctx context.Context, e *env, cfg config) error {
	producer := redlease.NewQueue(e.counted, "enqueue", e.opt)
	if _, err := queueload.EnqueueLoop(ctx, producer, cfg.payload, cfg.warm); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	var n int
	c, err := e.window(ctx, func() error {
		var err error
		n, err = queueload.EnqueueLoop(ctx, producer, cfg.payload, cfg.dur)
		return err
	})
	if err != nil {
		return err
	}
	emit(kindRate, opEnqueue, "msgs/s", float64(n)/c.elapsed.Seconds())
	emitPerMessage(opEnqueue, c, n)

	var batch counts // every measured fill, summed
	var q *redlease.Queue
	for _, conc := range cfg.conc {
		q = redlease.NewQueue(e.counted, "consume-"+strconv.Itoa(conc), e.opt)
		if err := fill(ctx, q, cfg.payload, cfg.warmMsgs); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		if _, err := queueload.Drain(ctx, q, cfg.warmMsgs, conc, cfg.timeout); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		c, err := e.window(ctx, func() error { return fill(ctx, q, cfg.payload, cfg.msgs) })
		if err != nil {
			return err
		}
		batch.add(c)
		var took time.Duration
		c, err = e.window(ctx, func() error {
			var err error
			took, err = queueload.Drain(ctx, q, cfg.msgs, conc, cfg.timeout)
			return err
		})
		if err != nil {
			return fmt.Errorf("consume at concurrency %d: %w", conc, err)
		}
		op := opConsume + "/c=" + strconv.Itoa(conc)
		emit(kindRate, op, "msgs/s", float64(cfg.msgs)/took.Seconds())
		emitPerMessage(op, c, cfg.msgs)
		if s, err := q.Stats(ctx); err != nil || s.Ready+s.Delayed+s.InFlight+s.Dead != 0 {
			return fmt.Errorf("queue not empty after consume at concurrency %d: %+v %v", conc, s, err)
		}
	}
	filled := cfg.msgs * len(cfg.conc)
	emit(kindRate, opBatch, "msgs/s", float64(filled)/batch.elapsed.Seconds())
	emitPerMessage(opBatch, batch, filled)

	c, err = e.window(ctx, func() error {
		_, err := q.Stats(ctx)
		return err
	})
	if err != nil {
		return err
	}
	emit(kindCount, opStats, "cmds/call", float64(c.total))
	emit(kindCount, opStats, "rt/call", float64(c.rt))
	return nil
}

// emit prints one result line.
func emit(kind, op, measure string, v float64) {
	fmt.Printf("%s %s %s %g\n", kind, op, measure, v)
}

// emitPerMessage prints the commands and round trips of c per message,
// and each command's share.
func emitPerMessage(op string, c counts, n int) {
	emit(kindCount, op, "cmds/msg", float64(c.total)/float64(n))
	emit(kindCount, op, "rt/msg", float64(c.rt)/float64(n))
	for _, name := range slices.Sorted(maps.Keys(c.byName)) {
		emit(kindCount, op, cmdPrefix+name, float64(c.byName[name])/float64(n))
	}
}

// fill enqueues n copies of payload with one EnqueueBatch.
func fill(ctx context.Context, q *redlease.Queue, payload []byte, n int) error {
	batch := make([][]byte, n)
	for i := range batch {
		batch[i] = payload
	}
	if _, err := q.EnqueueBatch(ctx, batch); err != nil {
		return fmt.Errorf("enqueue batch: %w", err)
	}
	return nil
}

// env holds one run's clients: an admin client that is not counted, and
// the counted client every queue uses.
type env struct {
	admin    *redis.Client
	counted  *redis.Client
	rt       atomic.Int64     // round trips of counted
	overhead map[string]int64 // commands the window's own CONFIG RESETSTAT + INFO add
	prefix   string           // every key of this run starts with it
	opt      redlease.Option  // puts a Queue's keys under prefix
}

func newEnv(ctx context.Context, addr string) (*env, error) {
	e := &env{
		admin:   redis.NewClient(&redis.Options{Addr: addr}),
		counted: redis.NewClient(&redis.Options{Addr: addr}),
		prefix:  fmt.Sprintf("queuecmp-%d-%d", os.Getpid(), time.Now().UnixNano()),
	}
	e.counted.AddHook(cmpstat.RoundTrips{N: &e.rt})
	e.opt = redlease.WithPrefix(e.prefix)
	// Calibrate: with nothing else running, a reset followed by a reading
	// shows exactly what the measurement itself adds.
	if err := e.admin.ConfigResetStat(ctx).Err(); err != nil {
		e.close()
		return nil, err
	}
	c, err := e.commandStats(ctx)
	if err != nil {
		e.close()
		return nil, err
	}
	e.overhead = c.byName
	return e, nil
}

// close deletes the run's keys and closes the clients.
func (e *env) close() {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	iter := e.admin.Scan(ctx, 0, e.prefix+":*", scanCount).Iterator()
	for iter.Next(ctx) {
		e.admin.Unlink(ctx, iter.Val())
	}
	if err := iter.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "queuecmp: deleting the run's keys:", err)
	}
	e.counted.Close()
	e.admin.Close()
}

// counts is what Redis and the hook saw in measured windows.
type counts struct {
	total   int64            // commands, those run inside scripts included
	byName  map[string]int64 // per command ("evalsha", "hset", ...)
	rt      int64            // round trips of the counted client
	elapsed time.Duration    // time inside the windows
}

// add sums o into c.
func (c *counts) add(o counts) {
	c.total += o.total
	c.rt += o.rt
	c.elapsed += o.elapsed
	if c.byName == nil {
		c.byName = map[string]int64{}
	}
	for k, v := range o.byName {
		c.byName[k] += v
	}
}

// window runs f between a reset and a reading of Redis's command
// statistics and of the round-trip counter, and returns what f did.
func (e *env) window(ctx context.Context, f func() error) (counts, error) {
	if err := e.admin.ConfigResetStat(ctx).Err(); err != nil {
		return counts{}, err
	}
	e.rt.Store(0)
	start := time.Now()
	if err := f(); err != nil {
		return counts{}, err
	}
	elapsed := time.Since(start)
	rt := e.rt.Load()
	c, err := e.commandStats(ctx)
	if err != nil {
		return c, err
	}
	for name, n := range e.overhead {
		c.byName[name] -= n
		c.total -= n
		if c.byName[name] == 0 {
			delete(c.byName, name)
		}
	}
	c.rt, c.elapsed = rt, elapsed
	return c, nil
}

// commandStats reads calls= of every cmdstat_ line of INFO commandstats.
func (e *env) commandStats(ctx context.Context) (counts, error) {
	info, err := e.admin.Info(ctx, "commandstats").Result()
	if err != nil {
		return counts{}, fmt.Errorf("INFO commandstats: %w", err)
	}
	byName, total, err := cmpstat.CommandCalls(info)
	return counts{byName: byName, total: total}, err
}

// row is one operation and measure of the summary.
type row struct{ kind, op, measure string }

// results are the lines of a results file.
type results struct {
	vals   map[resultKey]float64
	ran    map[int]map[string]bool // round -> versions with lines in it
	rows   []row                   // in the order first seen
	rounds []int
}

type resultKey struct {
	round   int
	version string
	row     row
}

// readResults reads lines "round version kind operation measure value".
func readResults(path string) (*results, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	res := &results{vals: map[resultKey]float64{}, ran: map[int]map[string]bool{}}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var k resultKey
		var v float64
		if _, err := fmt.Sscan(sc.Text(), &k.round, &k.version, &k.row.kind, &k.row.op, &k.row.measure, &v); err != nil {
			return nil, fmt.Errorf("bad line %q: %w", sc.Text(), err)
		}
		res.vals[k] = v
		if !slices.Contains(res.rows, k.row) {
			res.rows = append(res.rows, k.row)
		}
		if res.ran[k.round] == nil {
			res.ran[k.round] = map[string]bool{}
			res.rounds = append(res.rounds, k.round)
		}
		res.ran[k.round][k.version] = true
	}
	return res, sc.Err()
}

// series returns a row's old and new values over the rounds both versions
// ran. A count a version did not print in such a round is 0 (a command it
// did not send); a rate either did not print leaves the round out.
func (res *results) series(r row) (olds, news []float64) {
	for _, rd := range res.rounds {
		if !res.ran[rd]["old"] || !res.ran[rd]["new"] {
			continue
		}
		o, okO := res.vals[resultKey{rd, "old", r}]
		n, okN := res.vals[resultKey{rd, "new", r}]
		if r.kind == kindRate && (!okO || !okN || o == 0) {
			continue
		}
		olds, news = append(olds, o), append(news, n)
	}
	return olds, news
}

// sortRows orders the rows by operation, in the order the operations
// ran; within one, the totals first, then the commands by name.
func (res *results) sortRows() {
	var ops []string
	for _, r := range res.rows {
		if !slices.Contains(ops, r.op) {
			ops = append(ops, r.op)
		}
	}
	slices.SortStableFunc(res.rows, func(a, b row) int {
		if c := slices.Index(ops, a.op) - slices.Index(ops, b.op); c != 0 {
			return c
		}
		aCmd, bCmd := strings.HasPrefix(a.measure, cmdPrefix), strings.HasPrefix(b.measure, cmdPrefix)
		switch {
		case aCmd && bCmd:
			return strings.Compare(a.measure, b.measure)
		case aCmd:
			return 1
		case bCmd:
			return -1
		}
		return 0
	})
}

// summary reads a results file (version "old" or "new") and prints three
// tables: rates, with each version's median [min–max] over rounds and the
// median [min–max] of the per-round ratios new ÷ old; commands and round
// trips per message (per call for Stats), with each version's median
// [min–max] and the difference of the medians; and the same per command,
// for the commands whose median differs.
func summary(path string) error {
	res, err := readResults(path)
	if err != nil {
		return err
	}
	res.sortRows()

	fmt.Println("| operation | old msgs/s | new msgs/s | new ÷ old (median [min–max] of per-round ratios) | rounds |")
	fmt.Println("| --- | --- | --- | --- | --- |")
	for _, r := range res.rows {
		if r.kind != kindRate {
			continue
		}
		olds, news := res.series(r)
		ratios := make([]float64, len(olds))
		for i := range olds {
			ratios[i] = news[i] / olds[i]
		}
		fmt.Printf("| %s | %s | %s | ×%s | %d |\n", r.op, spreadText(olds, rateFormat), spreadText(news, rateFormat),
			spreadText(ratios, ratioFormat), len(ratios))
	}

	fmt.Println()
	fmt.Println("| operation | measure | old | new | new − old |")
	fmt.Println("| --- | --- | --- | --- | --- |")
	same := 0 // commands whose median share prints the same for both
	var perCommand []string
	for _, r := range res.rows {
		if r.kind != kindCount {
			continue
		}
		olds, news := res.series(r)
		om, _, _ := cmpstat.Spread(olds)
		nm, _, _ := cmpstat.Spread(news)
		name, isCmd := strings.CutPrefix(r.measure, cmdPrefix)
		line := fmt.Sprintf("| %s | %s | %s | %s | "+diffFormat+" |", r.op, name,
			spreadText(olds, countFormat), spreadText(news, countFormat), nm-om)
		switch {
		case !isCmd:
			fmt.Println(line)
		case fmt.Sprintf(countFormat, om) == fmt.Sprintf(countFormat, nm):
			same++
		default:
			perCommand = append(perCommand, line)
		}
	}

	fmt.Println()
	fmt.Printf("Commands per message whose median differs (%d other operation/command pairs: the same in both):\n\n", same)
	fmt.Println("| operation | command | old | new | new − old |")
	fmt.Println("| --- | --- | --- | --- | --- |")
	for _, l := range perCommand {
		fmt.Println(l)
	}
	return nil
}

// spreadText formats vals' median, and their range when its ends differ
// in format.
func spreadText(vals []float64, format string) string {
	med, lo, hi := cmpstat.Spread(vals)
	s := fmt.Sprintf(format, med)
	if l, h := fmt.Sprintf(format, lo), fmt.Sprintf(format, hi); l != h {
		s += " [" + l + "–" + h + "]"
	}
	return s
}
