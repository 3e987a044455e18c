package redlease

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// failLoad makes every SCRIPT LOAD fail.
type failLoad struct{}

var errLoadRefused = errors.New("load refused")

func (failLoad) DialHook(n redis.DialHook) redis.DialHook { return n }
func (failLoad) ProcessHook(n redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if strings.EqualFold(cmd.Name(), "script") {
			cmd.SetErr(errLoadRefused)
			return errLoadRefused
		}
		return n(ctx, cmd)
	}
}
func (failLoad) ProcessPipelineHook(n redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return n
}

// When the script cannot be loaded after NOSCRIPT, every refused call
// reports the load's error rather than NOSCRIPT.
func TestRunAllReportsAFailedLoad(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	if err := c.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	c.AddHook(failLoad{})
	calls := []scriptCall{{keys: []string{"a"}, args: []any{"t", 1000}}, {keys: []string{"b"}, args: []any{"t", 1000}}}
	for i, cmd := range runAll(ctx, c, renewScript, calls) {
		if !errors.Is(cmd.Err(), errLoadRefused) {
			t.Errorf("call %d: err = %v, want the load's error", i, cmd.Err())
		}
	}
}

// A lock call refused with NOSCRIPT (a restarted Redis, SCRIPT FLUSH) is
// sent again as EVAL, and runs once.
func TestLockCallAfterScriptFlush(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		l := NewLocker(c, WithPrefix(uniq(t)))
		defer l.Close()
		lk, err := l.TryObtain(ctx, "k")
		require.NoError(t, err)
		require.NoError(t, c.ScriptFlush(ctx).Err())
		require.NoError(t, lk.Release(ctx))
		require.NoError(t, c.ScriptFlush(ctx).Err())
		lk, err = l.TryObtain(ctx, "k")
		require.NoError(t, err)
		if lk.Fence() != 2 {
			t.Fatalf("fence %d after a flush, want 2: the acquire ran other than once", lk.Fence())
		}
		require.NoError(t, lk.Release(ctx))
	})
}
