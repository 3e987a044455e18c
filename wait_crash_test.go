package redlease

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// Waiters in separate processes, killed with SIGKILL while queued or just
// as the lock is granted to them: the delay they cause the live waiters.

const waitChildEnv = "REDLEASE_WAIT_CHILD" // "addr prefix grant-ms": run as a waiter

// childGrantTTL is the grant ttl of the waiters that are killed.
const childGrantTTL = time.Second

// waitChild is a waiter process: it waits for "k" and, once it holds it,
// says so and sits until killed (or a minute passes).
func waitChild(env string) int {
	f := strings.Fields(env)
	ms, _ := strconv.Atoi(f[2])
	c := redis.NewClient(&redis.Options{Addr: f[0]})
	defer c.Close()
	l := NewLocker(c, WithPrefix(f[1]))
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := l.Obtain(ctx, "k", WithGrantTTL(time.Duration(ms)*time.Millisecond)); err != nil {
		return 1
	}
	os.Stdout.WriteString("got\n")
	<-ctx.Done()
	return 0
}

func TestKilledWaitersDelayOthersLittle(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	prefix := uniq(t)
	exe, err := os.Executable()
	require.NoError(t, err)
	ls := lockers(t, c.Options().Addr, 2)
	holder, live := ls[0], ls[1]
	queue := holder.lockKeys("k")[2]
	queued := func(n int64) {
		redistest.Eventually(t, 10*time.Second, strconv.FormatInt(n, 10)+" waiters queued", func() bool { return c.ZCard(ctx, queue).Val() == n })
	}
	var children []*exec.Cmd
	spawn := func() *exec.Cmd {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), waitChildEnv+"="+c.Options().Addr+" "+prefix+" "+strconv.FormatInt(childGrantTTL.Milliseconds(), 10))
		require.NoError(t, cmd.Start())
		children = append(children, cmd)
		return cmd
	}
	kill := func(cmd *exec.Cmd) {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	defer func() {
		for _, cmd := range children {
			kill(cmd)
		}
	}()

	// Killed while queued: Redis drops their subscriptions with their
	// connections, and the release skips them.
	h, err := holder.TryObtain(ctx, "k")
	require.NoError(t, err)
	const dead = 3
	for range dead {
		spawn()
	}
	queued(dead)
	got := waitFor(t, ctx, live, "k")
	for _, cmd := range children {
		kill(cmd)
	}
	redistest.Eventually(t, 5*time.Second, "the killed waiters' subscriptions dropped", func() bool {
		return len(c.PubSubChannels(ctx, prefix+":grant:*").Val()) == 1
	})
	start := time.Now()
	require.NoError(t, h.Release(ctx))
	lk := receive(t, got, 10*time.Second)
	queuedDelay := time.Since(start)
	require.NoError(t, lk.Release(ctx))

	// Killed just after the lock was granted to it, before its Locker
	// renewed the lease (a third of the grant ttl later): the lease ends
	// after the grant ttl, and the live waiter's checks find it free.
	h, err = holder.TryObtain(ctx, "k")
	require.NoError(t, err)
	child := spawn()
	queued(1)
	granted := time.Now()
	got = waitFor(t, ctx, live, "k")
	require.NoError(t, h.Release(ctx))
	kill(child)
	if d := time.Since(granted); d > childGrantTTL/3 {
		t.Skipf("the machine is too slow: the child may have renewed its lease (%v after queueing)", d)
	}
	start = time.Now()
	lk = receive(t, got, 10*time.Second)
	grantedDelay := time.Since(start)
	require.NoError(t, lk.Release(ctx))

	t.Logf("%d waiters killed while queued delayed the live one by %v; one killed as it was granted the lock (grant ttl %v), by %v",
		dead, queuedDelay, childGrantTTL, grantedDelay)
	if queuedDelay > 500*time.Millisecond {
		t.Errorf("killed queued waiters delayed the live one by %v: they were not skipped", queuedDelay)
	}
	// The grant's lease, then at most one wait between checks (1s).
	if bound := childGrantTTL + time.Second + 500*time.Millisecond; grantedDelay > bound {
		t.Errorf("a waiter killed as it was granted the lock delayed the next by %v, over %v", grantedDelay, bound)
	}
}
