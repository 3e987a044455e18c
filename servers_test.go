package redlease

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Helpers for tests that run several redis-server processes (Cluster,
// Sentinel): start one on a free loopback port, stop it, wait for a state.

// errNoBinary is why a multi-server test is skipped outside CI.
var errNoBinary = errors.New("not found in PATH")

// lookPath finds a program the tests need; its error wraps errNoBinary.
func lookPath(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s %w", name, errNoBinary)
	}
	return p, nil
}

// needServers skips the test when the servers could not be started for
// lack of a program, or fails it under CI=true (the rule realRedis
// follows); any other error starting them fails the test.
func needServers(t testing.TB, what string, err error) {
	t.Helper()
	switch {
	case err == nil:
	case errors.Is(err, errNoBinary) && os.Getenv("CI") != "true":
		t.Skipf("skipping %s test: %v (install it to run the test)", what, err)
	case errors.Is(err, errNoBinary):
		t.Fatalf("%s needed under CI=true: %v", what, err)
	default:
		t.Fatalf("%s could not be started: %v", what, err)
	}
}

// knownIssue skips a test that shows a known issue unless
// REDLEASE_KNOWN_ISSUES=1: it fails until the issue is fixed.
func knownIssue(t *testing.T, issue string) {
	t.Helper()
	if os.Getenv("REDLEASE_KNOWN_ISSUES") != "1" {
		t.Skipf("known issue, fails until fixed (REDLEASE_KNOWN_ISSUES=1 runs it): %s", issue)
	}
}

// serverProc is one redis-server started by a test. The kernel kills it if
// the test binary dies first (see setPdeathsig).
type serverProc struct {
	name string
	port int
	addr string
	log  string // its stdout and stderr
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited
}

// startRedisProc starts redis-server with the arguments args returns for a
// free port, in dir, and returns once it answers PING. A port can be taken
// between probe and bind, so a server that does not come up is retried on
// another port.
func startRedisProc(dir, name string, args func(port int) ([]string, error)) (*serverProc, error) {
	bin, err := lookPath("redis-server")
	if err != nil {
		return nil, err
	}
	var last error
	for range 5 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		a, err := args(port)
		if err != nil {
			return nil, err
		}
		p := &serverProc{name: name, port: port, addr: "127.0.0.1:" + strconv.Itoa(port),
			log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
		out, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		p.cmd = exec.Command(bin, a...)
		p.cmd.Dir = dir
		p.cmd.Stdout, p.cmd.Stderr = out, out
		setPdeathsig(p.cmd)
		err = p.cmd.Start()
		out.Close()
		if err != nil {
			return nil, err
		}
		go func() { _ = p.cmd.Wait(); close(p.done) }()
		if last = p.waitReady(5 * time.Second); last == nil {
			return p, nil
		}
		p.kill()
		last = fmt.Errorf("%s on %s: %w; its log ends:\n%s", name, p.addr, last, p.logTail())
	}
	return nil, last
}

// waitReady waits until the server answers PING or exits.
func (p *serverProc) waitReady(timeout time.Duration) error {
	c := redis.NewClient(&redis.Options{Addr: p.addr, MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	return waitUntil(timeout, func() error {
		select {
		case <-p.done:
			return errStop{fmt.Errorf("exited: %v", p.cmd.ProcessState)}
		default:
		}
		return c.Ping(context.Background()).Err()
	})
}

// kill ends the process at once (SIGKILL, as a crash would) and waits for
// it to exit. It is idempotent.
func (p *serverProc) kill() {
	if p == nil || p.cmd == nil || p.cmd.Process == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
}

func (p *serverProc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// logTail returns the last lines of the server's log, for error messages.
func (p *serverProc) logTail() string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-8):], "\n")
}

// client returns a client on this one server, closed when the test ends.
func (p *serverProc) client(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: p.addr})
	t.Cleanup(func() { c.Close() })
	return c
}

// errStop makes waitUntil give up at once.
type errStop struct{ error }

func (e errStop) Unwrap() error { return e.error }

// waitUntil calls cond every 20ms until it returns nil, returns an errStop,
// or timeout passes; it returns cond's last error.
func waitUntil(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		var stop errStop
		if err == nil || errors.As(err, &stop) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v: %w", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// infoField returns one field of INFO section from a server.
func infoField(ctx context.Context, c *redis.Client, section, field string) (string, error) {
	info, err := c.Info(ctx, section).Result()
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("no %s in INFO %s", field, section)
}

// replicated makes sure every write that c's server has taken so far has
// reached at least one replica: WAIT counts only the writes of its own
// connection, so a write goes first on the same connection, and the offset
// it waits for covers every earlier write.
func replicated(ctx context.Context, c *redis.Client, probeKey string) error {
	var wait *redis.Cmd
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, probeKey, "1", time.Minute)
		wait = p.Do(ctx, "WAIT", 1, 2000) // under the default 3s read timeout
		return nil
	})
	if err != nil {
		return err
	}
	if n, _ := wait.Int64(); n < 1 {
		return fmt.Errorf("WAIT 1: no replica acknowledged")
	}
	return nil
}

// waitGoroutinesGone waits, up to timeout, until no goroutine is in a
// function whose name contains fn. go-redis keeps redialling a dead server
// in the background, a second apart, until its pool is closed, so a test
// that kills a server waits for that before TestMain looks for leaks.
func waitGoroutinesGone(t testing.TB, fn string, timeout time.Duration) {
	t.Helper()
	buf := make([]byte, 1<<20)
	if err := waitUntil(timeout, func() error {
		if n := runtime.Stack(buf, true); strings.Contains(string(buf[:n]), fn) {
			return fmt.Errorf("a goroutine still runs %s", fn)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}
