package redlease

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
)

// NewQuorumLocker returns a Locker whose leases live on a majority of
// independent Redis masters (the Redlock scheme), so a lock survives the
// loss of a minority of them. It has the same API as a single-instance
// Locker:
//
//   - Obtain succeeds when the acquire script succeeded on a majority
//     within the lease's validity (the TTL less the time the round took and
//     an allowance for clock drift); each node gets a small fraction of the
//     TTL to answer. A failed round is released everywhere.
//   - Fence is the largest of the nodes' fences, and every counter in the
//     winning majority is raised to it, so fences still only grow.
//   - Release, Refresh and the watchdog act on every node; the lease stands
//     while a majority holds it, and Lost closes when that is no longer
//     possible.
//
// Each client must reach a different node: the same client twice, or two
// *redis.Client with the same address and DB, is an error that errors.Is
// ErrInvalidArgument (one node would count twice towards a majority).
//
// Waiters are woken through a subscription on the first node, and fall
// back to timed retries while it is down. Quorum locking costs a round
// trip to every node per operation, and it does not make Redis a
// consensus system: pauses and clock jumps still call for fencing at the
// resource (see the README).
func NewQuorumLocker(clients []redis.UniversalClient, opts ...Option) *Locker {
	var first redis.UniversalClient
	if len(clients) > 0 {
		first = clients[0]
	}
	l := NewLocker(first, opts...)
	if len(clients) == 0 {
		l.err = fmt.Errorf("%w: a quorum locker needs at least one client", ErrInvalidArgument)
		return l
	}
	for i, c := range clients {
		if err := checkClient(c); err != nil {
			l.err = fmt.Errorf("client %d: %w", i, err)
			return l
		}
		if _, ok := c.(*redis.Client); !ok {
			l.slots = hashTag
		}
		for j := range i {
			if sameNode(clients[j], c) {
				l.err = fmt.Errorf("%w: clients %d and %d reach the same node", ErrInvalidArgument, j, i)
				return l
			}
		}
	}
	l.nodes = slices.Clone(clients)
	return l
}

// failoverAddr is the Addr every Sentinel (failover) client reports.
const failoverAddr = "FailoverClient"

// sameNode reports whether a and b are the same client, or two
// *redis.Client on the same address and DB. Other aliases of one server
// (localhost and 127.0.0.1, say) are not detected.
func sameNode(a, b redis.UniversalClient) bool {
	if ca, ok := a.(*redis.Client); ok {
		if cb, ok := b.(*redis.Client); ok {
			oa, ob := ca.Options(), cb.Options()
			return ca == cb || (oa.Addr == ob.Addr && oa.Addr != failoverAddr && oa.DB == ob.DB)
		}
	}
	ta, tb := reflect.TypeOf(a), reflect.TypeOf(b)
	return ta == tb && ta.Comparable() && a == b
}

// quorum is how many nodes make a majority.
func (l *Locker) quorum() int { return len(l.nodes)/2 + 1 }

// nodeLimit is how long one node may take to answer: a small fraction of
// the lease, so that a slow node cannot eat the validity of a round.
func nodeLimit(ttl time.Duration) time.Duration {
	return min(max(ttl/10, 10*time.Millisecond), time.Second)
}

var errNodeTimeout = errors.New("node did not answer in time")

// answer is one node's reply: a code or value, or an error.
type answer struct {
	ok  bool
	n   int64
	err error
}

// fanOut runs f on every node at once and waits for their answers, at most
// limit; a node that has not answered by then counts as failed.
//
// It does not wait for late nodes, so Close returns at once even with a
// call in flight on a dead link. Every goroutine it starts still ends by
// itself: it sends once on a buffered channel, after one script call
// (EVALSHA, and EVAL on NOSCRIPT), which go-redis ends within the client's
// pool, dial, read and write timeouts and retries, or sooner if ctx ends.
// A late call is let run rather than cancelled, so that a late release
// still frees its node.
func (l *Locker) fanOut(ctx context.Context, limit time.Duration, f func(ctx context.Context, c redis.UniversalClient) answer) []answer {
	out := make([]answer, len(l.nodes))
	for i := range out {
		out[i].err = errNodeTimeout
	}
	type reply struct {
		i int
		a answer
	}
	replies := make(chan reply, len(l.nodes)) // late repliers never block
	for i, c := range l.nodes {
		go func() { replies <- reply{i, f(ctx, c)} }()
	}
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for range l.nodes {
		select {
		case r := <-replies:
			out[r.i] = r.a
		case <-timer.C:
			return out
		}
	}
	return out
}

