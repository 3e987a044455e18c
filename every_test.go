package redlease

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// everyBackends runs f on miniredis, on real Redis and, with cluster, on
// the tests' Redis Cluster; newClient returns a new client of the
// deployment each time, closed when the test ends.
func everyBackends(t *testing.T, cluster bool, f func(t *testing.T, newClient func() redis.UniversalClient)) {
	t.Run("miniredis", func(t *testing.T) {
		mr, _ := newMini(t)
		f(t, func() redis.UniversalClient {
			c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
			t.Cleanup(func() { c.Close() })
			return c
		})
	})
	t.Run("redis", func(t *testing.T) {
		realRedis(t)
		f(t, func() redis.UniversalClient { return realRedis(t) })
	})
	if cluster {
		t.Run("cluster", func(t *testing.T) {
			startCluster(t)
			f(t, func() redis.UniversalClient { return startCluster(t) })
		})
	}
}

// everyLockers returns n Lockers, each on its own client, under the test's
// prefix, closed when the test ends.
func everyLockers(t *testing.T, newClient func() redis.UniversalClient, n int, opts ...Option) []*Locker {
	lockers := make([]*Locker, n)
	for i := range lockers {
		lockers[i] = NewLocker(newClient(), append([]Option{WithPrefix(uniq(t))}, opts...)...)
		t.Cleanup(func() { lockers[i].Close() })
	}
	return lockers
}

// redisSlot is the slot of period that Redis's clock is in now.
func redisSlot(t *testing.T, c redis.UniversalClient, period time.Duration) int64 {
	t.Helper()
	now, err := c.Time(context.Background()).Result()
	require.NoError(t, err)
	return now.UnixMilli() / period.Milliseconds()
}

// everyRuns records the runs of one job: each run reads, while it holds
// the lock, the claim it runs under.
type everyRuns struct {
	t    *testing.T
	c    redis.UniversalClient
	l    *Locker // for the key layout
	name string

	running atomic.Int32 // runs in progress, in any Locker
	mu      sync.Mutex
	slots   map[int64]int // claimed slot: runs under it
	by      map[*Locker]int
	total   int
}

func newEveryRuns(t *testing.T, c redis.UniversalClient, l *Locker, name string) *everyRuns {
	return &everyRuns{t: t, c: c, l: l, name: name, slots: map[int64]int{}, by: map[*Locker]int{}}
}

// run records a run by l that works for work: it fails the test if
// another run is in progress meanwhile, or if the slot's claim does not
// carry the token of the lease the run holds.
func (r *everyRuns) run(ctx context.Context, l *Locker, work time.Duration) {
	if n := r.running.Add(1); n != 1 {
		r.t.Errorf("%d runs at once", n)
	}
	defer r.running.Add(-1)
	r.record(context.WithoutCancel(ctx), l) // record even a run whose context ends
	if work > 0 {
		select {
		case <-time.After(work):
		case <-ctx.Done():
		}
	}
	if n := r.running.Load(); n != 1 {
		r.t.Errorf("%d runs at once", n)
	}
}

func (r *everyRuns) record(ctx context.Context, l *Locker) {
	claim, err := r.c.Get(ctx, r.l.everyKey(r.name)).Result()
	if err != nil {
		r.t.Errorf("reading the claim: %v", err)
		return
	}
	lease, err := r.c.Get(ctx, r.l.lockKey(r.name)).Result()
	if err != nil {
		r.t.Errorf("reading the lease: %v", err)
		return
	}
	s, token, _ := strings.Cut(claim, " ")
	slot, err := strconv.ParseInt(s, 10, 64)
	if err != nil || token != lease {
		r.t.Errorf("run under claim %q, holding lease %q", claim, lease)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.slots[slot]++
	r.by[l]++
	r.total++
}

// count returns how many runs there were, and how many by l.
func (r *everyRuns) count(l *Locker) (total, byL int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total, r.by[l]
}

// checkOncePerSlot fails the test if a slot ran twice.
func (r *everyRuns) checkOncePerSlot() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for slot, n := range r.slots {
		if n > 1 {
			r.t.Errorf("slot %d ran %d times", slot, n)
		}
	}
}

