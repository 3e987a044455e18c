package redlease

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// logLines is a JSON slog handler's output, safe for concurrent writes.
type logLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logLines) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logLines) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// entries parses the lines logged so far.
func (b *logLines) entries(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(b.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var e map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &e), line)
		out = append(out, e)
	}
	return out
}

// find returns the entries at level whose err contains text.
func find(entries []map[string]any, level, text string) []map[string]any {
	var out []map[string]any
	for _, e := range entries {
		if err, _ := e["err"].(string); e["level"] == level && strings.Contains(err, text) {
			out = append(out, e)
		}
	}
	return out
}

// WithLogger(nil) is refused: every call on the Locker or Queue returns
// ErrInvalidArgument, and nothing is written.
func TestWithLoggerNil(t *testing.T) {
	mr, c := newMini(t)
	ctx := context.Background()
	l := NewLocker(c, WithLogger(nil))
	defer l.Close()
	if _, err := l.TryObtain(ctx, "k"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("TryObtain on a Locker with a nil logger: %v, want ErrInvalidArgument", err)
	}
	q := NewQueue(c, "q", WithLogger(nil))
	if _, err := q.Enqueue(ctx, []byte("m")); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Enqueue on a Queue with a nil logger: %v, want ErrInvalidArgument", err)
	}
	if keys := mr.Keys(); len(keys) != 0 {
		t.Errorf("keys %v written", keys)
	}
}

// Without WithErrorHandler, Consume logs what it recovers from (here a
// handler's error) at Warn level to WithLogger's logger, and not the end
// of its context; with a handler, the handler gets it and nothing is
// logged.
func TestWithLoggerConsume(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		for _, withHandler := range []bool{false, true} {
			t.Run("handler="+strconv.FormatBool(withHandler), func(t *testing.T) {
				var logs logLines
				q := newQueue(t, c, WithLogger(logs.logger()))
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // a bound
				defer cancel()
				_, err := q.Enqueue(ctx, []byte("m"))
				require.NoError(t, err)
				var mu sync.Mutex // Consume's goroutines may report at once
				var handled []error
				var opts []ConsumeOption
				if withHandler {
					opts = append(opts, WithErrorHandler(func(err error) { mu.Lock(); handled = append(handled, err); mu.Unlock() }))
				}
				err = q.Consume(ctx, func(context.Context, *Message) error {
					cancel()
					return errors.New("bad payload")
				}, opts...)
				if err != context.Canceled {
					t.Fatalf("Consume returned %v, want context.Canceled", err)
				}
				entries := logs.entries(t)
				if withHandler {
					if len(entries) != 0 || len(handled) != 1 || !strings.Contains(handled[0].Error(), "bad payload") {
						t.Fatalf("logged %v, handled %v; want nothing logged and the failure handled", entries, handled)
					}
					return
				}
				warned := find(entries, "WARN", "bad payload")
				if len(warned) != 1 || len(entries) != 1 || warned[0]["queue"] != "q" {
					t.Fatalf("logged %v, want the handler's failure at Warn level with the queue's name, only", entries)
				}
			})
		}
	})
}

// byMsg returns the entries logged with message msg.
func byMsg(entries []map[string]any, msg string) []map[string]any {
	var out []map[string]any
	for _, e := range entries {
		if e["msg"] == msg {
			out = append(out, e)
		}
	}
	return out
}

// waitLogged waits, within a bound, for an entry with message msg.
func waitLogged(t *testing.T, logs *logLines, msg string) map[string]any {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if e := byMsg(logs.entries(t), msg); len(e) > 0 {
			return e[0]
		}
	}
	t.Fatalf("%q not logged in 5s; logged %v", msg, logs.entries(t))
	return nil
}

// With no WithLogger, slog's default handler gets records at Warn level
// and above only, attributes and groups kept.
func TestDefaultLoggerKeepsWarnAndAbove(t *testing.T) {
	if _, ok := orDefault(nil).Handler().(warnAndAbove); !ok {
		t.Fatalf("default handler %T, want warnAndAbove", orDefault(nil).Handler())
	}
	var logs logLines
	log := slog.New(warnAndAbove{logs.logger().Handler()}).With("queue", "q").WithGroup("g")
	log.Debug("debug")
	log.Info("info")
	log.Warn("warn", "id", "1")
	log.Error("error")
	entries := logs.entries(t)
	require.Len(t, entries, 2, "%v", entries)
	require.Equal(t, "warn", entries[0]["msg"])
	require.Equal(t, "q", entries[0]["queue"])
	require.Equal(t, map[string]any{"id": "1"}, entries[0]["g"])
	require.Equal(t, "error", entries[1]["msg"])
	// A logger given is used as it is.
	given := logs.logger()
	require.Same(t, given, orDefault(given))
}

