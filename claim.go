package redlease

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

const (
	// maxBlock bounds one blocking wait for work, so that a cancelled
	// context is noticed soon even though go-redis cannot interrupt it.
	maxBlock = 500 * time.Millisecond
	// pollEvery paces claims on a client whose read timeout is too short
	// to block on Redis at all.
	pollEvery = 10 * time.Millisecond
)

// Claim waits until it claims a message or ctx ends. The claim lasts the
// queue's lease unless extended; Claim does not renew it. It takes a
// delayed message that is due first, then the oldest ready one, then a
// message whose earlier claim expired (so consumers that never call
// [Queue.Reclaim] still get those back). While there is no work, Claim
// blocks on Redis (on its own pool connection, never longer than half the
// client's ReadTimeout) and is woken by the next Enqueue, Nack or Reclaim;
// it notices a cancelled ctx within about half a second. Claim is safe to
// retry: go-redis resending it after a lost reply gets the same claim.
func (q *Queue) Claim(ctx context.Context) (*Message, error) {
	if err := q.check(); err != nil {
		return nil, err
	}
	waited := false
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("redlease: claim on %q: %w", q.name, err)
		}
		m, next, err := q.claimAfter(ctx, nil, false, nil)
		if m != nil && waited {
			q.passWake(ctx)
		}
		if m != nil || err != nil {
			return m, err
		}
		if err := q.block(ctx, next); err != nil {
			return nil, err
		}
		waited = true
	}
}

// claimAfter acks done, if not nil, and claims, starting at the next shard
// in turn so that none starves. When done is in that shard, the ack and
// the claim share one round trip; the ack's outcome is done.ackErr. With
// several shards, an empty first shard costs one more round trip that asks
// every other shard at once whether it has work. Without a message, it
// returns how long until a delayed message is due (negative: none). The
// claim is renewed by the watchdog if renew is set.
func (q *Queue) claimAfter(ctx context.Context, done *Message, renew bool, onLost context.CancelCauseFunc) (*Message, time.Duration, error) {
	// Not cancellable: a claim made but not heard of would wait for its lease.
	bg := context.WithoutCancel(ctx)
	n := len(q.shards)
	first := q.shards[q.claimNext.Add(1)%uint64(n)]
	if done != nil && done.shard != first.index {
		done.ackErr, done = done.ack(bg), nil
	}
	m, soonest, err := q.claimOn(bg, first, done, renew, onLost)
	if m != nil || err != nil || n == 1 {
		return m, soonest, err
	}
	others := make([]*shard, 0, n-1)
	calls := make([]scriptCall, 0, n-1)
	for i := 1; i < n; i++ {
		s := q.shards[(first.index+i)%n]
		others = append(others, s)
		calls = append(calls, scriptCall{keys: s.keys})
	}
	for i, cmd := range runAll(bg, q.client, peekScript, calls) {
		res, err := ints(cmd, 2)
		if err != nil {
			return nil, 0, fmt.Errorf("redlease: claim on %q: %w", q.name, err)
		}
		if res[0] == 0 {
			soonest = sooner(soonest, time.Duration(res[1])*time.Millisecond)
			continue
		}
		m, next, err := q.claimOn(bg, others[i], nil, renew, onLost)
		if m != nil || err != nil {
			return m, 0, err
		}
		soonest = sooner(soonest, next)
	}
	return nil, soonest, nil
}

// sooner is the earlier of two waits, where a negative one means none.
func sooner(a, b time.Duration) time.Duration {
	if a < 0 || (b >= 0 && b < a) {
		return b
	}
	return a
}

