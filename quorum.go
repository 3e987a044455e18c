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
// WithReplicaAck does not apply.
//
// Waiters do not queue: Obtain tries again when the holder's lease must
// have ended or the retry strategy says so (by default every 16ms, doubling
// up to 1s), so a release reaches the next holder within one such step.
// Quorum locking costs a round trip to every node per
// operation, and it does not make Redis a consensus system: pauses and
// clock jumps still call for fencing at the resource (see the README).
func NewQuorumLocker(clients []redis.UniversalClient, opts ...Option) *Locker {
	var first redis.UniversalClient
	if len(clients) > 0 {
		first = clients[0]
	}
	l := NewLocker(first, opts...)
	l.waits = nil // waiters poll: see the README
	if len(clients) == 0 {
		l.err = fmt.Errorf("%w: a quorum locker needs at least one client", ErrInvalidArgument)
		return l
	}
	q := &quorum{}
	for i, c := range clients {
		if err := checkClient(c); err != nil {
			l.err = fmt.Errorf("client %d: %w", i, err)
			return l
		}
		for j := range i {
			if sameNode(clients[j], c) {
				l.err = fmt.Errorf("%w: clients %d and %d reach the same node", ErrInvalidArgument, j, i)
				return l
			}
		}
		q.nodes = append(q.nodes, newNode(c))
	}
	l.store = q
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

// quorum keeps each lease on a majority of independent nodes.
type quorum struct {
	nodes []*node
}

// majority is how many nodes make a quorum.
func (q *quorum) majority() int { return len(q.nodes)/2 + 1 }

func (q *quorum) check(cfg lockConfig) error {
	if cfg.replicas > 0 {
		return fmt.Errorf("%w: WithReplicaAck does not apply to a quorum Locker", ErrInvalidArgument)
	}
	if cfg.shared {
		return fmt.Errorf("%w: shared leases are not supported by a quorum Locker", ErrInvalidArgument)
	}
	return nil
}

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
// itself: it sends once on a buffered channel, after one script call or
// pipeline (plus SCRIPT LOAD and one resend on NOSCRIPT), which go-redis
// ends within
// the client's pool, dial, read and write timeouts and retries, or sooner
// if ctx ends. A late call is let run rather than cancelled, so that a
// late release still frees its node.
func fanOut[T any](ctx context.Context, q *quorum, limit time.Duration, f func(ctx context.Context, n *node) T, late T) []T {
	out := make([]T, len(q.nodes))
	for i := range out {
		out[i] = late
	}
	type reply struct {
		i int
		v T
	}
	replies := make(chan reply, len(q.nodes)) // late repliers never block
	for i, n := range q.nodes {
		go func() { replies <- reply{i, f(ctx, n)} }()
	}
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for range q.nodes {
		select {
		case r := <-replies:
			out[r.i] = r.v
		case <-timer.C:
			return out
		}
	}
	return out
}

// each runs f on every node as fanOut does, with the lease's node limit.
func (q *quorum) each(ctx context.Context, ttl time.Duration, f func(ctx context.Context, n *node) answer) []answer {
	return fanOut(ctx, q, nodeLimit(ttl), f, answer{err: errNodeTimeout})
}

func (q *quorum) acquire(ctx context.Context, lk *Lock, start time.Time, _ *string) (bool, int64, error) {
	answers := q.each(ctx, lk.ttl, func(ctx context.Context, n *node) answer {
		ok, v, err := n.acquire(ctx, lk, start, nil)
		return answer{ok, v, err}
	})
	var won []int
	var fence int64
	var waits []int64
	var firstErr error
	for i, a := range answers {
		switch {
		case a.err != nil:
			firstErr = firstOf(firstErr, a.err)
		case a.ok:
			won = append(won, i)
			fence = max(fence, a.n)
		default:
			waits = append(waits, max(a.n, 0))
		}
	}
	validity := lk.ttl - time.Since(start) - drift(lk.ttl)
	if len(won) >= q.majority() && validity > 0 && q.raiseFences(ctx, lk, won, answers, fence) {
		return true, fence, nil
	}
	// Give back what this round took, on every node: a reply may have been lost.
	q.each(context.WithoutCancel(ctx), lk.ttl, func(ctx context.Context, n *node) answer {
		code, err := n.release(ctx, lk, nil)
		return answer{code == codeOK, code, err}
	})
	if len(won)+len(waits) < q.majority() && firstErr != nil {
		return false, 0, fmt.Errorf("a majority of %d nodes did not answer: %w", len(q.nodes), firstErr)
	}
	// The lock can be free once enough holders' leases have ended.
	slices.Sort(waits)
	need := q.majority() - len(won)
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
func (q *quorum) raiseFences(ctx context.Context, lk *Lock, won []int, answers []answer, fence int64) bool {
	behind := 0
	for _, i := range won {
		if answers[i].n < fence {
			behind++
		}
	}
	if behind == 0 {
		return true
	}
	raised := q.each(ctx, lk.ttl, func(ctx context.Context, n *node) answer {
		v, err := run(ctx, n.client, fenceScript, lk.keyList[1:2], fence).Int64()
		return answer{v >= fence, v, err}
	})
	high := 0
	for _, i := range won {
		if raised[i].err == nil && raised[i].ok {
			high++
		}
	}
	return high >= q.majority()
}

// firstOf keeps the first error.
func firstOf(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// tally turns per-node codes into one: codeOK if a majority is ours,
// codeGone or codeTaken if a majority can no longer be, and an error if
// the nodes that failed to answer leave it open.
func (q *quorum) tally(answers []answer) (int64, error) {
	ours, gone, taken := 0, 0, 0
	var firstErr error
	for _, a := range answers {
		switch {
		case a.err != nil:
			firstErr = firstOf(firstErr, a.err)
		case a.n == codeOK:
			ours++
		case a.n == codeTaken:
			taken++
		default:
			gone++
		}
	}
	switch {
	case ours >= q.majority():
		return codeOK, nil
	case gone+taken > len(q.nodes)-q.majority():
		if taken > 0 {
			return codeTaken, nil
		}
		return codeGone, nil
	}
	return 0, fmt.Errorf("%d of %d nodes agree, %d needed: %w", ours, len(q.nodes), q.majority(), firstErr)
}

// codeAnswer wraps one node's code for tally.
func codeAnswer(code int64, err error) answer { return answer{err == nil, code, err} }

func (q *quorum) release(ctx context.Context, lk *Lock, _ *string) (int64, error) {
	return q.tally(q.each(ctx, lk.ttl, func(ctx context.Context, n *node) answer {
		return codeAnswer(n.release(ctx, lk, nil))
	}))
}

func (q *quorum) renew(ctx context.Context, ls *lease, ttl time.Duration) (int64, error) {
	return q.tally(q.each(ctx, ttl, func(ctx context.Context, n *node) answer {
		return codeAnswer(n.renew(ctx, ls, ttl))
	}))
}

// pttl is the time for which a majority still holds the lease.
func (q *quorum) pttl(ctx context.Context, ls *lease) (int64, error) {
	answers := q.each(ctx, ls.ttl, func(ctx context.Context, n *node) answer {
		return codeAnswer(n.pttl(ctx, ls))
	})
	var ms []int64
	var firstErr error
	for _, a := range answers {
		if a.err != nil {
			firstErr = firstOf(firstErr, a.err)
			a.n = codeNotOurs
		}
		ms = append(ms, a.n)
	}
	slices.Sort(ms)
	slices.Reverse(ms)
	if v := ms[q.majority()-1]; v >= 0 || firstErr == nil {
		return v, nil
	}
	return 0, firstErr
}

// renewAll renews a batch on every node and tallies each lease; a node
// that has not answered within the limit counts as failed. Its goroutines
// end by themselves, as fanOut's do.
func (q *quorum) renewAll(ctx context.Context, batch []renewal) ([]int64, []error) {
	perNode := fanOut(ctx, q, nodeLimit(batch[0].ttl), func(ctx context.Context, n *node) []answer {
		codes, errs := n.renewAll(ctx, batch)
		out := make([]answer, len(batch))
		for j := range batch {
			out[j] = codeAnswer(codes[j], errs[j])
		}
		return out
	}, nil)
	codes := make([]int64, len(batch))
	errs := make([]error, len(batch))
	for j := range batch {
		answers := make([]answer, len(q.nodes))
		for i := range q.nodes {
			if perNode[i] == nil {
				answers[i] = answer{err: errNodeTimeout}
			} else {
				answers[i] = perNode[i][j]
			}
		}
		codes[j], errs[j] = q.tally(answers)
	}
	return codes, errs
}