// runEvery runs Every on each Locker until ctx ends and returns their
// errors; fn(l) is the job l runs.
func runEvery(ctx context.Context, lockers []*Locker, name string, period time.Duration, fn func(l *Locker) func(context.Context) error) []error {
	errs := make([]error, len(lockers))
	var wg sync.WaitGroup
	for i, l := range lockers {
		wg.Go(func() { errs[i] = l.Every(ctx, name, period, fn(l)) })
	}
	wg.Wait()
	return errs
}

// Three Lockers, each on its own connection, run one job: no slot runs
// twice, no two runs overlap, each run holds the lock with the token its
// claim carries, and every slot the test spans ran, but for two (the
// first and last are partial, and scheduling may delay a run past its
// slot).
func TestEveryAtMostOncePerSlot(t *testing.T) {
	everyBackends(t, true, func(t *testing.T, newClient func() redis.UniversalClient) {
		const period, span = 150 * time.Millisecond, 1500 * time.Millisecond
		lockers := everyLockers(t, newClient, 3)
		c := newClient()
		runs := newEveryRuns(t, c, lockers[0], "job")
		first := redisSlot(t, c, period)
		ctx, cancel := context.WithTimeout(context.Background(), span)
		defer cancel()
		errs := runEvery(ctx, lockers, "job", period, func(l *Locker) func(context.Context) error {
			return func(ctx context.Context) error { runs.run(ctx, l, 0); return nil }
		})
		last := redisSlot(t, c, period)
		for i, err := range errs {
			if err != context.DeadlineExceeded {
				t.Errorf("Locker %d: Every returned %v, want ctx.Err()", i, err)
			}
		}
		runs.checkOncePerSlot()
		spanned := int(last - first + 1)
		if ran := len(runs.slots); ran < spanned-2 {
			t.Errorf("%d of %d slots ran", ran, spanned)
		}
		t.Logf("%d of %d slots ran", len(runs.slots), spanned)
	})
}

// A Locker closed while its Every runs: Every returns ErrClosed, and the
// others go on running the job, still once per slot.
func TestEveryCloseMidway(t *testing.T) {
	everyBackends(t, false, func(t *testing.T, newClient func() redis.UniversalClient) {
		const period = 100 * time.Millisecond
		lockers := everyLockers(t, newClient, 3)
		closing := lockers[0]
		runs := newEveryRuns(t, newClient(), closing, "job")
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a bound, not a schedule
		defer cancel()
		closed := make(chan error, 1)
		go func() {
			closed <- closing.Every(ctx, "job", period, func(ctx context.Context) error { runs.run(ctx, closing, 0); return nil })
		}()
		others := make(chan []error, 1)
		go func() {
			others <- runEvery(ctx, lockers[1:], "job", period, func(l *Locker) func(context.Context) error {
				return func(ctx context.Context) error { runs.run(ctx, l, 0); return nil }
			})
		}()
		defer func() {
			cancel()
			for i, err := range <-others {
				if err != context.Canceled {
					t.Errorf("Locker %d: Every returned %v, want context.Canceled", i+1, err)
				}
			}
		}()
		redistest.Eventually(t, 5*time.Second, "two runs", func() bool { total, _ := runs.count(nil); return total >= 2 })
		require.NoError(t, closing.Close())
		select {
		case err := <-closed:
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("the closed Locker's Every returned %v, want ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Every did not return within 5s of Close")
		}
		total, byClosed := runs.count(closing)
		redistest.Eventually(t, 5*time.Second, "three runs by the other Lockers", func() bool { n, _ := runs.count(nil); return n >= total+3 })
		if _, after := runs.count(closing); after != byClosed {
			t.Errorf("the closed Locker ran the job after its Every returned")
		}
		runs.checkOncePerSlot()
	})
}