// claimOn makes one claim on shard s, acking done in the same script if it
// is not nil (done must be in s).
func (q *Queue) claimOn(ctx context.Context, s *shard, done *Message, renew bool, onLost context.CancelCauseFunc) (*Message, time.Duration, error) {
	start := time.Now()
	token := uuid.NewString()
	var res []any
	var err error
	if done != nil {
		res, err = run(ctx, q.client, ackClaimScript, s.keys, done.ID, done.token, q.lease.Milliseconds(), token, q.maxAttempts, q.deadLimit).Slice()
		if err != nil {
			done.ackErr = done.ack(ctx) // the ack's fate is unknown: ack again
		} else if code, ok := res[0].(int64); ok {
			done.ackErr, res = done.acked(ctx, code), res[1:]
		}
	} else {
		res, err = run(ctx, q.client, claimScript, s.keys, q.lease.Milliseconds(), token, q.maxAttempts, q.deadLimit).Slice()
	}
	if err != nil {
		// The claim may have been made with no reply after go-redis's own
		// retries: one more try with the same token gets it back rather
		// than leave it to expire and burn an attempt.
		res, err = run(ctx, q.client, claimScript, s.keys, q.lease.Milliseconds(), token, q.maxAttempts, q.deadLimit).Slice()
	}
	if err != nil {
		return nil, 0, fmt.Errorf("redlease: claim on %q: %w", q.name, err)
	}
	m, next, buried, err := q.parseClaim(res, token, renew, onLost)
	if err != nil {
		return nil, 0, fmt.Errorf("redlease: claim on %q: %w", q.name, err)
	}
	if buried > 0 {
		q.logger().Warn("redlease: messages dead-lettered: their last lease ended", "queue", q.name, "shard", s.index, "n", buried)
		q.observe(ctx, Observation{Kind: MessageDead, Name: q.name, N: buried})
	}
	if m != nil {
		m.lease.shard = s.index
		if renew {
			q.wd.add(&m.lease, start)
		}
		q.observe(ctx, Observation{Kind: MessageClaimed, Name: q.name, ID: m.ID, Attempt: m.Attempt})
	}
	return m, next, nil
}

// parseClaim reads the claim script's reply (lua/queue_claim.lua): a
// message or how long until one is due, and how many expired claims the
// claim dead-lettered.
func (q *Queue) parseClaim(res []any, token string, renew bool, onLost context.CancelCauseFunc) (m *Message, next time.Duration, buried int, err error) {
	if len(res) < 3 {
		return nil, 0, 0, errUnexpected(res)
	}
	n, isInt := res[len(res)-1].(int64)
	if !isInt || n < 0 {
		return nil, 0, 0, errUnexpected(res)
	}
	buried, res = int(n), res[:len(res)-1]
	if ok, _ := res[0].(int64); ok == 0 {
		next, isInt := res[1].(int64)
		if !isInt {
			return nil, 0, 0, errUnexpected(res)
		}
		return nil, time.Duration(next) * time.Millisecond, buried, nil
	}
	if len(res) != 5 {
		return nil, 0, 0, errUnexpected(res)
	}
	id, ok1 := res[1].(string)
	payload, ok2 := res[2].(string)
	attempt, ok3 := res[3].(int64)
	if !ok1 || !ok2 || !ok3 {
		return nil, 0, 0, errUnexpected(res)
	}
	body, headers := unseal(payload)
	m = &Message{
		ID: id, Payload: body, Headers: headers, Attempt: int(attempt), q: q,
		lease: newLease(id, id, token, q.lease, renew, onLost),
	}
	m.fence = attempt
	return m, 0, buried, nil
}

// block waits on the queue's wake key until a producer signals work, the
// next delayed message is due, or maxBlock passes; never longer than half
// the client's ReadTimeout, so that the wait never fails as a timeout.
func (q *Queue) block(ctx context.Context, next time.Duration) error {
	d := maxBlock
	if next > 0 && next < d {
		d = next
	}
	if deadline, ok := ctx.Deadline(); ok {
		d = min(d, time.Until(deadline))
	}
	if d < time.Millisecond || ctx.Err() != nil {
		return nil // the caller's loop sees ctx's end
	}
	if rt := readTimeout(q.client); rt > 0 && d > rt/2 {
		d = rt / 2
		if d < time.Millisecond { // too short to block on: poll
			sleep(ctx, pollEvery)
			return nil
		}
	}
	// A fractional timeout, which go-redis's BZPopMin would round up to
	// whole seconds.
	secs := strconv.FormatFloat(d.Seconds(), 'f', 3, 64)
	err := q.client.Do(ctx, "BZPOPMIN", q.wakeKey, secs).Err()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("redlease: wait on %q: %w", q.name, err)
	}
	return nil
}

// readTimeout is the client's read timeout after go-redis's defaults, or 0
// when there is none or it cannot be known.
func readTimeout(c redis.UniversalClient) time.Duration {
	switch c := c.(type) {
	case *redis.Client:
		return c.Options().ReadTimeout
	case *redis.ClusterClient:
		return c.Options().ReadTimeout
	case *redis.Ring:
		return c.Options().ReadTimeout
	}
	return 0
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
