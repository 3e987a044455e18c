package redlease

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

func TestMain(m *testing.M) {
	if env := os.Getenv(crashChildEnv); env != "" {
		os.Exit(crashChild(env))
	}
	if env := os.Getenv(waitChildEnv); env != "" {
		os.Exit(waitChild(env))
	}
	if env := os.Getenv(sharedChildEnv); env != "" {
		os.Exit(sharedChild(env))
	}
	if env := os.Getenv(topicCrashChildEnv); env != "" {
		os.Exit(topicCrashChild(env))
	}
	// go-redis logs every refused dial and Sentinel switch; the fault and
	// failover tests cause thousands on purpose.
	redis.SetLogger(verboseOnly{})
	// Consume logs what it recovers from to slog.Default when no error
	// handler is given; tests that check logging give their own logger.
	flag.Parse()
	if !testing.Verbose() {
		slog.SetDefault(slog.New(slog.DiscardHandler))
	}
	code := m.Run()
	stopRealRedis()
	stopCluster()
	if code == 0 {
		if err := redistest.Leaks(0); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines outlived the tests:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// verboseOnly passes go-redis's log lines on only under go test -v.
type verboseOnly struct{}

func (verboseOnly) Printf(_ context.Context, format string, v ...any) {
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "redis: "+format+"\n", v...)
	}
}

// newMini returns a client on a fresh miniredis; keys expire only when the
// test calls FastForward.
func newMini(t testing.TB) (*miniredis.Miniredis, *redis.Client) {
	t.Helper()
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { c.Close() })
	return mr, c
}

var (
	realOnce sync.Once
	real     *redistest.Server
	realDir  string
	realErr  error
)

// realRedis returns a new client on the real redis-server shared by the
// tests, started on first use on a free loopback port.
func realRedis(t testing.TB) *redis.Client {
	t.Helper()
	realOnce.Do(func() {
		if realDir, realErr = os.MkdirTemp("", "redlease-redis-"); realErr == nil {
			real, realErr = redistest.StartData(realDir, "redis")
		}
	})
	redistest.Need(t, "real Redis", realErr)
	c := redis.NewClient(&redis.Options{Addr: real.Addr})
	t.Cleanup(func() { c.Close() })
	return c
}

func stopRealRedis() {
	real.Kill()
	if realDir != "" {
		os.RemoveAll(realDir)
	}
}

// backends runs a test on miniredis and on real Redis.
func backends(t *testing.T, f func(t *testing.T, c *redis.Client)) {
	t.Run("miniredis", func(t *testing.T) { _, c := newMini(t); f(t, c) })
	t.Run("redis", func(t *testing.T) { f(t, realRedis(t)) })
}

var (
	uniqMu   sync.Mutex
	uniqSeen = map[testing.TB]string{}
)

// uniq returns a key prefix no other test, nor another run of this one
// (-count), uses; the same one for every call in a test.
func uniq(t testing.TB) string {
	uniqMu.Lock()
	defer uniqMu.Unlock()
	if p, ok := uniqSeen[t]; ok {
		return p
	}
	p := strings.NewReplacer("/", "-", " ", "_").Replace(t.Name()) + "-" + strconv.Itoa(len(uniqSeen))
	uniqSeen[t] = p
	return p
}

// commandStats returns how many times Redis has run each command, commands
// run inside scripts included.
func commandStats(t testing.TB, c *redis.Client) map[string]int64 {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	require.NoError(t, err)
	calls := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":calls=")
		if !ok {
			continue
		}
		n, _, _ := strings.Cut(rest, ",")
		calls[name], _ = strconv.ParseInt(n, 10, 64)
	}
	return calls
}

// commandsSince returns the commands run since before, less the INFO calls
// that measured them.
func commandsSince(t testing.TB, c *redis.Client, before map[string]int64) (map[string]int64, int64) {
	t.Helper()
	delta := map[string]int64{}
	var total int64
	for name, n := range commandStats(t, c) {
		if d := n - before[name]; d > 0 && name != "info" {
			delta[name] = d
			total += d
		}
	}
	return delta, total
}

// knownIssue skips a test that shows a known issue unless
// REDLEASE_KNOWN_ISSUES=1: it fails until the issue is fixed.
func knownIssue(t *testing.T, issue string) {
	t.Helper()
	if os.Getenv("REDLEASE_KNOWN_ISSUES") != "1" {
		t.Skipf("known issue, fails until fixed (REDLEASE_KNOWN_ISSUES=1 runs it): %s", issue)
	}
}

// queuedIn reports whether a waiter of l is queued in Redis on lock name.
func queuedIn(l *Locker, name string) bool {
	members, _ := l.client.ZRange(context.Background(), l.lockKeys(name)[2], 0, -1).Result()
	for _, m := range members {
		if strings.Contains(m, ":grant:"+l.waits.id+" ") {
			return true
		}
	}
	return false
}
