package redlease

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// failoverCase is a deployment whose master fail takes down or over. The
// scenario's locks and queues all live on that master.
type failoverCase struct {
	client    func() redis.UniversalClient    // a new client that follows a failover
	stale     func() redis.UniversalClient    // nil, or a new client with default options
	keys      [3]string                       // lock names on the failing master
	queues    [2]string                       // queue names on the failing master
	replicate func(ctx context.Context) error // every write so far reached the replica
	fail      func()                          // takes the master down, or over
	promoted  func() error                    // nil once the replica serves as master
	// switched is nil once c sends its commands to the new master.
	switched func(ctx context.Context, c redis.UniversalClient) error
}

// failoverResult is what the scenario measured, relative to the failure.
type failoverResult struct {
	promoted  time.Duration // until the replica served as master
	recovered time.Duration // until every following client used the new master
}

// Lease lengths in the scenario: long ones outlast a failover if renewals
// get through, short ones do not.
const (
	foLongTTL  = 8 * time.Second
	foShortTTL = time.Second
	foLease    = 8 * time.Second // manual queue claims
)

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// foHolder is one holder of a lock in the failover scenario.
type foHolder struct {
	what   string
	lk     *Lock
	gotAt  time.Time
	lostAt time.Time // when Lost closed; zero while open
}

// runFailover holds locks and queue claims on the master, fails it, and
// checks what a holder may believe afterwards:
//
//   - every original holder either keeps a valid lease on the new master
//     or sees Lost close;
//   - for every lock, at every moment sampled (every 25ms, and at each
//     take-over), at most one holder has Lost open AND TTL() > 0 (a
//     transient double view while clients switch masters one at a time
//     is counted apart, if gone 100ms later);
//   - a contender that takes a lock over gets a higher fence;
//   - every enqueued message (replicated with WAIT before the failure) is
//     handled at least once and the queue ends empty: a claim whose Ack
//     succeeded is never delivered again, one left unacked is delivered
//     again with a higher Attempt.
//
// It also counts the enqueues of a producer running through the failure
// that were acknowledged yet are missing on the new master: replication
// is asynchronous, so that number is reported, not asserted.
//
// The scenario runs in phases, each a method of failoverRun, in this order.
func runFailover(t *testing.T, fc failoverCase) failoverResult {
	r := newFailoverRun(t, fc)
	defer r.cleanUp()
	r.holdLocks()
	r.startQueue()
	r.contend()
	r.produce()
	r.failOver()
	r.ackAndDrain()
	r.releaseAndTakeOver()
	r.checkLocks()
	r.checkQueue()
	return r.res
}

// failoverRun is the state of one runFailover scenario, shared by its
// phases.
type failoverRun struct {
	t         *testing.T
	fc        failoverCase
	ctx       context.Context
	prefix    string
	res       failoverResult
	deferred  []func() // run last first by cleanUp
	following []redis.UniversalClient
	fol       redis.UniversalClient // the holders' and the queue's client
	holders   *Locker
	contender *Locker

	mu         sync.Mutex // guards byKey, its holders, violations, notes, transient, handled, consumeErrs
	byKey      map[string][]*foHolder
	violations []string
	notes      []string
	transient  int
	watch      sync.WaitGroup // until each holder's Lost closes

	// the queue
	q            *Queue
	ids          []string
	manual       []*Message
	handled      map[string][]int // id -> attempts seen by the consumer
	consumeErrs  []string
	stopConsumer func()
	ackErrs      map[string]error
	waitErr      error

	// contenders and the monitor
	bg      context.Context
	stopBg  context.CancelFunc
	bgWG    sync.WaitGroup
	samples int

	// the producer
	pq           *Queue
	produced     []string // ids whose Enqueue succeeded
	produceErrs  int
	stopProducer context.CancelFunc
	producer     sync.WaitGroup
	vanished     []string // acknowledged, yet not on the new master

	failAt time.Time
}

