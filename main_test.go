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
	if env := os.Getenv(crashChildEnv); env != "" {
		os.Exit(crashChild(env))
	}
	// go-redis logs every refused dial and Sentinel switch; the fault and
	// failover tests cause thousands on purpose.
	redis.SetLogger(verboseOnly{})
	code := m.Run()
	stopRealRedis()
	stopCluster()
	if code == 0 {
		if err := goleak.Find(); err != nil {
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

// redisProc is a redis-server that a test started on a loopback port.
type redisProc struct {
	addr string
	port int
	args []string
	cmd  *exec.Cmd
}

// launchRedis starts redis-server on port (0: a free one) with its files in
// dir and waits until it answers.
func launchRedis(dir string, port int, extra ...string) (*redisProc, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not found in PATH")
	}
	for range 5 { // a free port can be taken between probe and bind
		p := port
		if p == 0 {
			if p, err = freePort(); err != nil {
				return nil, err
			}
		}
		args := append([]string{"--port", strconv.Itoa(p), "--bind", "127.0.0.1", "--save", "",
			"--appendonly", "no", "--dir", dir, "--enable-debug-command", "local"}, extra...)
		r := &redisProc{addr: "127.0.0.1:" + strconv.Itoa(p), port: p, args: args}
		if err = r.start(bin); err == nil || port != 0 {
			return r, err
		}
	}
	return nil, err
}

func (r *redisProc) start(bin string) error {
	r.cmd = exec.Command(bin, r.args...)
	if err := r.cmd.Start(); err != nil {
		return err
	}
	c := redis.NewClient(&redis.Options{Addr: r.addr, MaxRetries: -1})
	defer c.Close()
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if err = c.Ping(context.Background()).Err(); err == nil {
			return nil
		}
	}
	r.kill()
	return fmt.Errorf("redis-server did not answer on %s: %w", r.addr, err)
}

// kill stops the server at once, as a crash would.
func (r *redisProc) kill() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
	}
}

// restart starts the server again on the same port with the same files.
func (r *redisProc) restart() error {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return err
	}
	return r.start(bin)
}

// needRedis skips the test without redis-server, or fails it under CI=true.
func needRedis(t testing.TB, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("real Redis needed under CI=true: %v", err)
	}
	t.Skipf("skipping real-Redis test: %v (install redis-server to run it)", err)
}

// ownRedis starts a redis-server for this test alone, stopped at its end.
func ownRedis(t testing.TB, extra ...string) *redisProc {
	t.Helper()
	r, err := launchRedis(t.TempDir(), 0, extra...)
	needRedis(t, err)
	t.Cleanup(r.kill)
	return r
}

var (
	realOnce sync.Once
	real     *redisProc
	realDir  string
	realErr  error
)

// realRedis returns a new client on the real redis-server shared by the
// tests, started on first use on a free loopback port.
func realRedis(t testing.TB) *redis.Client {
	t.Helper()
	realOnce.Do(func() {
		if realDir, realErr = os.MkdirTemp("", "redlease-redis-"); realErr == nil {
			real, realErr = launchRedis(realDir, 0)
		}
	})
	needRedis(t, realErr)
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

func stopRealRedis() {
	if real != nil {
		real.kill()
	}
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
