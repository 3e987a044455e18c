package redlease

import (
	"bufio"
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

// Shared holders in separate processes, killed with SIGKILL while others
// hold and renew shares of the same lock.

const sharedChildEnv = "REDLEASE_SHARED_CHILD" // "addr prefix": run as a shared holder

// sharedChildTTL is the TTL of the killed holders' shares.
const sharedChildTTL = time.Second

// sharedChild takes a share of "k" (WithLimit(2), TTL sharedChildTTL,
// renewed by its watchdog), prints "held" and its token, and sits until
// killed (or a minute passes).
func sharedChild(env string) int {
	f := strings.Fields(env)
	c := redis.NewClient(&redis.Options{Addr: f[0]})
	defer c.Close()
	l := NewLocker(c, WithPrefix(f[1]))
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lk, err := l.ObtainShared(ctx, "k", WithLimit(2), WithTTL(sharedChildTTL))
	if err != nil {
		return 1
	}
	os.Stdout.WriteString("held " + lk.Token() + "\n")
	<-ctx.Done()
	return 0
}

// sharedChildren starts shared holders in processes of their own, killed
// at the latest when the test ends.
type sharedChildren struct {
	t     *testing.T
	c     *redis.Client
	procs []*exec.Cmd
}

func newSharedChildren(t *testing.T, c *redis.Client) *sharedChildren {
	s := &sharedChildren{t: t, c: c}
	t.Cleanup(func() {
		for _, cmd := range s.procs {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return s
}

// spawn starts a child and returns once it holds its share, with its
// token.
func (s *sharedChildren) spawn(prefix string) (*exec.Cmd, string) {
	t := s.t
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), sharedChildEnv+"="+s.c.Options().Addr+" "+prefix)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	s.procs = append(s.procs, cmd)
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(out).ReadString('\n')
		line <- l
	}()
	select {
	case l := <-line:
		token, ok := strings.CutPrefix(strings.TrimSpace(l), "held ")
		require.True(t, ok, "child said %q", l)
		return cmd, token
	case <-time.After(20 * time.Second):
		t.Fatal("the child did not take its share")
	}
	return nil, ""
}

// kill kills cmd with SIGKILL and returns when its share ends in Redis (ms
// since the epoch, Redis's clock, which is the test's: same host), read
// once the process is gone and its renewals can no longer land.
func (s *sharedChildren) kill(cmd *exec.Cmd, sharedKey, token string) (killed time.Time, ends int64) {
	t := s.t
	ctx := context.Background()
	require.NoError(t, cmd.Process.Kill())
	killed = time.Now()
	_ = cmd.Wait()
	time.Sleep(20 * time.Millisecond) // a renewal sent just before: applied or dropped by now
	score, err := s.c.ZScore(ctx, sharedKey, token).Result()
	require.NoError(t, err, "the killed child's share is gone already")
	return killed, int64(score)
}

// A shared holder killed while another renews its own share: the killed
// one's permit comes back once its TTL ends (not before: the waiter is let
// in no earlier than the share's end in Redis), within the TTL plus one
// waiter check (at most 1s apart with the default retry); the survivor's
// lease is never lost.
func TestSharedHolderKilled(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	prefix := uniq(t)
	l := lockers(t, c.Options().Addr, 1)[0]
	children := newSharedChildren(t, c)
	skey := l.lockKeys("k")[3]

	survivor, err := l.ObtainShared(ctx, "k", WithLimit(2), WithTTL(sharedChildTTL))
	require.NoError(t, err)
	child, token := children.spawn(prefix)
	_, err = l.TryObtainShared(ctx, "k", WithLimit(2))
	require.ErrorIs(t, err, ErrNotObtained, "a third share of 2")

	got := waitForShared(t, ctx, l, "k", WithLimit(2))
	select {
	case <-got:
		t.Fatal("a third share was granted while two live holders held the lock")
	case <-time.After(sharedChildTTL + 300*time.Millisecond): // the child renewed its share meanwhile
	}
	killed, ends := children.kill(child, skey, token)
	third := receive(t, got, 10*time.Second)
	granted := time.Now()
	t.Logf("the third share was granted %v after the kill (the dead share ended %dms after it)", granted.Sub(killed), ends-killed.UnixMilli())
	require.True(t, third.Shared())
	if granted.UnixMilli() < ends {
		t.Errorf("the third share was granted at %d, before the dead share ended at %d", granted.UnixMilli(), ends)
	}
	if bound := sharedChildTTL + time.Second + 500*time.Millisecond; granted.Sub(killed) > bound {
		t.Errorf("the permit came back %v after the kill, over %v", granted.Sub(killed), bound)
	}
	require.GreaterOrEqual(t, third.Fence(), survivor.Fence())
	select {
	case <-survivor.Lost():
		t.Fatalf("the survivor's share was lost: %v", survivor.Err())
	default:
	}
	ttl, err := survivor.TTL(ctx)
	require.NoError(t, err)
	require.Positive(t, ttl)
	require.NoError(t, third.Release(ctx))
	require.NoError(t, survivor.Release(ctx))
}

// Permits return after a holder crash: an exclusive Obtain queued behind a
// surviving reader and a killed one gets the lock as soon as the survivor
// releases, if the killed one's share has ended by then (the release hands
// it over, no check needed); and if the survivor releases first, within
// one waiter check after the killed one's share ends, never before it.
func TestSharedPermitsReturnAfterCrash(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	prefix := uniq(t)
	ls := lockers(t, c.Options().Addr, 2)
	l, wl := ls[0], ls[1]
	children := newSharedChildren(t, c)
	skey := l.lockKeys("k")[3]
	for _, releaseFirst := range []bool{false, true} {
		survivor, err := l.ObtainShared(ctx, "k", WithLimit(2), WithTTL(sharedChildTTL))
		require.NoError(t, err)
		child, token := children.spawn(prefix)
		killed, ends := children.kill(child, skey, token)
		writer := waitFor(t, ctx, wl, "k")
		if releaseFirst {
			require.NoError(t, survivor.Release(ctx))
			w := receive(t, writer, 10*time.Second)
			granted := time.Now()
			t.Logf("survivor released first: the writer got the lock %dms after the dead share ended", granted.UnixMilli()-ends)
			if granted.UnixMilli() < ends {
				t.Errorf("the writer got the lock at %d, before the dead share ended at %d", granted.UnixMilli(), ends)
			}
			if bound := time.Second + 500*time.Millisecond; granted.Sub(time.UnixMilli(ends)) > bound {
				t.Errorf("the writer got the lock %dms after the dead share ended, over %v", granted.UnixMilli()-ends, bound)
			}
			require.NoError(t, w.Release(ctx))
			continue
		}
		// Past the dead share's end, the survivor still holds (and renews).
		time.Sleep(time.Until(time.UnixMilli(ends + 50)))
		select {
		case <-writer:
			t.Fatal("the writer got the lock while the survivor held a share")
		default:
		}
		start := time.Now()
		require.NoError(t, survivor.Release(ctx))
		w := receive(t, writer, 10*time.Second)
		t.Logf("the dead share had ended: the writer got the lock %v after the survivor's release (killed %v before)", time.Since(start), time.Since(killed))
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Errorf("the writer got the lock %v after the last live share's release: the dead share held it up", d)
		}
		require.False(t, w.Shared())
		require.Greater(t, w.Fence(), survivor.Fence())
		require.NoError(t, w.Release(ctx))
	}
}

