// Command cyclecmp measures redlease's uncontended exclusive cycle
// (TryObtain + Release, each goroutine on its own key) against a running
// redis-server, so that compare.sh can build it against two versions of
// the library and run them in turns. It uses only API that every version
// has.
//
//	cyclecmp run -addr 127.0.0.1:6379 -goroutines 1,16 -dur 1s
//	cyclecmp summary FILE   # lines "round version goroutines cycles/s"
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redlease/redlease"
	"github.com/redlease/redlease/bench/internal/cmpstat"
)

const (
	// maxCyclesPerGoroutine bounds each loop in count as well as time.
	maxCyclesPerGoroutine = 1 << 20
	// runSlack bounds a run past its length, should Redis stop answering.
	runSlack = 30 * time.Second
)

func main() { cmpstat.Main("cyclecmp", runCmd, summary) }

// runCmd prints one line per goroutine count: "goroutines cycles/s".
func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	addr := fs.String("addr", "", "redis-server address (required)")
	gs := fs.String("goroutines", "1,16", "comma-separated goroutine counts")
	dur := fs.Duration("dur", time.Second, "length of each measured run")
	warm := fs.Duration("warmup", 200*time.Millisecond, "unmeasured run before each measured one")
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
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: *addr})
	defer c.Close()
	l := redlease.NewLocker(c)
	defer l.Close()
	for f := range strings.SplitSeq(*gs, ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return fmt.Errorf("bad goroutine count %q", f)
		}
		prefix := fmt.Sprintf("cyclecmp-%d-%d-%d", os.Getpid(), n, time.Now().UnixNano())
		if _, err := cycles(ctx, l, prefix, n, *warm); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		rate, err := cycles(ctx, l, prefix, n, *dur)
		if err != nil {
			return err
		}
		fmt.Printf("%d %.1f\n", n, rate)
	}
	return nil
}

// cycles runs TryObtain + Release on n goroutines, each on its own key,
// for d, and returns cycles per second.
func cycles(ctx context.Context, l *redlease.Locker, prefix string, n int, d time.Duration) (float64, error) {
	rctx, cancel := context.WithTimeout(ctx, d+runSlack)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		total    int64
		firstErr error
	)
	start := time.Now()
	deadline := start.Add(d)
	for g := range n {
		key := prefix + ":" + strconv.Itoa(g)
		wg.Go(func() {
			var done int64
			var err error
			for range maxCyclesPerGoroutine {
				if !time.Now().Before(deadline) {
					break
				}
				var lk *redlease.Lock
				if lk, err = l.TryObtain(rctx, key); err != nil {
					break
				}
				if err = lk.Release(rctx); err != nil {
					break
				}
				done++
			}
			mu.Lock()
			total += done
			if firstErr == nil {
				firstErr = err
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	return float64(total) / time.Since(start).Seconds(), firstErr
}

// summary reads "round version goroutines cycles/s" lines (version "old"
// or "new") and prints, per goroutine count, each version's median
// cycles/s and the median, min and max over rounds of new ÷ old.
func summary(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	type key struct {
		round, goroutines int
		version           string
	}
	rates := map[key]float64{}
	var counts, rounds []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var k key
		var rate float64
		if _, err := fmt.Sscan(sc.Text(), &k.round, &k.version, &k.goroutines, &rate); err != nil {
			return fmt.Errorf("bad line %q: %w", sc.Text(), err)
		}
		rates[k] = rate
		if !slices.Contains(counts, k.goroutines) {
			counts = append(counts, k.goroutines)
		}
		if !slices.Contains(rounds, k.round) {
			rounds = append(rounds, k.round)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	fmt.Println("| goroutines | old cycles/s | new cycles/s | new ÷ old (median [min–max] of per-round ratios) | rounds |")
	fmt.Println("| --- | --- | --- | --- | --- |")
	for _, n := range counts {
		var olds, news, ratios []float64
		for _, r := range rounds {
			o, okO := rates[key{r, n, "old"}]
			nw, okN := rates[key{r, n, "new"}]
			if !okO || !okN || o == 0 {
				continue
			}
			olds, news, ratios = append(olds, o), append(news, nw), append(ratios, nw/o)
		}
		om, olo, ohi := cmpstat.Spread(olds)
		nm, nlo, nhi := cmpstat.Spread(news)
		rm, rlo, rhi := cmpstat.Spread(ratios)
		fmt.Printf("| %d | %.0f [%.0f–%.0f] | %.0f [%.0f–%.0f] | ×%.3f [%.3f–%.3f] | %d |\n",
			n, om, olo, ohi, nm, nlo, nhi, rm, rlo, rhi, len(ratios))
	}
	return nil
}
