package redlease

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
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
