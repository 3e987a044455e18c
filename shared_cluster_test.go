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

// Shared leases on the tests' Redis Cluster, on names whose slots live on
// every master: grants go out with SPUBLISH on the lock's own slot, and
// the dead-writer probe asks PUBSUB SHARDNUMSUB.

// clusterSharedNames returns two lock names per master.
func clusterSharedNames(t *testing.T, cc *redis.ClusterClient) []string {
	var names []string
	for _, ns := range redistest.NamesPerMaster(t, cc, 2, func(i int) string { return "sh-" + strconv.Itoa(i) }) {
		names = append(names, ns...)
	}
	return names
}

// On names in six slots over three masters at once, with three Lockers on
// ClusterClients of their own: two shared leases hold a lock together and
// keep an exclusive one out; a queued writer keeps new shared leases out
// (which it does only if the SHARDNUMSUB probe hears its Locker), gets the
// lock from the last shared release, and its release lets in shared
// waiters of two Lockers in one step. The waiters check Redis only once a
// minute: only the releases' SPUBLISH notices can wake them in time.
// Fences: shared ones at least the earlier ones, the writer's above them.
func TestClusterSharedLeases(t *testing.T) {
	cc := startCluster(t)
	prefix := uniq(t)
	var ls [3]*Locker
	for i := range ls {
		ls[i] = NewLocker(cluster.Client(t, nil), WithPrefix(prefix))
		defer ls[i].Close()
	}
	a, b, wl := ls[0], ls[1], ls[2]
	slow := WithRetry(LinearBackoff(time.Minute))
	names := clusterSharedNames(t, cc)

	// obtain runs an Obtain in the background; the channel yields its lock
	// or error.
	type result struct {
		lk  *Lock
		err error
	}
	obtain := func(ctx context.Context, f func(context.Context) (*Lock, error)) <-chan result {
		got := make(chan result, 1)
		go func() {
			lk, err := f(ctx)
			got <- result{lk, err}
		}()
		return got
	}
	queued := func(l *Locker, name string) error {
		return redistest.Poll(5*time.Second, func() error {
			if !queuedIn(l, name) {
				return errors.New("not queued")
			}
			return nil
		})
	}
	wait := func(got <-chan result, within time.Duration) (*Lock, error) {
		select {
		case r := <-got:
			return r.lk, r.err
		case <-time.After(within):
			return nil, fmt.Errorf("still waiting after %v", within)
		}
	}

	run := func(name string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		rA, err := a.TryObtainShared(ctx, name)
		if err != nil {
			return fmt.Errorf("first share: %w", err)
		}
		rB, err := b.TryObtainShared(ctx, name)
		if err != nil {
			return fmt.Errorf("second share: %w", err)
		}
		if rB.Fence() < rA.Fence() {
			return fmt.Errorf("shared fences %d then %d", rA.Fence(), rB.Fence())
		}
		if _, err := wl.TryObtain(ctx, name); !errors.Is(err, ErrNotObtained) {
			return fmt.Errorf("TryObtain under shares: %v", err)
		}
		writer := obtain(ctx, func(ctx context.Context) (*Lock, error) { return wl.Obtain(ctx, name, slow) })
		if err := queued(wl, name); err != nil {
			return fmt.Errorf("writer: %w", err)
		}
		for _, l := range []*Locker{a, b, wl} {
			if _, err := l.TryObtainShared(ctx, name); !errors.Is(err, ErrNotObtained) {
				return fmt.Errorf("a shared lease overtook the queued writer (the probe did not hear it): %v", err)
			}
		}
		var readers []<-chan result
		for _, l := range []*Locker{a, b} {
			readers = append(readers, obtain(ctx, func(ctx context.Context) (*Lock, error) { return l.ObtainShared(ctx, name, slow) }))
			if err := queued(l, name); err != nil {
				return fmt.Errorf("shared waiter: %w", err)
			}
		}
		if err := rA.Release(ctx); err != nil {
			return err
		}
		select {
		case r := <-writer:
			return fmt.Errorf("the writer got the lock while a share held it: %v", r.err)
		case <-time.After(50 * time.Millisecond):
		}
		if err := rB.Release(ctx); err != nil {
			return err
		}
		w, err := wait(writer, 5*time.Second)
		if err != nil {
			return fmt.Errorf("writer after the last share's release: %w", err)
		}
		if w.Shared() || w.Fence() <= rB.Fence() {
			return fmt.Errorf("writer: shared %v, fence %d after %d", w.Shared(), w.Fence(), rB.Fence())
		}
		if err := w.Release(ctx); err != nil {
			return err
		}
		for i, got := range readers {
			lk, err := wait(got, 5*time.Second)
			if err != nil {
				return fmt.Errorf("shared waiter %d after the writer's release: %w", i, err)
			}
			if !lk.Shared() || lk.Fence() < w.Fence() {
				return fmt.Errorf("shared waiter %d: shared %v, fence %d after the writer's %d", i, lk.Shared(), lk.Fence(), w.Fence())
			}
			if err := lk.Release(ctx); err != nil {
				return err
			}
		}
		keys := a.lockKeys(name)
		if n := cc.Exists(ctx, keys[0], keys[2], keys[3]).Val(); n != 0 {
			return fmt.Errorf("%d keys of a free lock left", n)
		}
		return nil
	}

	var wg sync.WaitGroup
	for _, name := range names {
		wg.Go(func() {
			if err := run(name); err != nil {
				t.Errorf("%s (slot %d): %v", name, nameSlot(name), err)
			}
		})
	}
	wg.Wait()
}

// A waiting writer whose process died (a queue entry nobody listens for,
// on a shard channel of the lock's slot) does not hold back shared leases
// on a cluster: PUBSUB SHARDNUMSUB finds nobody, and the entry is dropped.
func TestClusterDeadWriterStopsBlockingReaders(t *testing.T) {
	cc := startCluster(t)
	ctx := context.Background()
	prefix := uniq(t)
	l := NewLocker(cluster.Client(t, nil), WithPrefix(prefix))
	defer l.Close()
	l2 := NewLocker(cluster.Client(t, nil), WithPrefix(prefix))
	defer l2.Close()
	for _, name := range clusterSharedNames(t, cc) {
		r, err := l.TryObtainShared(ctx, name)
		require.NoError(t, err)
		queue := l.lockKeys(name)[2]
		dead := "2000 " + prefix + ":{" + slotTag(nameSlot(name)) + "}:grant:gone " + newToken()
		require.NoError(t, cc.ZAdd(ctx, queue, redis.Z{Score: 1, Member: dead}).Err())
		lk, err := l2.TryObtainShared(ctx, name)
		require.NoError(t, err, "%s: a dead writer held back a shared lease", name)
		require.Zero(t, cc.ZCard(ctx, queue).Val(), "%s: the dead writer's entry is still queued", name)
		require.NoError(t, lk.Release(ctx))
		require.NoError(t, r.Release(ctx))
	}
}
