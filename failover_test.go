package redlease

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

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
func runFailover(t *testing.T, fc failoverCase) failoverResult {
	ctx := context.Background()
	prefix := uniq(t)
	var res failoverResult
	var following []redis.UniversalClient
	client := func() redis.UniversalClient {
		c := fc.client()
		following = append(following, c)
		return c
	}
	fol := client()
	holders := NewLocker(fol, WithPrefix(prefix))
	defer holders.Close()
	contender := NewLocker(client(), WithPrefix(prefix))
	defer contender.Close()

	var mu sync.Mutex // guards byKey, its holders, violations, notes, transient
	byKey := map[string][]*foHolder{}
	var violations, notes []string
	transient := 0
	var watch sync.WaitGroup
	track := func(key string, h *foHolder) {
		mu.Lock()
		byKey[key] = append(byKey[key], h)
		mu.Unlock()
		watch.Go(func() {
			<-h.lk.Lost()
			mu.Lock()
			h.lostAt = time.Now()
			mu.Unlock()
		})
	}
	type spec struct {
		l    *Locker
		ttl  time.Duration
		what string
	}
	specs := []spec{{holders, foLongTTL, "8s lease, following client"}, {holders, foShortTTL, "1s lease, following client"}}
	if fc.stale != nil {
		stale := NewLocker(fc.stale(), WithPrefix(prefix))
		defer stale.Close()
		specs = append(specs, spec{stale, foLongTTL, "8s lease, client with default options"})
	} else {
		specs = append(specs, spec{holders, 3 * time.Second, "3s lease, following client"})
	}
	for i, s := range specs {
		lk, err := s.l.TryObtain(ctx, fc.keys[i], WithTTL(s.ttl))
		if err != nil {
			t.Fatal(err)
		}
		track(fc.keys[i], &foHolder{what: s.what, lk: lk, gotAt: time.Now()})
	}

	// The queue: 20 messages, 6 claimed by hand, a consumer working on the
	// others when the master fails.
	q := NewQueue(fol, fc.queues[0], WithPrefix(prefix), WithLease(foLease))
	var payloads [][]byte
	for i := range 20 {
		payloads = append(payloads, []byte(fmt.Sprint("m", i)))
	}
	ids, err := q.EnqueueBatch(ctx, payloads)
	if err != nil {
		t.Fatal(err)
	}
	var manual []*Message
	for range 6 {
		m, err := q.Claim(ctx)
		if err != nil {
			t.Fatal(err)
		}
		manual = append(manual, m)
	}
	handled := map[string][]int{} // id -> attempts seen by the consumer
	var consumeErrs []string
	cq := NewQueue(client(), fc.queues[0], WithPrefix(prefix), WithLease(2*time.Second))
	cctx, stopConsume := context.WithCancel(ctx)
	consumed := make(chan error, 1)
	go func() {
		consumed <- cq.Consume(cctx, func(hctx context.Context, m *Message) error {
			mu.Lock()
			handled[m.ID] = append(handled[m.ID], m.Attempt)
			mu.Unlock()
			select {
			case <-time.After(300 * time.Millisecond):
				return nil
			case <-hctx.Done():
				return context.Cause(hctx)
			}
		}, WithConcurrency(2), WithErrorHandler(func(err error) {
			mu.Lock()
			consumeErrs = append(consumeErrs, err.Error())
			mu.Unlock()
		}))
	}()
	stopConsumer := sync.OnceFunc(func() { stopConsume(); <-consumed })
	defer stopConsumer()
	redistest.Eventually(t, 5*time.Second, "the consumer at work", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled) >= 2
	})
	if err := fc.replicate(ctx); err != nil {
		t.Fatalf("replicating before the failure: %v", err)
	}

	// Contenders try to take every lock over; a monitor samples who holds.
	bg, stopBg := context.WithCancel(ctx)
	var bgWG sync.WaitGroup
	defer func() { stopBg(); bgWG.Wait() }()
	// valid describes the holders of key whose Lost is open and whose
	// TTL() > 0, asked through each holder's own client.
	valid := func(key string) []string {
		mu.Lock()
		hs := append([]*foHolder(nil), byKey[key]...)
		mu.Unlock()
		var v []string
		for _, h := range hs {
			if isClosed(h.lk.Lost()) {
				continue
			}
			tctx, cancel := context.WithTimeout(bg, 300*time.Millisecond)
			d, err := h.lk.TTL(tctx)
			cancel()
			if err == nil && d > 0 && !isClosed(h.lk.Lost()) {
				v = append(v, fmt.Sprintf("%s (TTL %v)", h.what, d))
			}
		}
		return v
	}
	// checkHolders records a violation if two holders of key are valid,
	// and still are a moment later: while clients switch masters one at a
	// time, two of them can briefly talk to different masters.
	checkHolders := func(key string) {
		if len(valid(key)) < 2 {
			return
		}
		time.Sleep(100 * time.Millisecond)
		v := valid(key)
		mu.Lock()
		defer mu.Unlock()
		if len(v) > 1 {
			violations = append(violations, fmt.Sprintf("%s: %d holders with Lost open and a lease: %v", key, len(v), v))
		} else {
			transient++
		}
	}
	for _, key := range fc.keys {
		bgWG.Go(func() {
			for range 2000 { // 50ms apart: bounded well past the scenario
				actx, cancel := context.WithTimeout(bg, time.Second)
				lk, err := contender.TryObtain(actx, key, WithTTL(foLongTTL))
				cancel()
				if err == nil {
					track(key, &foHolder{what: "contender", lk: lk, gotAt: time.Now()})
					checkHolders(key) // the moment of the take-over
					return
				}
				select {
				case <-bg.Done():
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		})
	}
	samples := 0
	bgWG.Go(func() {
		for bg.Err() == nil {
			for _, key := range fc.keys {
				checkHolders(key)
			}
			samples++
			select {
			case <-bg.Done():
			case <-time.After(25 * time.Millisecond):
			}
		}
	})

	// A producer enqueues every 10ms into the other queue, through the
	// failure, until shortly after the clients have switched.
	pq := NewQueue(fol, fc.queues[1], WithPrefix(prefix))
	var produced []string // ids whose Enqueue succeeded
	produceErrs := 0
	pctx, stopProducer := context.WithCancel(ctx)
	var producer sync.WaitGroup
	defer func() { stopProducer(); producer.Wait() }()
	producer.Go(func() {
		for i := 0; i < 3000 && pctx.Err() == nil; i++ {
			ectx, cancel := context.WithTimeout(pctx, 300*time.Millisecond)
			id, err := pq.Enqueue(ectx, []byte(fmt.Sprint("p", i)))
			cancel()
			if err == nil {
				produced = append(produced, id)
			} else if pctx.Err() == nil {
				produceErrs++
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	time.Sleep(100 * time.Millisecond)

	failAt := time.Now()
	fc.fail()
	if err := redistest.Poll(15*time.Second, fc.promoted); err != nil {
		t.Fatalf("replica not promoted: %v", err)
	}
	res.promoted = time.Since(failAt)
	if err := redistest.Poll(15*time.Second, func() error {
		for _, c := range following {
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
	res.recovered = time.Since(failAt)
	time.Sleep(300 * time.Millisecond)
	stopProducer()
	producer.Wait()
	var vanished []string // acknowledged, yet not on the new master
	for _, id := range produced {
		if ok, err := fol.HExists(ctx, pq.shards[0][3], "p"+id).Result(); err != nil {
			t.Fatal(err)
		} else if !ok {
			vanished = append(vanished, id)
		}
	}

	// Three manual claims are acked now; the other three were "crashed".
	ackErrs := map[string]error{}
	for _, m := range manual[:3] {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		ackErrs[m.ID] = m.Ack(actx)
		cancel()
	}

	// Every lease not renewed has ended by foLongTTL after the failure,
	// and every message must be handled.
	waitErr := redistest.Poll(30*time.Second, func() error {
		if time.Since(failAt) < foLongTTL+time.Second {
			return errors.New("leases may still run")
		}
		mu.Lock()
		defer mu.Unlock()
		for _, id := range ids {
			if err, acked := ackErrs[id]; len(handled[id]) == 0 && (!acked || err != nil) {
				return fmt.Errorf("message %s not handled", id)
			}
		}
		s, err := q.Stats(ctx)
		if err == nil && s != (Stats{}) {
			err = fmt.Errorf("queue not empty: %+v", s)
		}
		return err
	})

	// A holder that still believes must have a lease on the new master.
	// Then the original holders let go, and contenders take what they did
	// not have.
	for _, key := range fc.keys {
		mu.Lock()
		h := byKey[key][0]
		mu.Unlock()
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
		mu.Lock()
		defer mu.Unlock()
		for _, key := range fc.keys {
			if len(byKey[key]) < 2 {
				return false
			}
		}
		return true
	})
	stopBg()
	bgWG.Wait()
	stopConsumer()
	mu.Lock()
	var taken []*Lock
	for _, hs := range byKey {
		for _, h := range hs[1:] {
			taken = append(taken, h.lk)
		}
	}
	mu.Unlock()
	for _, lk := range taken {
		_ = lk.Release(ctx)
	}
	watch.Wait()

	t.Logf("producer from 0.1s before the failure to 0.3s after the switch: %d enqueues acknowledged, %d failed with an error, %d acknowledged but not on the new master",
		len(produced), produceErrs, len(vanished))
	mu.Lock()
	defer mu.Unlock()
	rel := func(at time.Time) string {
		if at.IsZero() {
			return "never"
		}
		return fmt.Sprintf("%+.2fs", at.Sub(failAt).Seconds())
	}
	t.Logf("failure at 0s: replica promoted at %+.2fs, following clients on the new master at %+.2fs",
		res.promoted.Seconds(), res.recovered.Seconds())
	for _, key := range fc.keys {
		hs := byKey[key]
		old, next := hs[0], hs[1]
		outcome := "kept its lease through the failover"
		if old.lk.Err() != nil {
			outcome = fmt.Sprintf("saw Lost at %s (%v)", rel(old.lostAt), old.lk.Err())
		} else if next.gotAt.Before(old.lostAt) {
			t.Errorf("lock %s: taken over at %s while its holder kept the lease", key, rel(next.gotAt))
		}
		t.Logf("lock %s, %s: %s; contender took it at %s", key, old.what, outcome, rel(next.gotAt))
		if next.lk.Fence() <= old.lk.Fence() {
			t.Errorf("lock %s: contender's fence %d after %d", key, next.lk.Fence(), old.lk.Fence())
		}
		if old.lk.Err() != nil && old.lostAt.After(next.gotAt) {
			notes = append(notes, fmt.Sprintf("lock %s: the contender got it %.0fms before the old holder's Lost closed", key, old.lostAt.Sub(next.gotAt).Seconds()*1000))
		}
	}
	for _, v := range violations {
		t.Error(v)
	}
	t.Logf("holder invariant sampled %d times and at each take-over: %d violations, %d transient (gone 100ms later)", samples, len(violations), transient)
	for _, n := range notes {
		t.Log(n)
	}

	if waitErr != nil {
		t.Errorf("queue after the failover: %v", waitErr)
	}
	redelivered := 0
	for i, m := range manual {
		attempts := handled[m.ID]
		switch {
		case i < 3 && ackErrs[m.ID] == nil && len(attempts) > 0:
			t.Errorf("message %s acked after the failover, then delivered again (attempts %v)", m.ID, attempts)
		case i < 3 && ackErrs[m.ID] != nil && (len(attempts) == 0 || attempts[0] < 2):
			t.Errorf("message %s: ack after the failover failed (%v), and it was not delivered again (attempts %v)", m.ID, ackErrs[m.ID], attempts)
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
	for _, id := range ids {
		if len(handled[id]) > 1 {
			twice++
		}
	}
	acked := 0
	for _, err := range ackErrs {
		if err == nil {
			acked++
		}
	}
	if dead, err := q.DeadLetters(ctx, 10); err != nil || len(dead) != 0 {
		t.Errorf("dead letters %v %v", dead, err)
	}
	t.Logf("queue: %d messages; %d claims acked after the failover, %d dropped claims delivered again, %d messages handled more than once by the consumer; %d consumer errors%s",
		len(ids), acked, redelivered, twice, len(consumeErrs), firstErrs(consumeErrs))
	return res
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