// A Locker closed by the job itself: the job's context is cancelled with
// ErrClosed as its cause, Every returns ErrClosed, and the lock is given
// back, so another Locker takes it at once.
func TestEveryCloseDuringRun(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		l := NewLocker(c, WithPrefix(uniq(t)))
		defer l.Close()
		var cause error
		err := l.Every(context.Background(), "job", time.Hour, func(ctx context.Context) error {
			require.NoError(t, l.Close())
			<-ctx.Done() // at once: Close ends the lease
			cause = context.Cause(ctx)
			return ctx.Err()
		})
		if !errors.Is(err, ErrClosed) || !errors.Is(cause, ErrClosed) {
			t.Fatalf("Every returned %v with the job's context ended by %v, want ErrClosed for both", err, cause)
		}
		other := NewLocker(c, WithPrefix(uniq(t)))
		defer other.Close()
		lk, err := other.TryObtain(context.Background(), "job")
		require.NoError(t, err, "the lock was not given back")
		require.NoError(t, lk.Release(context.Background()))
	})
}

// The job's error and panic are logged at Error level with the job's name
// and slot, and the job runs again after each; Every ends with ctx.Err().
func TestEveryLogsErrorsAndPanics(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		var logs logLines
		l := NewLocker(c, WithPrefix(uniq(t)), WithLogger(logs.logger()))
		defer l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // a bound
		defer cancel()
		runs := 0
		err := l.Every(ctx, "job", 20*time.Millisecond, func(context.Context) error {
			runs++
			switch runs {
			case 1:
				return errors.New("disk full")
			case 2:
				panic("kaboom")
			}
			cancel()
			return nil
		})
		if err != context.Canceled || runs != 3 {
			t.Fatalf("Every returned %v after %d runs, want context.Canceled after 3", err, runs)
		}
		entries := logs.entries(t)
		failed, panicked := find(entries, "ERROR", "disk full"), find(entries, "ERROR", "panic: kaboom")
		if len(failed) != 1 || len(panicked) != 1 || len(entries) != 2 {
			t.Fatalf("logged %v, want one error and one panic", entries)
		}
		for _, e := range []map[string]any{failed[0], panicked[0]} {
			if e["name"] != "job" || e["slot"] == nil {
				t.Errorf("entry %v lacks the name or the slot", e)
			}
		}
		if !strings.Contains(panicked[0]["stack"].(string), "every_test.go") {
			t.Errorf("the panic's stack %q does not show the job", panicked[0]["stack"])
		}
	})
}

// Redis errors are logged at Warn level, and Every keeps trying until
// Redis answers again; then the job runs.
func TestEveryLogsRedisErrors(t *testing.T) {
	mr, c := newMini(t)
	var logs logLines
	l := NewLocker(c, WithPrefix(uniq(t)), WithLogger(logs.logger()))
	defer l.Close()
	mr.SetError("ERR injected")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // a bound
	defer cancel()
	done := make(chan error, 1)
	ran := make(chan struct{})
	go func() {
		done <- l.Every(ctx, "job", 50*time.Millisecond, func(context.Context) error {
			close(ran)
			cancel()
			return nil
		})
	}()
	redistest.Eventually(t, 5*time.Second, "two Redis errors logged", func() bool { return len(find(logs.entries(t), "WARN", "injected")) >= 2 })
	select {
	case <-ran:
		t.Fatal("the job ran while Redis failed")
	default:
	}
	mr.SetError("")
	if err := <-done; err != context.Canceled {
		t.Fatalf("Every returned %v, want context.Canceled", err)
	}
	select {
	case <-ran:
	default:
		t.Fatal("the job never ran")
	}
	for _, e := range find(logs.entries(t), "WARN", "injected") {
		if e["name"] != "job" {
			t.Errorf("entry %v lacks the name", e)
		}
	}
}

