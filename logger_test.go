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