func (l *Locker) acquireQuorum(ctx context.Context, lk *Lock, start time.Time) (bool, int64, error) {
	answers := l.fanOut(ctx, nodeLimit(lk.ttl), func(ctx context.Context, c redis.UniversalClient) answer {
		ok, n, err := acquireOn(ctx, c, lk)
		return answer{ok, n, err}
	})
	var won []int
	var fence int64
	var waits []int64
	var firstErr error
	for i, a := range answers {
		switch {
		case a.err != nil:
			firstErr = cmpErr(firstErr, a.err)
		case a.ok:
			won = append(won, i)
			fence = max(fence, a.n)
		default:
			waits = append(waits, max(a.n, 0))
		}
	}
	validity := lk.ttl - time.Since(start) - drift(lk.ttl)
	if len(won) >= l.quorum() && validity > 0 && l.raiseFences(ctx, lk, won, answers, fence) {
		return true, fence, nil
	}
	// Give back what this round took, on every node: a reply may have been lost.
	l.fanOut(context.WithoutCancel(ctx), nodeLimit(lk.ttl), func(ctx context.Context, c redis.UniversalClient) answer {
		code, err := l.releaseOn(ctx, c, &lk.lease)
		return answer{code == 1, code, err}
	})
	if len(won)+len(waits) < l.quorum() && firstErr != nil {
		return false, 0, fmt.Errorf("a majority of %d nodes did not answer: %w", len(l.nodes), firstErr)
	}
	// The lock can be free once enough holders' leases have ended.
	slices.Sort(waits)
	need := l.quorum() - len(won)
	if need >= 1 && need <= len(waits) {
		return false, waits[need-1], nil
	}
	return false, 0, nil
}

