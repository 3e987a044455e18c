package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease"
	"github.com/redlease/redlease/internal/redistest"
)

func TestMain(m *testing.M) {
	redis.SetLogger(quiet{})
	// The library logs dead letters at Warn; the tests make them on purpose.
	flag.Parse()
	if !testing.Verbose() {
		slog.SetDefault(slog.New(slog.DiscardHandler))
	}
	code := m.Run()
	if code == 0 {
		if err := redistest.Leaks(5 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines outlived the tests:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// noEnv is a getenv with nothing set.
func noEnv(string) string { return "" }

// cli runs the program with args and returns its exit code and output.
func cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := run(ctx, args, &out, &errOut, noEnv)
	return code, out.String(), errOut.String()
}

// seeded is what seed put in Redis.
type seeded struct {
	deadIDs []string
	holder  *redlease.Lock
	waiter  chan error // the waiting Obtain's result
	stop    func()     // releases the locks, ends the waiter
}

// seed fills c under prefix through the library: queue "emails" with 3
// ready messages and 2 dead letters, topic "orders" with subscription
// "billing" holding one message, lock "invoice:42" held with one waiter,
// and lock "catalog" held by two shared leases.
func seed(t *testing.T, c redis.UniversalClient, prefix string) *seeded {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	q := redlease.NewQueue(c, "emails", redlease.WithPrefix(prefix))
	for _, id := range []string{"bad-1", "bad-2"} {
		_, err := q.Enqueue(ctx, []byte("corrupt "+id), redlease.WithID(id))
		require.NoError(t, err)
		m, err := q.Claim(ctx)
		require.NoError(t, err)
		require.NoError(t, m.Nack(ctx, redlease.WithCause(fmt.Errorf("parse %s: %w", id, redlease.ErrSkipRetry))))
	}
	for _, to := range []string{"ann", "bob", "cyd"} {
		_, err := q.Enqueue(ctx, []byte("mail to "+to), redlease.WithID("mail-"+to), redlease.WithHeaders(map[string]string{"to": to}))
		require.NoError(t, err)
	}
	topic := redlease.NewTopic(c, "orders", redlease.WithPrefix(prefix))
	_, err := topic.Subscribe(ctx, "billing")
	require.NoError(t, err)
	_, err = topic.Publish(ctx, []byte(`{"order":7}`), redlease.WithID("order-7"))
	require.NoError(t, err)

	l := redlease.NewLocker(c, redlease.WithPrefix(prefix))
	l2 := redlease.NewLocker(c, redlease.WithPrefix(prefix))
	holder, err := l.TryObtain(ctx, "invoice:42", redlease.WithTTL(30*time.Second))
	require.NoError(t, err)
	waitCtx, stopWait := context.WithCancel(context.Background())
	s := &seeded{deadIDs: []string{"bad-1", "bad-2"}, holder: holder, waiter: make(chan error, 1)}
	go func() {
		lk, err := l2.Obtain(waitCtx, "invoice:42", redlease.WithRetry(redlease.LinearBackoff(time.Minute)))
		if err == nil {
			err = lk.Release(context.Background())
		}
		s.waiter <- err
	}()
	r1, err := l.TryObtainShared(ctx, "catalog", redlease.WithTTL(30*time.Second))
	require.NoError(t, err)
	r2, err := l2.TryObtainShared(ctx, "catalog", redlease.WithTTL(30*time.Second))
	require.NoError(t, err)
	require.NoError(t, redistest.Poll(5*time.Second, func() error {
		info, err := l.Inspect(ctx, "invoice:42")
		if err == nil && info.WaiterCount != 1 {
			err = errors.New("no waiter yet")
		}
		return err
	}))
	s.stop = func() {
		stopWait()
		<-s.waiter
		bg := context.Background()
		_ = holder.Release(bg)
		_ = r1.Release(bg)
		_ = r2.Release(bg)
		l.Close()
		l2.Close()
	}
	t.Cleanup(s.stop)
	return s
}

// newMini returns a client on a fresh miniredis.
func newMini(t *testing.T) (*miniredis.Miniredis, *redis.Client) {
	t.Helper()
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { c.Close() })
	return mr, c
}

// contains checks that s has every one of parts.
func contains(t *testing.T, s string, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(s, p) {
			t.Fatalf("output lacks %q:\n%s", p, s)
		}
	}
}
