package redlease

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	code := m.Run()
	stopRealRedis()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines outlived the tests:", err)
			code = 1
		}
	}
	os.Exit(code)
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

// realServer is one redis-server per test binary, started on first use.
type realServer struct {
	addr string
	cmd  *exec.Cmd
	dir  string
	err  error
}

var (
	realOnce sync.Once
	real     realServer
)

// realRedis returns a new client on a real redis-server that the tests
// start on a free loopback port. Without the binary the test is skipped,
// except under CI=true, where it fails.
func realRedis(t testing.TB) *redis.Client {
	t.Helper()
	realOnce.Do(startRealRedis)
	if real.err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("real Redis needed under CI=true: %v", real.err)
		}
		t.Skipf("skipping real-Redis test: %v (install redis-server to run it)", real.err)
	}
	c := redis.NewClient(&redis.Options{Addr: real.addr})
	t.Cleanup(func() { c.Close() })
	return c
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func startRealRedis() {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		real.err = fmt.Errorf("redis-server not found in PATH")
		return
	}
	dir, err := os.MkdirTemp("", "redlease-redis-")
	if err != nil {
		real.err = err
		return
	}
	real.dir = dir
	for range 5 { // a port can be taken between probe and bind
		port, err := freePort()
		if err != nil {
			real.err = err
			return
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir, "--enable-debug-command", "local")
		if err := cmd.Start(); err != nil {
			real.err = err
			return
		}
		c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if err = c.Ping(context.Background()).Err(); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		c.Close()
		if err == nil {
			real.addr, real.cmd, real.err = addr, cmd, nil
			return
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		real.err = fmt.Errorf("redis-server did not answer on %s: %w", addr, err)
	}
}

func stopRealRedis() {
	if real.cmd != nil {
		_ = real.cmd.Process.Kill()
		_ = real.cmd.Wait()
	}
	if real.dir != "" {
		os.RemoveAll(real.dir)
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
	if err != nil {
		t.Fatal(err)
	}
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

// eventually polls cond until it holds or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// noLeaks returns a check, to defer, that no goroutine started since has
// outlived the test; miniredis's own server goroutines don't count.
func noLeaks(t *testing.T) func() {
	ignore := goleak.IgnoreCurrent()
	return func() {
		goleak.VerifyNone(t, ignore,
			goleak.IgnoreAnyFunction("github.com/alicebob/miniredis/v2/server.(*Server).servePeer"),
			goleak.IgnoreAnyFunction("github.com/alicebob/miniredis/v2/server.(*Server).servePeer.func2"))
	}
}