// A writer queued behind a share, in a process killed with SIGKILL, holds
// back new shared leases only while it lives: once Redis has dropped its
// subscription with its connection, the next TryObtainShared finds nobody
// listening for it, skips it, and gets in.
func TestSharedKilledWriterStopsBlockingReaders(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	prefix := uniq(t)
	l := lockers(t, c.Options().Addr, 1)[0]
	r, err := l.TryObtainShared(ctx, "k")
	require.NoError(t, err)
	queue := l.lockKeys("k")[2]
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), waitChildEnv+"="+c.Options().Addr+" "+prefix+" "+strconv.FormatInt(childGrantTTL.Milliseconds(), 10))
	require.NoError(t, cmd.Start())
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	// Queued, hence listening (TestSlowSubscriptionWriterIsNotOvertaken).
	redistest.Eventually(t, 10*time.Second, "the child writer queued and subscribed", func() bool {
		return c.ZCard(ctx, queue).Val() == 1 && len(c.PubSubChannels(ctx, prefix+":grant:*").Val()) == 1
	})
	_, err = l.TryObtainShared(ctx, "k")
	require.ErrorIs(t, err, ErrNotObtained, "a shared lease overtook a live queued writer")
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	redistest.Eventually(t, 5*time.Second, "the killed writer's subscription dropped", func() bool {
		return len(c.PubSubChannels(ctx, prefix+":grant:*").Val()) == 0
	})
	lk, err := l.TryObtainShared(ctx, "k")
	require.NoError(t, err, "a killed writer still held back shared leases")
	require.Zero(t, c.ZCard(ctx, queue).Val(), "the killed writer is still queued")
	require.NoError(t, lk.Release(ctx))
	require.NoError(t, r.Release(ctx))
}
