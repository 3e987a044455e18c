package redlease

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

func TestInspectFree(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		l := NewLocker(c, WithPrefix(uniq(t)))
		defer l.Close()
		info, err := l.Inspect(ctx, "nobody")
		require.NoError(t, err)
		require.Equal(t, LockInfo{Name: "nobody"}, info)
	})
}

func TestInspectExclusiveWithWaiter(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		l := NewLocker(c, WithPrefix(uniq(t)))
		defer l.Close()
		l2 := NewLocker(c, WithPrefix(uniq(t)))
		defer l2.Close()
		lk, err := l.TryObtain(ctx, "orders", WithTTL(10*time.Second))
		require.NoError(t, err)
		defer lk.Release(ctx)

		waitCtx, stopWait := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := l2.Obtain(waitCtx, "orders", WithRetry(LinearBackoff(time.Minute)))
			done <- err
		}()
		defer func() { stopWait(); <-done }()
		require.NoError(t, redistest.Poll(5*time.Second, func() error {
			if !queuedIn(l2, "orders") {
				return errors.New("no waiter queued")
			}
			return nil
		}))

		info, err := l.Inspect(ctx, "orders")
		require.NoError(t, err)
		require.True(t, info.Held)
		require.False(t, info.Shared)
		require.Equal(t, lk.Token(), info.Holder)
		require.Greater(t, info.TTL, 5*time.Second)
		require.LessOrEqual(t, info.TTL, 10*time.Second)
		require.GreaterOrEqual(t, info.Fence, lk.Fence()) // the waiter's ticket counts too
		require.Equal(t, 1, info.WaiterCount)
		require.Len(t, info.Waiters, 1)
		require.False(t, info.Waiters[0].Shared)
		require.Greater(t, info.Waiters[0].Ticket, lk.Fence())
		require.Equal(t, DefaultGrantTTL, info.Waiters[0].Grant)
		require.NotEmpty(t, info.Waiters[0].Token)
		require.NotEqual(t, lk.Token(), info.Waiters[0].Token)
		require.Zero(t, info.SharedCount)
	})
}

func TestInspectShared(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx := context.Background()
		l := NewLocker(c, WithPrefix(uniq(t)))
		defer l.Close()
		a, err := l.TryObtainShared(ctx, "catalog", WithTTL(5*time.Second))
		require.NoError(t, err)
		defer a.Release(ctx)
		b, err := l.TryObtainShared(ctx, "catalog", WithTTL(20*time.Second))
		require.NoError(t, err)
		defer b.Release(ctx)

		info, err := l.Inspect(ctx, "catalog")
		require.NoError(t, err)
		require.True(t, info.Held)
		require.True(t, info.Shared)
		require.Empty(t, info.Holder)
		require.Equal(t, 2, info.SharedCount)
		require.Len(t, info.SharedHolders, 2)
		require.Equal(t, a.Token(), info.SharedHolders[0].Token) // soonest to end first
		require.Equal(t, b.Token(), info.SharedHolders[1].Token)
		require.Greater(t, info.SharedHolders[0].TTL, time.Duration(0))
		require.LessOrEqual(t, info.SharedHolders[0].TTL, 5*time.Second)
		require.Greater(t, info.TTL, 15*time.Second) // the lock lasts as long as its last share
	})
}

func TestInspectListsAreBounded(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	l := NewLocker(c, WithPrefix(uniq(t)))
	defer l.Close()
	keys := l.lockKeys("crowd")
	require.NoError(t, c.Set(ctx, keys[0], "holder", time.Minute).Err())
	for i := range MaxInspectList + 5 {
		require.NoError(t, c.ZAdd(ctx, keys[2], redis.Z{Score: float64(i + 1), Member: "2000 ch tok" + string(rune('a'+i%26)) + time.Duration(i).String()}).Err())
	}
	info, err := l.Inspect(ctx, "crowd")
	require.NoError(t, err)
	require.Equal(t, MaxInspectList+5, info.WaiterCount)
	require.Len(t, info.Waiters, MaxInspectList)
	require.Equal(t, int64(1), info.Waiters[0].Ticket)
}

func TestInspectRefusesBadInput(t *testing.T) {
	_, c := newMini(t)
	l := NewLocker(c)
	_, err := l.Inspect(context.Background(), "")
	require.ErrorIs(t, err, ErrInvalidArgument)
	q := NewQuorumLocker([]redis.UniversalClient{c})
	defer q.Close()
	_, err = q.Inspect(context.Background(), "x")
	require.ErrorIs(t, err, ErrInvalidArgument)
	require.NoError(t, l.Close())
	_, err = l.Inspect(context.Background(), "x")
	require.ErrorIs(t, err, ErrClosed)
}

func TestParseWaiter(t *testing.T) {
	w, err := parseWaiter("2000:3 redlease:grant:abc tok", "7")
	require.NoError(t, err)
	require.Equal(t, LockWaiter{Token: "tok", Ticket: 7, Shared: true, Limit: 3, Grant: 2 * time.Second}, w)
	w, err = parseWaiter("1500 a channel with spaces tok2", "9")
	require.NoError(t, err)
	require.Equal(t, LockWaiter{Token: "tok2", Ticket: 9, Grant: 1500 * time.Millisecond}, w)
	for _, bad := range []string{"", "x", "2000 tok", "2000 ch ", "-1 ch tok", "20:x ch tok"} {
		_, err := parseWaiter(bad, "1")
		require.Error(t, err, bad)
	}
	_, err = parseWaiter("2000 ch tok", "NaN?")
	require.Error(t, err)
}

// FuzzParseWaiter: no entry panics the parser, and one it accepts has a
// token and no negative field.
func FuzzParseWaiter(f *testing.F) {
	for _, e := range []string{"2000 ch tok", "2000:3 redlease:grant:x tok", "1:0 a b c", " ", "2000: ch tok", "x y z"} {
		f.Add(e, "7")
	}
	f.Fuzz(func(t *testing.T, entry, score string) {
		w, err := parseWaiter(entry, score)
		if err == nil && (w.Token == "" || w.Grant < 0 || w.Limit < 0) {
			t.Fatalf("%q: %+v", entry, w)
		}
	})
}