// newFailoverRun makes the following clients and the two Lockers.
func newFailoverRun(t *testing.T, fc failoverCase) *failoverRun {
	r := &failoverRun{t: t, fc: fc, ctx: context.Background(), prefix: uniq(t),
		byKey: map[string][]*foHolder{}, handled: map[string][]int{}, ackErrs: map[string]error{}}
	r.fol = r.client()
	r.holders = NewLocker(r.fol, WithPrefix(r.prefix))
	r.later(func() { r.holders.Close() })
	r.contender = NewLocker(r.client(), WithPrefix(r.prefix))
	r.later(func() { r.contender.Close() })
	return r
}

// client returns a new client that follows a failover.
func (r *failoverRun) client() redis.UniversalClient {
	c := r.fc.client()
	r.following = append(r.following, c)
	return c
}

// later has cleanUp call f, as a defer in runFailover would.
func (r *failoverRun) later(f func()) { r.deferred = append(r.deferred, f) }

func (r *failoverRun) cleanUp() {
	for _, f := range slices.Backward(r.deferred) {
		f()
	}
}

// track records a holder of key and when its Lost closes.
func (r *failoverRun) track(key string, h *foHolder) {
	r.mu.Lock()
	r.byKey[key] = append(r.byKey[key], h)
	r.mu.Unlock()
	r.watch.Go(func() {
		<-h.lk.Lost()
		r.mu.Lock()
		h.lostAt = time.Now()
		r.mu.Unlock()
	})
}

// holdLocks takes the three locks: with a long and a short lease through
// a following client, and with a long lease through a client with default
// options (or, without one, a middling lease through a following client).
func (r *failoverRun) holdLocks() {
	type spec struct {
		l    *Locker
		ttl  time.Duration
		what string
	}
	specs := []spec{{r.holders, foLongTTL, "8s lease, following client"}, {r.holders, foShortTTL, "1s lease, following client"}}
	if r.fc.stale != nil {
		stale := NewLocker(r.fc.stale(), WithPrefix(r.prefix))
		r.later(func() { stale.Close() })
		specs = append(specs, spec{stale, foLongTTL, "8s lease, client with default options"})
	} else {
		specs = append(specs, spec{r.holders, 3 * time.Second, "3s lease, following client"})
	}
	for i, s := range specs {
		lk, err := s.l.TryObtain(r.ctx, r.fc.keys[i], WithTTL(s.ttl))
		require.NoError(r.t, err)
		r.track(r.fc.keys[i], &foHolder{what: s.what, lk: lk, gotAt: time.Now()})
	}
}

// startQueue fills the queue: 20 messages, 6 claimed by hand, a consumer
// working on the others when the master fails; then every write so far
// is replicated.
func (r *failoverRun) startQueue() {
	t, ctx := r.t, r.ctx
	r.q = NewQueue(r.fol, r.fc.queues[0], WithPrefix(r.prefix), WithLease(foLease))
	var payloads [][]byte
	for i := range 20 {
		payloads = append(payloads, []byte(fmt.Sprint("m", i)))
	}
	var err error
	r.ids, err = r.q.EnqueueBatch(ctx, payloads)
	require.NoError(t, err)
	for range 6 {
		m, err := r.q.Claim(ctx)
		require.NoError(t, err)
		r.manual = append(r.manual, m)
	}
	cq := NewQueue(r.client(), r.fc.queues[0], WithPrefix(r.prefix), WithLease(2*time.Second))
	cctx, stopConsume := context.WithCancel(ctx)
	consumed := make(chan error, 1)
	go func() {
		consumed <- cq.Consume(cctx, func(hctx context.Context, m *Message) error {
			r.mu.Lock()
			r.handled[m.ID] = append(r.handled[m.ID], m.Attempt)
			r.mu.Unlock()
			select {
			case <-time.After(300 * time.Millisecond):
				return nil
			case <-hctx.Done():
				return context.Cause(hctx)
			}
		}, WithConcurrency(2), WithErrorHandler(func(err error) {
			r.mu.Lock()
			r.consumeErrs = append(r.consumeErrs, err.Error())
			r.mu.Unlock()
		}))
	}()
	r.stopConsumer = sync.OnceFunc(func() { stopConsume(); <-consumed })
	r.later(r.stopConsumer)
	redistest.Eventually(t, 5*time.Second, "the consumer at work", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.handled) >= 2
	})
	if err := r.fc.replicate(ctx); err != nil {
		t.Fatalf("replicating before the failure: %v", err)
	}
}

