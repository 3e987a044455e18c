package redlease

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// Consumers in separate processes, killed with SIGKILL at random moments
// while they handle messages: every message is acked exactly once, none is
// lost.

const crashChildEnv = "REDLEASE_CRASH_CHILD" // "addr prefix": run as a consumer

// recordedAck acks a claim and, in the same script, counts the ack in a
// hash: a process killed right after its ack cannot lose the record.
var recordedAck = redis.NewScript(queuePrelude + `
local r = ack(ARGV[1], ARGV[2])
if r == 1 then redis.call('HINCRBY', KEYS[#KEYS], ARGV[1], 1) end
return r
`)

func crashQueue(c *redis.Client, prefix string) (*Queue, []string) {
	q := NewQueue(c, "q", WithPrefix(prefix), WithLease(300*time.Millisecond), WithMaxAttempts(1000))
	return q, append(append([]string(nil), q.shards[0].keys...), prefix+":queue:{q}:acks")
}

// crashChild is a consumer process: it claims, "works" a few ms, acks, and
// gives back expired claims, until the queue is empty or 30s pass.
func crashChild(env string) int {
	addr, prefix, _ := strings.Cut(env, " ")
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	q, keys := crashQueue(c, prefix)
	ctx := context.Background()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		q.Reclaim(ctx)
		cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		m, err := q.Claim(cctx)
		cancel()
		if err != nil {
			if s, err := q.Stats(ctx); err == nil && s.depth() == (Stats{}) {
				return 0
			}
			continue
		}
		c.Incr(ctx, prefix+":claims")
		time.Sleep(time.Duration(rand.IntN(10_000)) * time.Microsecond)
		recordedAck.Run(ctx, c, keys, m.ID, m.token)
	}
	return 1
}

func TestCrashingConsumerProcesses(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	prefix := uniq(t)
	q, keys := crashQueue(c, prefix)
	const n = 400
	var payloads [][]byte
	for i := range n {
		payloads = append(payloads, []byte(fmt.Sprint(i)))
	}
	ids, err := q.EnqueueBatch(ctx, payloads)
	require.NoError(t, err)
	exe, err := os.Executable()
	require.NoError(t, err)
	start := func() *exec.Cmd {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+c.Options().Addr+" "+prefix)
		require.NoError(t, cmd.Start())
		return cmd
	}
	children := []*exec.Cmd{start(), start(), start()}
	defer func() {
		for _, cmd := range children {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	kills := 0
	// Kill a random consumer every 50-250ms for 3s, starting a new one each time.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		time.Sleep(time.Duration(50+rand.IntN(200)) * time.Millisecond)
		i := rand.IntN(len(children))
		children[i].Process.Kill()
		children[i].Wait()
		children[i] = start()
		kills++
	}
	acks := keys[len(keys)-1]
	redistest.Eventually(t, 40*time.Second, "every message acked", func() bool { return c.HLen(ctx, acks).Val() == n })
	counts, err := c.HGetAll(ctx, acks).Result()
	require.NoError(t, err)
	for _, id := range ids {
		if counts[id] != "1" {
			t.Errorf("message %s acked %q times", id, counts[id])
		}
	}
	wantStats(t, q, Stats{})
	claims, _ := c.Get(ctx, prefix+":claims").Int()
	t.Logf("%d messages, %d consumer processes killed with SIGKILL, %d claims (%d cut short): every message acked exactly once", n, kills, claims, claims-n)
	if kills == 0 || claims <= n {
		t.Fatal("no claim was cut short: the test proves little")
	}
}