// A lock's lost lease and its failed renewals are logged at Warn level
// with the key and fence.
func TestLockLossIsLogged(t *testing.T) {
	mr, c := newMini(t)
	var logs logLines
	l := NewLocker(c, WithPrefix(uniq(t)), WithLogger(logs.logger()))
	defer l.Close()
	ctx := context.Background()
	lk, err := l.TryObtain(ctx, "k", WithTTL(300*time.Millisecond))
	require.NoError(t, err)
	mr.SetError("LOADING injected")
	e := waitLogged(t, &logs, "redlease: lock renewal failed; retrying")
	mr.SetError("")
	require.Equal(t, "WARN", e["level"])
	require.Equal(t, "k", e["key"])
	require.EqualValues(t, lk.Fence(), e["fence"])
	require.Contains(t, e["err"], "LOADING injected")

	require.NoError(t, c.Del(ctx, l.lockKey("k")).Err())
	select {
	case <-lk.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("lease not lost in 5s")
	}
	e = waitLogged(t, &logs, "redlease: lock lost")
	require.Equal(t, "WARN", e["level"])
	require.Equal(t, "k", e["key"])
	require.EqualValues(t, lk.Fence(), e["fence"])
	require.Equal(t, false, e["shared"])
	require.Contains(t, e["err"], "lease not held")
}

// Consume logs a handler's panic at Error level with its stack, and a
// message it dead-letters at Warn level, each with the queue, id and
// attempt; a reclaim is logged at Info level.
func TestConsumeEventsAreLogged(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		var logs logLines
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		q := newQueue(t, c, WithLogger(logs.logger()), WithMaxAttempts(1))
		id, err := q.Enqueue(ctx, []byte("m"))
		require.NoError(t, err)
		err = q.Consume(ctx, func(context.Context, *Message) error {
			defer cancel()
			panic("boom")
		})
		require.ErrorIs(t, err, context.Canceled)
		entries := logs.entries(t)
		p := byMsg(entries, "redlease: handler panicked")
		require.Len(t, p, 1, "%v", entries)
		require.Equal(t, "ERROR", p[0]["level"])
		require.Equal(t, "q", p[0]["queue"])
		require.Equal(t, id, p[0]["id"])
		require.EqualValues(t, 1, p[0]["attempt"])
		require.Equal(t, "panic: boom", p[0]["err"])
		require.Contains(t, p[0]["stack"], "logger_test.go")
		d := byMsg(entries, "redlease: message dead-lettered")
		require.Len(t, d, 1, "%v", entries)
		require.Equal(t, "WARN", d[0]["level"])
		require.Equal(t, id, d[0]["id"])
		require.EqualValues(t, 1, d[0]["attempt"])
		require.Equal(t, "panic: boom", d[0]["err"])

		reclaimExpired(t, c, WithLogger(logs.logger()))
		e := waitLogged(t, &logs, "redlease: reclaimed claims whose lease ended")
		require.Equal(t, "INFO", e["level"])
		require.Equal(t, "short", e["queue"])
		require.EqualValues(t, 1, e["ready"])
	})
}

// A claim Consume renews that is lost is logged at Warn level with the
// queue, id and attempt.
func TestClaimLossIsLogged(t *testing.T) {
	_, c := newMini(t)
	var logs logLines
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q := newQueue(t, c, WithLogger(logs.logger()), WithLease(150*time.Millisecond))
	id, err := q.Enqueue(ctx, nil)
	require.NoError(t, err)
	err = q.Consume(ctx, func(hctx context.Context, m *Message) error {
		defer cancel()
		require.NoError(t, c.Del(ctx, q.shards[0].messages).Err()) // the claim is gone
		<-hctx.Done()                                              // cancelled when the renewal finds out
		return nil
	}, WithErrorHandler(func(error) {}))
	require.ErrorIs(t, err, context.Canceled)
	e := waitLogged(t, &logs, "redlease: claim lost")
	require.Equal(t, "WARN", e["level"])
	require.Equal(t, "q", e["queue"])
	require.Equal(t, id, e["id"])
	require.EqualValues(t, 1, e["attempt"])
}
