// Command bench compares redlease with redsync, redislock, asynq and a
// raw go-redis floor on a redis-server it starts for itself on loopback.
//
//	go run .                 # full run, about 8 minutes on 2 cores
//	go run . -quick          # smoke run, one to two minutes
//	go run . -out /tmp/x     # write results.md and plots/ there
//	go run . -only shared    # some scenarios only
//
// Every scenario runs every contender interleaved (round 1: A B C D,
// round 2: B C D A, ...), so drift over the run hits all contenders alike;
// results.md reports medians over rounds with their min–max.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"
)

// config holds every parameter of a run; results.md prints them from here.
type config struct {
	quick bool
	out   string
	// rounds is the number of interleaved rounds of the long scenarios
	// (watchdog, queue); fastRounds that of the short ones (lock cycle,
	// hand-off, pick-up), where more rounds buy steadier medians cheaply.
	rounds, fastRounds int

	cycleDur        time.Duration
	cycleGoroutines []int

	handoffDur        time.Duration
	handoffGoroutines int
	holds             []time.Duration

	watchLocks int
	watchTTL   time.Duration
	watchHold  time.Duration

	queueMsgs    int
	queueConc    []int
	queueTimeout time.Duration

	pickupMsgs int
	pickupGap  time.Duration
	pickupWait time.Duration

	streamDur time.Duration // one run of the writer-under-readers scenario

	topicDur     time.Duration // one run of the topic publish loop
	topicFanMsgs int           // messages published in a topic fan-out run
	topicMemMsgs int           // messages written in a topic memory run

	budget time.Duration // the whole run is cancelled past this
	steps  []scenario    // what runs, in order
}

// scenario is one step of a run: it measures and returns one table.
type scenario struct {
	name string // for -only
	run  func(context.Context, *env, config, func(string)) (*table, error)
}

// scenarios lists every step in the order a full run takes them.
var scenarios = []scenario{
	{"cycle", scenarioCycle}, {"handoff", scenarioHandoff}, {"watchdog", scenarioWatchdog},
	{"queue", scenarioQueue}, {"pickup", scenarioPickup}, {"shared", scenarioShared}, {"writer", scenarioWriter},
	{"topic", scenarioTopic},
}

func scenarioNames() []string {
	return contenderNames(scenarios, func(s scenario) string { return s.name })
}

// pickScenarios resolves -only: every scenario when empty, else the named
// ones in the order of a full run.
func pickScenarios(only string) ([]scenario, error) {
	if only == "" {
		return scenarios, nil
	}
	want := map[string]bool{}
	for name := range strings.SplitSeq(only, ",") {
		if !slices.Contains(scenarioNames(), name) {
			return nil, fmt.Errorf("-only: no scenario %q (have %s)", name, strings.Join(scenarioNames(), ","))
		}
		want[name] = true
	}
	var steps []scenario
	for _, s := range scenarios {
		if want[s.name] {
			steps = append(steps, s)
		}
	}
	return steps, nil
}

func defaultConfig(quick bool) config {
	c := config{
		quick: quick, rounds: 3, fastRounds: 5,
		cycleDur: time.Second, cycleGoroutines: []int{1, 16},
		handoffDur: time.Second, handoffGoroutines: 8, holds: []time.Duration{0, 100 * time.Microsecond, manyLockersHold},
		watchLocks: 1000, watchTTL: time.Second, watchHold: 3 * time.Second,
		queueMsgs: 20000, queueConc: []int{1, 16, 64}, queueTimeout: 60 * time.Second,
		pickupMsgs: 30, pickupGap: 30 * time.Millisecond, pickupWait: 5 * time.Second,
		topicDur: 500 * time.Millisecond, topicFanMsgs: 10000, topicMemMsgs: 10000,
		streamDur: 2 * time.Second,
		budget:    12 * time.Minute,
	}
	if quick {
		c.cycleDur = 400 * time.Millisecond
		c.handoffDur = 400 * time.Millisecond
		c.watchHold = time.Second
		c.queueMsgs = 5000
		c.queueTimeout = 30 * time.Second
		c.pickupMsgs = 10
		c.streamDur = time.Second
		c.topicDur = 250 * time.Millisecond
		c.topicFanMsgs = 2000
		c.topicMemMsgs = 2000
		c.fastRounds = 3
		c.budget = 4 * time.Minute
	}
	return c
}