// valid describes the holders of key whose Lost is open and whose TTL() >
// 0, asked through each holder's own client.
func (r *failoverRun) valid(key string) []string {
	r.mu.Lock()
	hs := append([]*foHolder(nil), r.byKey[key]...)
	r.mu.Unlock()
	var v []string
	for _, h := range hs {
		if isClosed(h.lk.Lost()) {
			continue
		}
		tctx, cancel := context.WithTimeout(r.bg, 300*time.Millisecond)
		d, err := h.lk.TTL(tctx)
		cancel()
		if err == nil && d > 0 && !isClosed(h.lk.Lost()) {
			v = append(v, fmt.Sprintf("%s (TTL %v)", h.what, d))
		}
	}
	return v
}

// checkHolders records a violation if two holders of key are valid, and
// still are a moment later: while clients switch masters one at a time,
// two of them can briefly talk to different masters.
func (r *failoverRun) checkHolders(key string) {
	if len(r.valid(key)) < 2 {
		return
	}
	time.Sleep(100 * time.Millisecond)
	v := r.valid(key)
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(v) > 1 {
		r.violations = append(r.violations, fmt.Sprintf("%s: %d holders with Lost open and a lease: %v", key, len(v), v))
	} else {
		r.transient++
	}
}

// contend starts contenders that try to take every lock over, and a
// monitor that samples who holds.
func (r *failoverRun) contend() {
	r.bg, r.stopBg = context.WithCancel(r.ctx)
	r.later(func() { r.stopBg(); r.bgWG.Wait() })
	for _, key := range r.fc.keys {
		r.bgWG.Go(func() {
			for range 2000 { // 50ms apart: bounded well past the scenario
				actx, cancel := context.WithTimeout(r.bg, time.Second)
				lk, err := r.contender.TryObtain(actx, key, WithTTL(foLongTTL))
				cancel()
				if err == nil {
					r.track(key, &foHolder{what: "contender", lk: lk, gotAt: time.Now()})
					r.checkHolders(key) // the moment of the take-over
					return
				}
				select {
				case <-r.bg.Done():
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		})
	}
	r.bgWG.Go(func() {
		for r.bg.Err() == nil {
			for _, key := range r.fc.keys {
				r.checkHolders(key)
			}
			r.samples++
			select {
			case <-r.bg.Done():
			case <-time.After(25 * time.Millisecond):
			}
		}
	})
}

// produce starts a producer that enqueues every 10ms into the other
// queue, through the failure, until failOver stops it.
func (r *failoverRun) produce() {
	r.pq = NewQueue(r.fol, r.fc.queues[1], WithPrefix(r.prefix))
	pctx, stop := context.WithCancel(r.ctx)
	r.stopProducer = stop
	r.later(func() { r.stopProducer(); r.producer.Wait() })
	r.producer.Go(func() {
		for i := 0; i < 3000 && pctx.Err() == nil; i++ {
			ectx, cancel := context.WithTimeout(pctx, 300*time.Millisecond)
			id, err := r.pq.Enqueue(ectx, []byte(fmt.Sprint("p", i)))
			cancel()
			if err == nil {
				r.produced = append(r.produced, id)
			} else if pctx.Err() == nil {
				r.produceErrs++
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	time.Sleep(100 * time.Millisecond)
}

// failOver fails the master, waits until the replica is promoted and
// every following client uses it, stops the producer shortly after, and
// finds the acknowledged enqueues missing on the new master.
func (r *failoverRun) failOver() {
	t, ctx, fc := r.t, r.ctx, r.fc
	r.failAt = time.Now()
	fc.fail()
	if err := redistest.Poll(15*time.Second, fc.promoted); err != nil {
		t.Fatalf("replica not promoted: %v", err)
	}
	r.res.promoted = time.Since(r.failAt)
	if err := redistest.Poll(15*time.Second, func() error {
		for _, c := range r.following {
			wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			err := fc.switched(wctx, c)
			cancel()
			if err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("clients not on the new master: %v", err)
	}
	r.res.recovered = time.Since(r.failAt)
	time.Sleep(300 * time.Millisecond)
	r.stopProducer()
	r.producer.Wait()
	for _, id := range r.produced {
		ok, err := r.fol.HExists(ctx, r.pq.shards[0].messages, "p"+id).Result()
		require.NoError(t, err)
		if !ok {
			r.vanished = append(r.vanished, id)
		}
	}
}

// ackAndDrain acks three manual claims (the other three were "crashed"),
// then waits until every lease not renewed has ended, foLongTTL after the
// failure, and every message has been handled; waitErr says if not.
func (r *failoverRun) ackAndDrain() {
	ctx := r.ctx
	for _, m := range r.manual[:3] {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		r.ackErrs[m.ID] = m.Ack(actx)
		cancel()
	}
	r.waitErr = redistest.Poll(30*time.Second, func() error {
		if time.Since(r.failAt) < foLongTTL+time.Second {
			return errors.New("leases may still run")
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, id := range r.ids {
			if err, acked := r.ackErrs[id]; len(r.handled[id]) == 0 && (!acked || err != nil) {
				return fmt.Errorf("message %s not handled", id)
			}
		}
		s, err := r.q.Stats(ctx)
		if err == nil && s.depth() != (Stats{}) {
			err = fmt.Errorf("queue not empty: %+v", s)
		}
		return err
	})
}

// releaseAndTakeOver checks that a holder that still believes has a lease
// on the new master; then the original holders let go, contenders take
// what they did not have, and everything in the background stops.
func (r *failoverRun) releaseAndTakeOver() {
	t, ctx := r.t, r.ctx
	for _, key := range r.fc.keys {
		r.mu.Lock()
		h := r.byKey[key][0]
		r.mu.Unlock()
		if !isClosed(h.lk.Lost()) {
			tctx, cancel := context.WithTimeout(ctx, time.Second)
			d, err := h.lk.TTL(tctx)
			cancel()
			if err != nil || d <= 0 {
				t.Errorf("lock %s: its holder (%s) has Lost open but TTL %v %v", key, h.what, d, err)
			}
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		_ = h.lk.Release(rctx)
		cancel()
	}
	redistest.Eventually(t, 5*time.Second, "contenders holding every lock", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, key := range r.fc.keys {
			if len(r.byKey[key]) < 2 {
				return false
			}
		}
		return true
	})
	r.stopBg()
	r.bgWG.Wait()
	r.stopConsumer()
	r.mu.Lock()
	var taken []*Lock
	for _, hs := range r.byKey {
		for _, h := range hs[1:] {
			taken = append(taken, h.lk)
		}
	}
	r.mu.Unlock()
	for _, lk := range taken {
		_ = lk.Release(ctx)
	}
	r.watch.Wait()
}

// rel says when at was, relative to the failure.
func (r *failoverRun) rel(at time.Time) string {
	if at.IsZero() {
		return "never"
	}
	return fmt.Sprintf("%+.2fs", at.Sub(r.failAt).Seconds())
}

// checkLocks reports the producer and each lock's story, and checks that
// no holder was overtaken while it kept its lease, that every contender's
// fence is higher, and that the monitor saw no lasting double holder.
func (r *failoverRun) checkLocks() {
	t := r.t
	t.Logf("producer from 0.1s before the failure to 0.3s after the switch: %d enqueues acknowledged, %d failed with an error, %d acknowledged but not on the new master",
		len(r.produced), r.produceErrs, len(r.vanished))
	r.mu.Lock()
	defer r.mu.Unlock()
	t.Logf("failure at 0s: replica promoted at %+.2fs, following clients on the new master at %+.2fs",
		r.res.promoted.Seconds(), r.res.recovered.Seconds())
	for _, key := range r.fc.keys {
		hs := r.byKey[key]
		old, next := hs[0], hs[1]
		outcome := "kept its lease through the failover"
		if old.lk.Err() != nil {
			outcome = fmt.Sprintf("saw Lost at %s (%v)", r.rel(old.lostAt), old.lk.Err())
		} else if next.gotAt.Before(old.lostAt) {
			t.Errorf("lock %s: taken over at %s while its holder kept the lease", key, r.rel(next.gotAt))
		}
		t.Logf("lock %s, %s: %s; contender took it at %s", key, old.what, outcome, r.rel(next.gotAt))
		if next.lk.Fence() <= old.lk.Fence() {
			t.Errorf("lock %s: contender's fence %d after %d", key, next.lk.Fence(), old.lk.Fence())
		}
		if old.lk.Err() != nil && old.lostAt.After(next.gotAt) {
			r.notes = append(r.notes, fmt.Sprintf("lock %s: the contender got it %.0fms before the old holder's Lost closed", key, old.lostAt.Sub(next.gotAt).Seconds()*1000))
		}
	}
	for _, v := range r.violations {
		t.Error(v)
	}
	t.Logf("holder invariant sampled %d times and at each take-over: %d violations, %d transient (gone 100ms later)", r.samples, len(r.violations), r.transient)
	for _, n := range r.notes {
		t.Log(n)
	}
}

// checkQueue checks that every message was handled and the queue is
// empty, that an acked claim was not delivered again and an unacked one
// was (its stale ack then fails with ErrNotHeld), and that nothing was
// dead-lettered.
func (r *failoverRun) checkQueue() {
	t, ctx := r.t, r.ctx
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.waitErr != nil {
		t.Errorf("queue after the failover: %v", r.waitErr)
	}
	redelivered := 0
	for i, m := range r.manual {
		attempts := r.handled[m.ID]
		switch {
		case i < 3 && r.ackErrs[m.ID] == nil && len(attempts) > 0:
			t.Errorf("message %s acked after the failover, then delivered again (attempts %v)", m.ID, attempts)
		case i < 3 && r.ackErrs[m.ID] != nil && (len(attempts) == 0 || attempts[0] < 2):
			t.Errorf("message %s: ack after the failover failed (%v), and it was not delivered again (attempts %v)", m.ID, r.ackErrs[m.ID], attempts)
		case i >= 3 && (len(attempts) == 0 || attempts[0] < 2):
			t.Errorf("message %s, claimed and dropped before the failure, was not delivered again (attempts %v)", m.ID, attempts)
		}
		if i >= 3 {
			redelivered++
			if err := m.Ack(ctx); !errors.Is(err, ErrNotHeld) {
				t.Errorf("stale ack of %s: %v, want ErrNotHeld", m.ID, err)
			}
		}
	}
	twice := 0
	for _, id := range r.ids {
		if len(r.handled[id]) > 1 {
			twice++
		}
	}
	acked := 0
	for _, err := range r.ackErrs {
		if err == nil {
			acked++
		}
	}
	if dead, err := r.q.DeadLetters(ctx, 10); err != nil || len(dead) != 0 {
		t.Errorf("dead letters %v %v", dead, err)
	}
	t.Logf("queue: %d messages; %d claims acked after the failover, %d dropped claims delivered again, %d messages handled more than once by the consumer; %d consumer errors%s",
		len(r.ids), acked, redelivered, twice, len(r.consumeErrs), firstErrs(r.consumeErrs))
}

// firstErrs summarises a few distinct error messages.
func firstErrs(errs []string) string {
	seen := map[string]bool{}
	var out []string
	for _, e := range errs {
		if len(e) > 120 {
			e = e[:120] + "…"
		}
		if !seen[e] && len(out) < 3 {
			seen[e] = true
			out = append(out, e)
		}
	}
	if len(out) == 0 {
		return ""
	}
	return ", e.g. " + strings.Join(out, "; ")
}