// A job that takes longer than the period: runs never overlap, in any
// Locker, and the slots its runs span are skipped or run once the lock
// frees, never twice.
func TestEveryRunsNeverOverlap(t *testing.T) {
	everyBackends(t, false, func(t *testing.T, newClient func() redis.UniversalClient) {
		const period, work = 100 * time.Millisecond, 250 * time.Millisecond
		lockers := everyLockers(t, newClient, 3)
		runs := newEveryRuns(t, newClient(), lockers[0], "job")
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		errs := runEvery(ctx, lockers, "job", period, func(l *Locker) func(context.Context) error {
			return func(ctx context.Context) error { runs.run(ctx, l, work); return nil }
		})
		for i, err := range errs {
			if err != context.DeadlineExceeded {
				t.Errorf("Locker %d: Every returned %v, want ctx.Err()", i, err)
			}
		}
		runs.checkOncePerSlot()
		if total, _ := runs.count(nil); total < 2 {
			t.Errorf("%d runs in 1.5s of a 250ms job", total)
		}
	})
}

// One name is one lock: while another holds the lock, the job does not
// run; it runs once the lock is released; and while it runs, the lock is
// held.
func TestEveryExcludedByTheLock(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		const period = 50 * time.Millisecond
		l := NewLocker(c, WithPrefix(uniq(t)))
		defer l.Close()
		other := NewLocker(c, WithPrefix(uniq(t)))
		defer other.Close()
		bg := context.Background()
		lk, err := other.TryObtain(bg, "job")
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(bg, 10*time.Second) // a bound
		defer cancel()
		var ran atomic.Bool
		var inRun error
		done := make(chan error, 1)
		go func() {
			done <- l.Every(ctx, "job", period, func(ctx context.Context) error {
				ran.Store(true)
				_, inRun = other.TryObtain(bg, "job")
				cancel()
				return nil
			})
		}()
		time.Sleep(4 * period) // slots in which the job must not run
		if ran.Load() {
			t.Fatal("the job ran while another held its lock")
		}
		require.NoError(t, lk.Release(bg))
		if err := <-done; err != context.Canceled {
			t.Fatalf("Every returned %v, want context.Canceled", err)
		}
		if !ran.Load() || !errors.Is(inRun, ErrNotObtained) {
			t.Fatalf("ran %v; TryObtain during the run: %v, want ErrNotObtained", ran.Load(), inRun)
		}
	})
}

// When ctx ends during a run, Every cancels the job's context, waits for
// the job to return, gives the lock back, logs nothing, and returns
// ctx.Err() itself.
func TestEveryContextEndWaitsForTheJob(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		var logs logLines
		l := NewLocker(c, WithPrefix(uniq(t)), WithLogger(logs.logger()))
		defer l.Close()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		started := make(chan struct{})
		var returned atomic.Bool
		done := make(chan error, 1)
		go func() {
			done <- l.Every(ctx, "job", time.Hour, func(ctx context.Context) error {
				close(started)
				<-ctx.Done()
				time.Sleep(50 * time.Millisecond) // Every must wait for this
				returned.Store(true)
				return ctx.Err()
			})
		}()
		<-started
		cancel()
		if err := <-done; err != context.Canceled || !returned.Load() {
			t.Fatalf("Every returned %v, the job returned first: %v; want context.Canceled and true", err, returned.Load())
		}
		if n := c.Exists(context.Background(), l.lockKey("job")).Val(); n != 0 {
			t.Error("the lock was not given back")
		}
		if e := logs.entries(t); len(e) != 0 {
			t.Errorf("logged %v for a job stopped by its context", e)
		}

		// A deadline: the same, with its own error.
		dctx, dcancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer dcancel()
		if err := l.Every(dctx, "other", 10*time.Millisecond, func(context.Context) error { return nil }); err != context.DeadlineExceeded {
			t.Fatalf("Every returned %v, want context.DeadlineExceeded", err)
		}
	})
}

