package redlease

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// The lock and queue suites through a FailoverClient, then a forced
// failover (SENTINEL FAILOVER) with locks held and messages in flight; see
// runFailover for what is checked. Two Lockers wait on a lock throughout,
// so their release subscriptions were made before the failover; hand-offs
// between them are timed before, while the old master is not yet demoted
// (see TestSentinelWakeupAfterFailover), and after.
func TestSentinel(t *testing.T) {
	t.Cleanup(redistest.NoLeaks(t, 5*time.Second)) // runs last
	ts := redistest.NewSentinelT(t)
	ctx := context.Background()
	c := ts.Client(t)
	t.Run("locks", func(t *testing.T) {
		var keys []string
		for i := range 20 {
			keys = append(keys, "key-"+strconv.Itoa(i))
		}
		lockSuite(t, c, ts.Client(t), keys)
	})
	t.Run("queue", func(t *testing.T) {
		queueSuite(t, c, []string{"q1", "q2"})
	})
	t.Run("failover", func(t *testing.T) {
		prefix := uniq(t)
		lockers := pinnedLockers(t, [2]redis.UniversalClient{ts.Client(t), ts.Client(t)}, c, prefix+"-handoff")
		before, err := settledHandoffs(ctx, lockers, 20, 3*time.Millisecond, 0)
		require.NoError(t, err)

		oldMaster, newMaster := ts.Master.Client(t), ts.Replica.Client(t)
		sentinel := redis.NewSentinelClient(&redis.Options{Addr: ts.Sentinels[0].Addr})
		defer sentinel.Close()
		var demoted time.Duration // how long the old master stayed a master
		var failAt time.Time
		var demoteWG sync.WaitGroup
		defer demoteWG.Wait()
		var during []float64 // hand-offs while the old master is not yet demoted
		var duringErr error
		res := runFailover(t, failoverCase{
			client: func() redis.UniversalClient { return ts.Client(t) },
			keys:   [3]string{"a", "b", "c"},
			queues: [2]string{"jobs", "produced"},
			replicate: func(ctx context.Context) error {
				return redistest.Replicated(ctx, oldMaster, "probe")
			},
			fail: func() {
				failAt = time.Now()
				if err := sentinel.Failover(ctx, redistest.SentinelMaster).Err(); err != nil {
					t.Errorf("SENTINEL FAILOVER: %v", err)
				}
				demoteWG.Go(func() {
					if duringErr = ts.WaitSwitched(ctx, lockers[0].client, lockers[1].client); duringErr == nil {
						during, duringErr = settledHandoffs(ctx, lockers, 10, 3*time.Millisecond, 0)
					}
				})
				demoteWG.Go(func() {
					if redistest.Poll(30*time.Second, func() error {
						if redistest.Role(ctx, oldMaster) != "slave" {
							return errors.New("still a master")
						}
						return nil
					}) == nil {
						demoted = time.Since(failAt)
					}
				})
			},
			switched: ts.OnReplica,
			promoted: func() error {
				if r := redistest.Role(ctx, newMaster); r != "master" {
					return fmt.Errorf("replica's role %q", r)
				}
				for _, s := range ts.Sentinels {
					sc := redis.NewSentinelClient(&redis.Options{Addr: s.Addr})
					addr, err := sc.GetMasterAddrByName(ctx, redistest.SentinelMaster).Result()
					sc.Close()
					if err != nil || len(addr) != 2 || addr[1] != strconv.Itoa(ts.Replica.Port) {
						return fmt.Errorf("%s says the master is %v %v", s.Name, addr, err)
					}
				}
				return nil
			},
		})
		demoteWG.Wait()
		if duringErr != nil {
			t.Fatalf("hand-offs after the promotion: %v", duringErr)
		}
		after, err := settledHandoffs(ctx, lockers, 20, 3*time.Millisecond, 0)
		require.NoError(t, err)
		channel := lockers[0].waits.channel("k")
		t.Logf("SENTINEL FAILOVER: replica promoted and every sentinel agreeing after %v, every client on it after %v, old master demoted after %v",
			res.promoted.Round(time.Millisecond), res.recovered.Round(time.Millisecond), demoted.Round(time.Millisecond))
		t.Logf("hand-off between Lockers subscribed before the failover: p50 %v p99 %v before; p50 %v max %v after the promotion, old master not yet demoted; p50 %v p99 %v after its demotion; the first Locker's subscribers now on the old master %d, on the new %d",
			quantileDur(before, 0.5), quantileDur(before, 0.99), quantileDur(during, 0.5), quantileDur(during, 1), quantileDur(after, 0.5), quantileDur(after, 0.99),
			oldMaster.PubSubNumSub(ctx, channel).Val()[channel], newMaster.PubSubNumSub(ctx, channel).Val()[channel])
	})
}

// After a Sentinel failover, releases still reach waiters. A Locker's
// subscription stays on the old master, which Sentinel demotes only some
// ten seconds later (go-redis's FailoverClient moves its command
// connections at +switch-master, not its pub/sub ones), so a release on
// the new master finds nobody listening and skips the waiter; the waiter's
// next check (250ms) finds the lock free, takes it, and makes its Locker
// subscribe anew, on the new master.
func TestSentinelWakeupAfterFailover(t *testing.T) {
	t.Cleanup(redistest.NoLeaks(t, 5*time.Second)) // runs last
	ts := redistest.NewSentinelT(t)
	ctx := context.Background()
	c := ts.Client(t)
	lockers := pinnedLockers(t, [2]redis.UniversalClient{ts.Client(t), ts.Client(t)}, c, uniq(t))
	before, err := settledHandoffs(ctx, lockers, 10, 3*time.Millisecond, 0)
	require.NoError(t, err)
	sc := redis.NewSentinelClient(&redis.Options{Addr: ts.Sentinels[0].Addr})
	defer sc.Close()
	require.NoError(t, sc.Failover(ctx, redistest.SentinelMaster).Err())
	require.NoError(t, ts.WaitSwitched(ctx, lockers[0].client, lockers[1].client))
	after, err := settledHandoffs(ctx, lockers, 10, 3*time.Millisecond, 0)
	require.NoError(t, err)
	channel := lockers[0].waits.channel("k")
	old := ts.Master.Client(t)
	t.Logf("hand-off p50 %v before the failover, %v after it (old master's role %q, %d subscribers left on it)",
		quantileDur(before, 0.5), quantileDur(after, 0.5), redistest.Role(ctx, old), old.PubSubNumSub(ctx, channel).Val()[channel])
	if p50 := quantileDur(after, 0.5); p50 > 5*time.Millisecond {
		t.Fatalf("hand-off p50 %v after the failover: releases no longer wake waiters", p50)
	}
}
