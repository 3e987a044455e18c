package redistest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is one redis-server (or redis-sentinel) process on 127.0.0.1. On
// Linux the kernel kills it if the process that started it dies first.
type Server struct {
	Name string // names its log file, Name.log in Dir
	Port int
	Addr string // 127.0.0.1:Port
	Dir  string // its working directory and files

	bin  string
	args []string
	log  string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited
}

// Args returns the arguments of a data server on port: bound to 127.0.0.1
// only, no RDB snapshots and no AOF, its files in dir (its RDB file, should
// one be written, named after name), DEBUG allowed from loopback; extra
// follow, and override any of these.
func Args(port int, dir, name string, extra ...string) []string {
	return append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir, "--dbfilename", name + ".rdb",
		"--enable-debug-command", "local"}, extra...)
}

// StartData starts a data server (see Args) with its files in dir and
// returns once it answers PING.
func StartData(dir, name string, extra ...string) (*Server, error) {
	return Start(dir, name, func(port int) ([]string, error) { return Args(port, dir, name, extra...), nil })
}

// Own starts a data server for test t alone, with extra arguments (see
// Args), killed when the test ends; without redis-server it follows Need.
func Own(t testing.TB, extra ...string) *Server {
	t.Helper()
	s, err := StartData(t.TempDir(), "redis", extra...)
	Need(t, "real Redis", err)
	t.Cleanup(s.Kill)
	return s
}

// OwnReplicated starts a master and one replica of it (see Own) for test t
// alone, both killed when t ends, and returns once the replica's link to
// the master is up; if it is not within 10s, the test fails.
func OwnReplicated(t testing.TB) (master, replica *Server) {
	t.Helper()
	master = Own(t, "--repl-diskless-sync-delay", "0")
	replica = Own(t, "--replicaof", "127.0.0.1", strconv.Itoa(master.Port))
	if err := waitLinkUp(replica, 10*time.Second); err != nil {
		t.Fatalf("replica not in sync: %v", err)
	}
	return master, replica
}

// waitLinkUp returns nil once, within timeout, the replica's link to its
// master is up.
func waitLinkUp(replica *Server, timeout time.Duration) error {
	rc := redis.NewClient(&redis.Options{Addr: replica.Addr})
	defer rc.Close()
	return Poll(timeout, func() error {
		if st, err := InfoField(context.Background(), rc, "replication", "master_link_status"); err != nil || st != "up" {
			return fmt.Errorf("replica link %q %v", st, err)
		}
		return nil
	})
}

// Start starts redis-server with the arguments args returns for a free
// port, in dir, its output appended to Name.log there, and returns once it
// answers PING (within 5s). A port can be taken between probe and bind, so
// a server that does not come up is retried on another port, five times at
// most; the error then ends with the tail of its log. Without redis-server
// the error wraps ErrNoBinary.
func Start(dir, name string, args func(port int) ([]string, error)) (*Server, error) {
	bin, err := LookPath("redis-server")
	if err != nil {
		return nil, err
	}
	var last error
	for range 5 {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		a, err := args(port)
		if err != nil {
			return nil, err
		}
		s := &Server{Name: name, Port: port, Addr: "127.0.0.1:" + strconv.Itoa(port), Dir: dir,
			bin: bin, args: a, log: filepath.Join(dir, name+".log")}
		if last = s.start(); last == nil {
			return s, nil
		}
	}
	return nil, last
}

// start runs the process and waits until it answers; on failure it kills
// it and says why, with the end of its log.
func (s *Server) start() error {
	out, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, s.args...)
	cmd.Dir = s.Dir
	cmd.Stdout, cmd.Stderr = out, out
	setPdeathsig(cmd)
	err = cmd.Start()
	out.Close()
	if err != nil {
		return err
	}
	s.cmd, s.done = cmd, make(chan struct{})
	go s.wait(cmd, s.done)
	if err := s.waitReady(5 * time.Second); err != nil {
		s.Kill()
		return fmt.Errorf("%s on %s: %w; its log ends:\n%s", s.Name, s.Addr, err, s.LogTail())
	}
	return nil
}

// wait reaps the process; NoLeaks ignores this goroutine by its name.
func (s *Server) wait(cmd *exec.Cmd, done chan struct{}) {
	_ = cmd.Wait()
	close(done)
}

// waitReady waits until the server answers PING, or gives up at once if
// it exits.
func (s *Server) waitReady(timeout time.Duration) error {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	return Poll(timeout, func() error {
		if !s.Alive() {
			return Stop{fmt.Errorf("exited: %v", s.cmd.ProcessState)}
		}
		return c.Ping(context.Background()).Err()
	})
}

// Kill ends the process at once (SIGKILL, as a crash would) and waits, up
// to 10s, until it has exited. It is idempotent, safe on a nil Server, and
// safe to call from several goroutines.
func (s *Server) Kill() {
	if s == nil || s.cmd == nil || !s.Alive() {
		return
	}
	_ = s.cmd.Process.Kill()
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
	}
}

// Restart starts a killed server again, on the same port with the same
// arguments and files, and returns once it answers PING. The port may have
// been taken meanwhile: then it fails.
func (s *Server) Restart() error {
	if s.Alive() {
		return fmt.Errorf("%s on %s: restart while it still runs", s.Name, s.Addr)
	}
	return s.start()
}

// Alive reports whether the process has not exited.
func (s *Server) Alive() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// LogTail returns the last 8 lines of the server's output, for error
// messages.
func (s *Server) LogTail() string {
	b, _ := os.ReadFile(s.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-8):], "\n")
}

// Client returns a new client on this one server, closed when t ends.
func (s *Server) Client(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	t.Cleanup(func() { c.Close() })
	return c
}

// InfoField returns one field of INFO section from the server c is on, or
// an error if INFO fails or has no such field.
func InfoField(ctx context.Context, c *redis.Client, section, field string) (string, error) {
	info, err := c.Info(ctx, section).Result()
	if err != nil {
		return "", err
	}
	return lineField(info, field, "INFO "+section)
}

// lineField finds "field:value" among the CRLF-separated lines of a reply.
func lineField(reply, field, what string) (string, error) {
	for _, line := range strings.Split(reply, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("no %s in %s", field, what)
}

// Replicated returns nil once every write that c's server has taken so far
// has reached at least one replica: WAIT counts only the writes of its own
// connection, so a write to probeKey goes first on the same connection, and
// the offset WAIT waits for (2s at most) covers every earlier write.
func Replicated(ctx context.Context, c *redis.Client, probeKey string) error {
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