// Close while Every waits for the next slot: it returns ErrClosed at once.
// On a closed Locker, Every returns ErrClosed and writes nothing.
func TestEveryClose(t *testing.T) {
	mr, c := newMini(t)
	l := NewLocker(c)
	var runs atomic.Int32
	done := make(chan error, 1)
	go func() {
		done <- l.Every(context.Background(), "job", time.Hour, func(context.Context) error { runs.Add(1); return nil })
	}()
	redistest.Eventually(t, 5*time.Second, "the first slot's run, and the lock given back", func() bool {
		return runs.Load() == 1 && !mr.Exists(l.lockKey("job"))
	})
	require.NoError(t, l.Close())
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) || runs.Load() != 1 {
			t.Fatalf("Every returned %v after %d runs, want ErrClosed after 1", err, runs.Load())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Every did not return within 5s of Close")
	}

	mr2, c2 := newMini(t)
	closed := NewLocker(c2)
	require.NoError(t, closed.Close())
	err := closed.Every(context.Background(), "job", time.Second, func(context.Context) error { return nil })
	if !errors.Is(err, ErrClosed) || len(mr2.Keys()) != 0 {
		t.Fatalf("Every on a closed Locker: %v, keys %v; want ErrClosed and none", err, mr2.Keys())
	}
}

// Bad arguments are refused with ErrInvalidArgument before anything is
// sent to Redis.
func TestEveryBadInput(t *testing.T) {
	minis := make([]*miniredis.Miniredis, 3)
	clients := make([]redis.UniversalClient, 3)
	for i := range minis {
		mr, c := newMini(t)
		minis[i], clients[i] = mr, c
	}
	l := NewLocker(clients[0])
	defer l.Close()
	quorum := NewQuorumLocker(clients)
	defer quorum.Close()
	badLogger := NewLocker(clients[0], WithLogger(nil))
	defer badLogger.Close()
	fn := func(context.Context) error { return nil }
	for _, tc := range []struct {
		what   string
		l      *Locker
		name   string
		period time.Duration
		fn     func(context.Context) error
		says   string
	}{
		{"nil function", l, "job", time.Second, nil, "nil function"},
		{"empty name", l, "", time.Second, fn, "empty"},
		{"zero period", l, "job", 0, fn, "at least 1ms"},
		{"negative period", l, "job", -time.Second, fn, "at least 1ms"},
		{"sub-millisecond period", l, "job", 999 * time.Microsecond, fn, "at least 1ms"},
		{"fractional milliseconds", l, "job", 1500 * time.Microsecond, fn, "whole number of milliseconds"},
		{"quorum Locker", quorum, "job", time.Second, fn, "quorum"},
		{"nil logger", badLogger, "job", time.Second, fn, "nil logger"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second) // a bound: valid input would block
			defer cancel()
			err := tc.l.Every(ctx, tc.name, tc.period, tc.fn)
			if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("Every: %v, want ErrInvalidArgument saying %q", err, tc.says)
			}
		})
	}
	for i, mr := range minis {
		if keys := mr.Keys(); len(keys) != 0 {
			t.Errorf("Redis %d holds %v after refused calls", i, keys)
		}
	}
}

// everyClaim runs lua/every.lua once.
func everyClaim(t *testing.T, c redis.UniversalClient, key string, period time.Duration, token string) (code, slot, ms int64) {
	t.Helper()
	r, err := ints(run(context.Background(), c, everyScript, []string{key}, period.Milliseconds(), token), 3)
	require.NoError(t, err)
	return r[0], r[1], r[2]
}

// A claim resent with its token in the same slot reports the slot ours;
// another token, or a question, finds it taken; an unclaimed slot is free;
// the reply says how long until the next slot, and the key outlives its
// slot by the grace only.
func TestEveryClaimScriptResend(t *testing.T) {
	everyBackends(t, true, func(t *testing.T, newClient func() redis.UniversalClient) {
		const period = time.Hour // no slot boundary between calls, but by chance: see below
		c := newClient()
		l := NewLocker(c, WithPrefix(uniq(t)))
		defer l.Close()
		key := l.everyKey("job")
		for try := 0; ; try++ {
			code, slot, ms := everyClaim(t, c, key, period, "")
			if code != slotFree || ms < 1 || ms > period.Milliseconds() {
				t.Fatalf("asking about a fresh key: code %d, %dms to the next slot", code, ms)
			}
			c1, s1, ms1 := everyClaim(t, c, key, period, "a")
			c2, s2, _ := everyClaim(t, c, key, period, "a")
			cb, sb, _ := everyClaim(t, c, key, period, "b")
			cq, sq, _ := everyClaim(t, c, key, period, "")
			if s1 != slot || s2 != slot || sb != slot || sq != slot {
				require.Less(t, try, 2, "slots changed between calls three times")
				require.NoError(t, c.Del(context.Background(), key).Err())
				continue // a slot boundary passed between the calls
			}
			if c1 != slotOurs || c2 != slotOurs || cb != slotTaken || cq != slotTaken {
				t.Fatalf("claim %d, resent claim %d, another's %d, question %d; want %d, %d, %d, %d",
					c1, c2, cb, cq, slotOurs, slotOurs, slotTaken, slotTaken)
			}
			if pttl := c.PTTL(context.Background(), key).Val(); pttl <= 0 || pttl > time.Duration(ms1+1000)*time.Millisecond {
				t.Fatalf("claim key lives %v, want at most %dms + 1s", pttl, ms1)
			}
			return
		}
	})
}

