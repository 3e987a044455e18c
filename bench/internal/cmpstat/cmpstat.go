// Package cmpstat holds what compare.sh's programs (cyclecmp, queuecmp)
// share: where the redlease module they were built with came from, and the
// median and range of a set of per-round figures.
package cmpstat

import (
	"context"
	"errors"
	"os"
	"sync/atomic"

	"bufio"
	"fmt"
	"github.com/redis/go-redis/v9"
	"math"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
)

// LibPath is the module whose replace compare.sh points at the old
// commit's export.
const LibPath = "github.com/redlease/redlease"

// LibSource names the redlease module this binary was built with,
// including its replacement directory.
func LibSource() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, d := range bi.Deps {
		if d.Path == LibPath {
			if d.Replace != nil {
				return d.Path + " => " + d.Replace.Path
			}
			return d.Path + " " + d.Version
		}
	}
	return "unknown"
}

// Spread returns the median, minimum and maximum of vals (NaN for none).
func Spread(vals []float64) (med, lo, hi float64) {
	if len(vals) == 0 {
		return math.NaN(), math.NaN(), math.NaN()
	}
	v := slices.Sorted(slices.Values(vals))
	n := len(v)
	med = v[n/2]
	if n%2 == 0 {
		med = (v[n/2-1] + v[n/2]) / 2
	}
	return med, v[0], v[n-1]
}

// CommandCalls reads calls= of every cmdstat_ line of INFO commandstats:
// the calls per command and their total.
func CommandCalls(info string) (byName map[string]int64, total int64, err error) {
	byName = map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "cmdstat_")
		if !ok {
			continue
		}
		name, fields, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		for f := range strings.SplitSeq(fields, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				if err != nil {
					return byName, total, fmt.Errorf("bad commandstats line %q", sc.Text())
				}
				byName[name] += n
				total += n
			}
		}
	}
	return byName, total, nil
}

// Main runs a comparison program called name: "name run [flags]" calls
// run with the flags, "name summary FILE" calls summary; an error exits
// with status 1, a wrong command line with 2.
func Main(name string, run func(args []string) error, summary func(file string) error) {
	usage := "usage: " + name + " run [flags] | " + name + " summary FILE"
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = run(os.Args[2:])
	case "summary":
		if len(os.Args) != 3 {
			err = errors.New(usage)
		} else {
			err = summary(os.Args[2])
		}
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}

// RoundTrips is a go-redis hook that counts one round trip per command and
// per pipeline in N. Pub/sub traffic is not counted.
type RoundTrips struct{ N *atomic.Int64 }

// DialHook counts nothing.
func (h RoundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook counts a command.
func (h RoundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.N.Add(1)
		return next(ctx, cmd)
	}
}

// ProcessPipelineHook counts a pipeline.
func (h RoundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.N.Add(1)
		return next(ctx, cmds)
	}
}