func main() {
	quick := flag.Bool("quick", false, "smoke run of one to two minutes (shorter runs, fewer messages)")
	out := flag.String("out", "", "directory for results.md and plots/ (default: the bench module's directory)")
	rounds := flag.Int("rounds", 0, "interleaved rounds of every scenario, at least 3 (default: 5 for the short scenarios, 3 for the watchdog and queue; 3 with -quick)")
	quiet := flag.Bool("q", false, "no progress lines on stderr")
	only := flag.String("only", "", "comma-separated scenarios to run (default all): "+strings.Join(scenarioNames(), ","))
	flag.Parse()

	cfg := defaultConfig(*quick)
	if *rounds > 0 {
		cfg.rounds = max(*rounds, 3)
		cfg.fastRounds = cfg.rounds
	}
	dir, err := outputDir(*out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	cfg.out = dir
	if cfg.steps, err = pickScenarios(*only); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	progress := func(s string) {
		if !*quiet {
			fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05"), s)
		}
	}
	if err := run(cfg, progress); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// outputDir resolves -out; by default it is the directory of this module,
// whether we run from bench/ or from the repository root.
func outputDir(flagVal string) (string, error) {
	if flagVal != "" {
		return filepath.Abs(flagVal)
	}
	for _, d := range []string{".", "bench"} {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/redlease/redlease/bench\n") {
			return filepath.Abs(d)
		}
	}
	return "", errors.New("cannot find the bench module's directory; give -out")
}

func run(cfg config, progress func(string)) (err error) {
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.budget)
	defer cancel()

	srv, err := startServer(ctx)
	if err != nil {
		return err
	}
	// Always kill redis-server: on return, on panic in this goroutine, and
	// on SIGINT/SIGTERM. (Pdeathsig covers a crash anywhere else.)
	defer srv.stop()
	defer func() {
		if p := recover(); p != nil {
			srv.stop()
			panic(p)
		}
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		s, ok := <-sigs
		if !ok {
			return
		}
		fmt.Fprintf(os.Stderr, "bench: %v: stopping redis-server and exiting\n", s)
		srv.stop()
		os.Exit(130)
	}()
	progress(fmt.Sprintf("redis-server %s on %s; quick=%v rounds=%d/%d", srv.version, srv.Addr, cfg.quick, cfg.fastRounds, cfg.rounds))

	e, err := newEnv(ctx, srv.Addr)
	if err != nil {
		return err
	}
	defer e.admin.Close()

	rep := &report{cfg: cfg, machine: describeMachine(srv.version), started: began}
	for _, step := range cfg.steps {
		t, err := step.run(ctx, e, cfg, progress)
		if t != nil {
			rep.tables = append(rep.tables, t)
			rep.tables = append(rep.tables, t.more...)
		}
		if err != nil {
			return err
		}
		runtime.GC()
	}
	rep.elapsed = time.Since(began)
	if err := rep.write(); err != nil {
		return err
	}
	progress(fmt.Sprintf("wrote %s and %s in %v", filepath.Join(cfg.out, "results.md"),
		filepath.Join(cfg.out, "plots"), rep.elapsed.Round(time.Second)))
	return nil
}

// machine describes where the run happened.
type machine struct {
	nproc, gomaxprocs int
	cpu, goVersion    string
	redis, kernel     string
	modules           []string
}

func describeMachine(redisVersion string) machine {
	m := machine{
		nproc: runtime.NumCPU(), gomaxprocs: runtime.GOMAXPROCS(0),
		goVersion: runtime.Version(), redis: redisVersion,
	}
	if out, err := exec.Command("nproc").Output(); err == nil {
		fmt.Sscan(string(out), &m.nproc)
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "model name"); ok {
				m.cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
		f.Close()
	}
	if out, err := exec.Command("uname", "-sr").Output(); err == nil {
		m.kernel = strings.TrimSpace(string(out))
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			for _, want := range []string{"redis/go-redis", "redsync", "bsm/redislock", "hibiken/asynq", "redlease/redlease"} {
				if strings.Contains(d.Path, want) {
					v := d.Version
					if d.Replace != nil {
						v = "local " + d.Replace.Path
					}
					m.modules = append(m.modules, d.Path+" "+v)
				}
			}
		}
	}
	return m
}