// On a clock set by the test: slots are counted from the epoch, a later
// slot is claimed anew, and a clock that steps back skips slots rather
// than running one twice.
func TestEveryClaimScriptClock(t *testing.T) {
	mr, c := newMini(t)
	const period = time.Second
	now := time.UnixMilli(1_700_000_000_250)
	mr.SetTime(now)
	key := "every-clock"
	if code, slot, ms := everyClaim(t, c, key, period, "a"); code != slotOurs || slot != 1_700_000_000 || ms != 750 {
		t.Fatalf("claim: code %d, slot %d, %dms; want %d, 1700000000, 750", code, slot, ms, slotOurs)
	}
	if got := mr.TTL(key); got != 1750*time.Millisecond {
		t.Fatalf("claim key TTL %v, want 1.75s: its slot's rest and the grace", got)
	}
	mr.SetTime(now.Add(period))
	if code, slot, _ := everyClaim(t, c, key, period, "b"); code != slotOurs || slot != 1_700_000_001 {
		t.Fatalf("claim of the next slot: code %d, slot %d", code, slot)
	}
	mr.SetTime(now.Add(-5 * period))
	if code, _, _ := everyClaim(t, c, key, period, "c"); code != slotTaken {
		t.Fatalf("claim of an earlier slot after the clock stepped back: code %d, want %d", code, slotTaken)
	}
	if code, _, _ := everyClaim(t, c, key, period, ""); code != slotTaken {
		t.Fatalf("question about an earlier slot: code %d, want %d", code, slotTaken)
	}
}

// resendEvery runs every call of lua/every.lua twice, as go-redis does when
// a reply is lost; the caller sees the second reply.
type resendEvery struct{ resent *atomic.Int32 }

func (resendEvery) DialHook(n redis.DialHook) redis.DialHook { return n }
func (h resendEvery) ProcessHook(n redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := cmd.Args()
		if len(args) > 1 && args[1] == everyScript.Hash() {
			_ = n(ctx, cmd)
			h.resent.Add(1)
		}
		return n(ctx, cmd)
	}
}
func (resendEvery) ProcessPipelineHook(n redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return n
}

// With every claim run twice, the job still runs, and once per slot.
func TestEveryResentClaims(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		const period = 50 * time.Millisecond
		var resent atomic.Int32
		rc := redis.NewClient(c.Options())
		defer rc.Close()
		rc.AddHook(resendEvery{&resent})
		l := NewLocker(rc, WithPrefix(uniq(t)))
		defer l.Close()
		runs := newEveryRuns(t, c, l, "job")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // a bound
		defer cancel()
		err := l.Every(ctx, "job", period, func(ctx context.Context) error {
			runs.run(ctx, l, 0)
			if total, _ := runs.count(nil); total == 3 {
				cancel()
			}
			return nil
		})
		if err != context.Canceled {
			t.Fatalf("Every returned %v, want context.Canceled after 3 runs", err)
		}
		runs.checkOncePerSlot()
		if resent.Load() < 3 {
			t.Fatalf("%d claims resent, want at least 3", resent.Load())
		}
	})
}