// raiseFences lifts the counters of the winning nodes to fence, so that
// any later majority, which shares a node with this one, counts on from
// above it. The counters are per slot, shared with other names: raising
// one only makes it larger, which keeps their fences increasing too. It
// reports whether a majority of counters now stand at fence.
func (l *Locker) raiseFences(ctx context.Context, lk *Lock, won []int, answers []answer, fence int64) bool {
	behind := 0
	for _, i := range won {
		if answers[i].n < fence {
			behind++
		}
	}
	if behind == 0 {
		return true
	}
	raised := l.fanOut(ctx, nodeLimit(lk.ttl), func(ctx context.Context, c redis.UniversalClient) answer {
		n, err := fenceScript.Run(ctx, c, []string{lk.fkey}, fence).Int64()
		return answer{n >= fence, n, err}
	})
	high := 0
	for _, i := range won {
		if raised[i].err == nil && raised[i].ok {
			high++
		}
	}
	return high >= l.quorum()
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// tally turns per-node codes (1 ours, 0 gone, -1 another's) into one: 1 if
// a majority is ours, 0 or -1 if a majority can no longer be, and an error
// if the nodes that failed to answer leave it open.
func (l *Locker) tally(answers []answer) (int64, error) {
	ours, gone, taken := 0, 0, 0
	var firstErr error
	for _, a := range answers {
		switch {
		case a.err != nil:
			firstErr = cmpErr(firstErr, a.err)
		case a.n == 1:
			ours++
		case a.n == -1:
			taken++
		default:
			gone++
		}
	}
	switch {
	case ours >= l.quorum():
		return 1, nil
	case gone+taken > len(l.nodes)-l.quorum():
		if taken > 0 {
			return -1, nil
		}
		return 0, nil
	}
	return 0, fmt.Errorf("%d of %d nodes agree, %d needed: %w", ours, len(l.nodes), l.quorum(), firstErr)
}

func (l *Locker) releaseQuorum(ctx context.Context, ls *lease) (int64, error) {
	return l.tally(l.fanOut(ctx, nodeLimit(ls.ttl), func(ctx context.Context, c redis.UniversalClient) answer {
		code, err := l.releaseOn(ctx, c, ls)
		return answer{err == nil, code, err}
	}))
}

func (l *Locker) renewQuorum(ctx context.Context, ls *lease, ttl time.Duration) (int64, error) {
	return l.tally(l.fanOut(ctx, nodeLimit(ttl), func(ctx context.Context, c redis.UniversalClient) answer {
		code, err := renewOn(ctx, c, ls, ttl)
		return answer{err == nil, code, err}
	}))
}

// pttlQuorum is the time for which a majority still holds the lease.
func (l *Locker) pttlQuorum(ctx context.Context, ls *lease) (int64, error) {
	answers := l.fanOut(ctx, nodeLimit(ls.ttl), func(ctx context.Context, c redis.UniversalClient) answer {
		ms, err := pttlOn(ctx, c, ls)
		return answer{err == nil, ms, err}
	})
	var ms []int64
	var firstErr error
	for _, a := range answers {
		if a.err != nil {
			firstErr = cmpErr(firstErr, a.err)
			a.n = -3
		}
		ms = append(ms, a.n)
	}
	slices.Sort(ms)
	slices.Reverse(ms)
	if v := ms[l.quorum()-1]; v >= 0 || firstErr == nil {
		return v, nil
	}
	return 0, firstErr
}

// renewLocksQuorum renews a batch on every node and tallies each lease; a
// node that has not answered within the limit counts as failed. Its
// goroutines end by themselves, as fanOut's do.
func (l *Locker) renewLocksQuorum(ctx context.Context, batch []renewal) ([]int64, []error) {
	type reply struct {
		i       int
		answers []answer
	}
	replies := make(chan reply, len(l.nodes))
	for i, c := range l.nodes {
		go func() {
			codes, errs := l.renewLocksOn(ctx, c, batch)
			out := make([]answer, len(batch))
			for j := range batch {
				out[j] = answer{errs[j] == nil, codes[j], errs[j]}
			}
			replies <- reply{i, out}
		}()
	}
	perNode := make([][]answer, len(l.nodes))
	timer := time.NewTimer(nodeLimit(batch[0].ttl))
	defer timer.Stop()
collect:
	for range l.nodes {
		select {
		case r := <-replies:
			perNode[r.i] = r.answers
		case <-timer.C:
			break collect
		}
	}
	codes := make([]int64, len(batch))
	errs := make([]error, len(batch))
	for j := range batch {
		answers := make([]answer, len(l.nodes))
		for i := range l.nodes {
			if perNode[i] == nil {
				answers[i] = answer{err: errNodeTimeout}
			} else {
				answers[i] = perNode[i][j]
			}
		}
		codes[j], errs[j] = l.tally(answers)
	}
	return codes, errs
}

// acquireAcked acquires and then runs WAIT on the same connection, in one
// round trip; too few acknowledgements give the lease back.
func (l *Locker) acquireAcked(ctx context.Context, lk *Lock) (bool, int64, error) {
	c, err := l.connFor(ctx, lk.rkey)
	if err != nil {
		return false, 0, err
	}
	keys := []string{lk.rkey, lk.fkey}
	send := func() (*redis.Cmd, *redis.Cmd) {
		var acq, wait *redis.Cmd
		_, _ = c.Pipelined(ctx, func(p redis.Pipeliner) error {
			acq = acquireScript.EvalSha(ctx, p, keys, lk.token, lk.ttl.Milliseconds())
			wait = p.Do(ctx, "WAIT", lk.replicas, lk.wait.Milliseconds())
			return nil
		})
		return acq, wait
	}
	acq, wait := send()
	if redis.HasErrorPrefix(acq.Err(), "NOSCRIPT") {
		if err := acquireScript.Load(ctx, c).Err(); err != nil {
			return false, 0, err
		}
		acq, wait = send()
	}
	res, err := acq.Int64Slice()
	if err == nil && len(res) != 2 {
		err = fmt.Errorf("unexpected reply %v", res)
	}
	if err != nil {
		return false, 0, err
	}
	if res[0] != 1 {
		return false, res[1], nil
	}
	if acked, err := wait.Int64(); err != nil || acked < int64(lk.replicas) {
		_, _ = l.releaseOn(context.WithoutCancel(ctx), c, &lk.lease)
		if err == nil {
			err = fmt.Errorf("%d of %d replicas acknowledged within %v", acked, lk.replicas, lk.wait)
		}
		return false, 0, fmt.Errorf("%w: %w", ErrNotObtained, err)
	}
	return true, res[1], nil
}

// connFor returns a client whose pipelines reach the master holding key on
// one connection, as WAIT needs.
func (l *Locker) connFor(ctx context.Context, key string) (redis.UniversalClient, error) {
	switch c := l.client.(type) {
	case *redis.Client:
		return c, nil
	case *redis.ClusterClient:
		return c.MasterForKey(ctx, key)
	}
	return nil, fmt.Errorf("%w: WithReplicaAck needs a *redis.Client or *redis.ClusterClient", ErrInvalidArgument)
}
