package redlease

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

const (
	// maxBlock bounds one blocking wait for work, so that a cancelled
	// context is noticed soon even though go-redis cannot interrupt it.
	maxBlock = 500 * time.Millisecond
	// scriptBatch caps the messages one script call handles, so no call
	// blocks Redis for long.
	scriptBatch = 100
	// enqueueChunk caps the messages, and enqueueChunkBytes their payload
	// bytes, in one enqueue script call.
	enqueueChunk      = 1000
	enqueueChunkBytes = 4 << 20
	// maxReclaimCalls bounds Reclaim's script calls per shard.
	maxReclaimCalls = 10_000
	// pollEvery paces claims on a client whose read timeout is too short
	// to block on Redis at all.
	pollEvery = 10 * time.Millisecond
)

// Queue is a reliable work queue in Redis. Every message is claimed under a
// lease: at any instant at most one consumer holds a valid claim on a
// message; a consumer whose claim was lost cannot ack, nack or extend it;
// and no message is lost: each one ends acked or in the dead-letter list.
// Delivery is at least once (a claim that expires is delivered again), so
// handlers should be idempotent; Attempt helps.
//
// These guarantees hold while the Redis instance keeps its data: see the
// README for what a failover or a restart without persistence does. A
// Queue is safe for concurrent use.
type Queue struct {
	client      redis.UniversalClient
	name        string
	shards      [][]string // each shard's keys, indexed by keyReady...keyDone
	wakeKey     string     // where an idle consumer blocks
	enqueueNext atomic.Uint64
	claimNext   atomic.Uint64
	lease       time.Duration
	maxAttempts int
	backoff     func(attempt int) time.Duration
	err         error
	wd          watchdog // renews the claims of Consume's handlers
}

// NewQueue returns the queue called name in client. Errors in the arguments
// do not panic: every call on the Queue returns them.
func NewQueue(client redis.UniversalClient, name string, opts ...QueueOption) *Queue {
	cfg := queueConfig{prefix: DefaultPrefix, shards: 1, lease: DefaultLease, maxAttempts: DefaultMaxAttempts, backoff: DefaultRetryBackoff}
	for _, o := range opts {
		if o != nil {
			o.applyQueue(&cfg)
		}
	}
	q := &Queue{client: client, name: name, lease: cfg.lease, maxAttempts: cfg.maxAttempts, backoff: cfg.backoff, err: cfg.err}
	switch {
	case isNil(client):
		q.err = fmt.Errorf("%w: nil redis client", ErrInvalidArgument)
	case name == "" || strings.ContainsAny(name, "{}"):
		q.err = fmt.Errorf("%w: queue name %q must be non-empty and free of '{' and '}'", ErrInvalidArgument, name)
	}
	q.shards = shardKeys(cfg.prefix, name, cfg.shards)
	q.wakeKey = q.shards[0][keyMarker]
	if cfg.shards > 1 {
		q.wakeKey = cfg.prefix + ":queue:{" + name + "}:wake"
	}
	q.wd = newWatchdog(context.Background(), q.extendMany)
	return q
}

// shardKeys lays out the keys of a queue's shards. One shard lives under
// the tag {name}; shard i of several under {name:i} with a ":shard:" part,
// so that no shard shares a key with a one-shard queue named "name:i".
func shardKeys(prefix, name string, n int) [][]string {
	shards := make([][]string, n)
	for i := range shards {
		base := prefix + ":queue:{" + name + "}:"
		if n > 1 {
			base = prefix + ":queue:{" + name + ":" + strconv.Itoa(i) + "}:shard:"
		}
		keys := make([]string, shardKeyCount)
		for k, part := range shardKeyNames {
			keys[k] = base + part
		}
		shards[i] = keys
	}
	return shards
}

// Message is one delivery of a message, claimed under a lease.
type Message struct {
	// ID is the message's id: random, or the one given with WithID.
	ID string
	// Payload is the message's body, as enqueued.
	Payload []byte
	// Attempt counts deliveries of this message, 1 on the first, and grows
	// by one with each delivery while the id stays live. So (ID, Attempt)
	// orders the deliveries of one message: a store that refuses writes
	// for an ID with a lower Attempt than it has seen is safe from a
	// consumer whose claim expired. An id enqueued again after its message
	// was acked or dead-lettered starts over at 1; where ids are reused,
	// fence on a version of your own as well.
	Attempt int

	lease
	q      *Queue
	ackErr error // the outcome of an ack folded into the next claim
}

// Stats counts a queue's messages by state.
type Stats struct {
	Ready    int64 // waiting to be claimed
	Delayed  int64 // waiting for their delay or retry backoff (due ones included until claimed)
	InFlight int64 // claimed, including claims whose lease has ended but that nobody reclaimed yet
	Dead     int64 // in the dead-letter list
}

// DeadLetter is a message that used up its attempts.
type DeadLetter struct {
	ID       string
	Payload  []byte
	Attempts int       // deliveries it had
	DiedAt   time.Time // when it was dead-lettered, by Redis's clock
}

func (q *Queue) check() error { return q.err }

// Enqueue adds a message and returns its id (random unless WithID is
// given). It is one round trip, and safe to retry: go-redis resending it
// after a lost reply adds the message once and reports success. Payloads
// are opaque bytes, empty allowed, up to MaxPayload. With WithID, a live
// message with the same id makes Enqueue add nothing and return the id
// with an error that errors.Is ErrDuplicate.
func (q *Queue) Enqueue(ctx context.Context, payload []byte, opts ...EnqueueOption) (string, error) {
	if err := q.check(); err != nil {
		return "", err
	}
	var cfg enqueueConfig
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if cfg.err != nil {
		return "", cfg.err
	}
	if err := checkPayload(payload); err != nil {
		return "", err
	}
	id := cfg.id
	if id == "" {
		id = uuid.NewString()
	}
	call := scriptCall{keys: q.shards[q.shardOf(cfg.id)], args: []any{cfg.delay.Milliseconds(), uuid.NewString(), id, payload}}
	codes, err := runAll(ctx, q.client, enqueueScript, []scriptCall{call}, q.wake(ctx)...)[0].Int64Slice()
	if err == nil && len(codes) != 1 {
		err = errUnexpected(codes)
	}
	if err != nil {
		return "", fmt.Errorf("redlease: enqueue on %q: %w", q.name, err)
	}
	if codes[0] != codeOK {
		return id, fmt.Errorf("%w: %q is live in queue %q", ErrDuplicate, id, q.name)
	}
	return id, nil
}

// shardOf picks the shard of a new message: by its id when the caller gave
// one (so a duplicate lands where the original is), else in turn.
func (q *Queue) shardOf(id string) int {
	n := uint64(len(q.shards))
	if id != "" {
		h := fnv.New32a()
		h.Write([]byte(id))
		return int(uint64(h.Sum32()) % n)
	}
	return int(q.enqueueNext.Add(1) % n)
}

// wake returns what a call that may have made work ready in a shard adds
// to its pipeline: with several shards, a signal on the wake key that idle
// consumers block on (its own slot, so not in the script). One shard's
// scripts set its marker themselves.
func (q *Queue) wake(ctx context.Context) []func(redis.Pipeliner) {
	if len(q.shards) == 1 {
		return nil
	}
	return []func(redis.Pipeliner){func(p redis.Pipeliner) { p.ZAdd(ctx, q.wakeKey, redis.Z{Member: "m"}) }}
}

func checkPayload(p []byte) error {
	if len(p) > MaxPayload {
		return fmt.Errorf("%w: payload of %d bytes exceeds %d", ErrInvalidArgument, len(p), MaxPayload)
	}
	return nil
}

// EnqueueBatch adds ready messages with random ids in one round trip and
// returns their ids in order. Each script call within the batch is atomic
// and safe to resend; on an error some messages may have been added.
// Nothing is sent if any payload is too large.
func (q *Queue) EnqueueBatch(ctx context.Context, payloads [][]byte) ([]string, error) {
	if err := q.check(); err != nil {
		return nil, err
	}
	for _, p := range payloads {
		if err := checkPayload(p); err != nil {
			return nil, err
		}
	}
	ids := make([]string, len(payloads))
	var calls []scriptCall
	// Consecutive runs of messages go to the shards in turn.
	per := max((len(payloads)+len(q.shards)-1)/len(q.shards), 1)
	var call scriptCall
	size := 0
	for i, p := range payloads {
		if len(call.args) == 0 {
			call = scriptCall{keys: q.shards[q.shardOf("")], args: make([]any, 2, 2+2*min(enqueueChunk, per, len(payloads)-i))}
			call.args[0], call.args[1] = 0, uuid.NewString()
		}
		ids[i] = uuid.NewString()
		call.args = append(call.args, ids[i], p)
		size += len(p)
		if n := (len(call.args) - 2) / 2; n >= min(enqueueChunk, per) || size >= enqueueChunkBytes || i == len(payloads)-1 {
			calls = append(calls, call)
			call, size = scriptCall{}, 0
		}
	}
	if len(calls) == 0 {
		return ids, nil
	}
	for _, cmd := range runAll(ctx, q.client, enqueueScript, calls, q.wake(ctx)...) {
		if err := cmd.Err(); err != nil {
			return nil, fmt.Errorf("redlease: enqueue batch on %q: %w", q.name, err)
		}
	}
	return ids, nil
}

// Claim waits until it claims a message or ctx ends. The claim lasts the
// queue's lease unless extended; Claim does not renew it. It takes a
// delayed message that is due first, then the oldest ready one, then a
// message whose earlier claim expired (so consumers that never call
// Reclaim still get those back). While there is no work, Claim blocks on
// Redis (on its own pool connection, never longer than half the client's
// ReadTimeout) and is woken by the next Enqueue, Nack or Reclaim; it
// notices a cancelled ctx within about half a second. Claim is safe to
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

// passWake wakes another idle consumer when a consumer that was idle finds
// work: so a burst wakes consumers one after another, not all at once. One
// shard's claim script does this itself, and only while work remains.
func (q *Queue) passWake(ctx context.Context) {
	if len(q.shards) > 1 { // its own shard's "more" says nothing of the others
		_ = q.client.ZAdd(context.WithoutCancel(ctx), q.wakeKey, redis.Z{Member: "m"}).Err() // best effort: idle consumers also poll
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
	first := int(q.claimNext.Add(1) % uint64(n))
	if done != nil && done.shard != first {
		done.ackErr, done = done.ack(bg), nil
	}
	m, soonest, err := q.claimOn(bg, first, done, renew, onLost)
	if m != nil || err != nil || n == 1 {
		return m, soonest, err
	}
	others := make([]scriptCall, 0, n-1)
	for i := 1; i < n; i++ {
		others = append(others, scriptCall{keys: q.shards[(first+i)%n]})
	}
	for i, cmd := range runAll(bg, q.client, peekScript, others) {
		res, err := cmd.Int64Slice()
		if err == nil && len(res) != 2 {
			err = errUnexpected(res)
		}
		if err != nil {
			return nil, 0, fmt.Errorf("redlease: claim on %q: %w", q.name, err)
		}
		if res[0] == 0 {
			soonest = sooner(soonest, time.Duration(res[1])*time.Millisecond)
			continue
		}
		m, next, err := q.claimOn(bg, (first+1+i)%n, nil, renew, onLost)
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
// is not nil (done must be in shard s).
func (q *Queue) claimOn(ctx context.Context, s int, done *Message, renew bool, onLost context.CancelCauseFunc) (*Message, time.Duration, error) {
	keys := q.shards[s]
	start := time.Now()
	token := uuid.NewString()
	var res []any
	var err error
	if done != nil {
		res, err = ackClaimScript.Run(ctx, q.client, keys, done.ID, done.token, q.lease.Milliseconds(), token, q.maxAttempts).Slice()
		if err != nil {
			done.ackErr = done.ack(ctx) // the ack's fate is unknown: ack again
		} else if code, ok := res[0].(int64); ok {
			done.ackErr, res = claimGone(done.ID, code), res[1:]
		}
	} else {
		res, err = claimScript.Run(ctx, q.client, keys, q.lease.Milliseconds(), token, q.maxAttempts).Slice()
	}
	if err != nil {
		// The claim may have been made with no reply after go-redis's own
		// retries: one more try with the same token gets it back rather
		// than leave it to expire and burn an attempt.
		res, err = claimScript.Run(ctx, q.client, keys, q.lease.Milliseconds(), token, q.maxAttempts).Slice()
	}
	if err != nil {
		return nil, 0, fmt.Errorf("redlease: claim on %q: %w", q.name, err)
	}
	m, next, err := q.parseClaim(res, token, renew, onLost)
	if err != nil {
		return nil, 0, fmt.Errorf("redlease: claim on %q: %w", q.name, err)
	}
	if m != nil {
		m.lease.shard = s
		if renew {
			q.wd.add(&m.lease, start)
		}
	}
	return m, next, nil
}

func errUnexpected(reply any) error { return fmt.Errorf("unexpected reply %v", reply) }

// parseClaim reads claimScript's reply.
func (q *Queue) parseClaim(res []any, token string, renew bool, onLost context.CancelCauseFunc) (*Message, time.Duration, error) {
	if len(res) < 2 {
		return nil, 0, errUnexpected(res)
	}
	if ok, _ := res[0].(int64); ok == 0 {
		next, isInt := res[1].(int64)
		if !isInt {
			return nil, 0, errUnexpected(res)
		}
		return nil, time.Duration(next) * time.Millisecond, nil
	}
	if len(res) != 5 {
		return nil, 0, errUnexpected(res)
	}
	id, ok1 := res[1].(string)
	payload, ok2 := res[2].(string)
	attempt, ok3 := res[3].(int64)
	if !ok1 || !ok2 || !ok3 {
		return nil, 0, errUnexpected(res)
	}
	return &Message{
		ID: id, Payload: []byte(payload), Attempt: int(attempt), q: q,
		lease: newLease(id, id, token, q.lease, renew, onLost),
	}, 0, nil
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

// Ack ends the claim by deleting the message. If the claim was lost (its
// lease expired, or another consumer claimed the message since), Ack
// changes nothing and returns an error that errors.Is ErrNotHeld. After a
// Redis error the claim is unchanged, still renewed if it was, and Ack
// may be called again; a resent Ack that finds its work done succeeds.
func (m *Message) Ack(ctx context.Context) error {
	if m.q.wd.isReleased(&m.lease) {
		return notHeld(m.ID, "already acked or nacked")
	}
	return m.settle(m.ack(ctx))
}

func (m *Message) ack(ctx context.Context) error {
	code, err := ackScript.Run(ctx, m.q.client, m.q.shards[m.shard], m.ID, m.token).Int64()
	if err != nil {
		return fmt.Errorf("redlease: ack %q: %w", m.ID, err)
	}
	return claimGone(m.ID, code)
}

// settle ends the claim on the client's side once Redis has answered for
// it: a Redis error leaves it as it was, so the call can be retried.
func (m *Message) settle(err error) error {
	if err == nil || errors.Is(err, ErrNotHeld) {
		m.q.wd.release(&m.lease)
	}
	return err
}

// Nack ends the claim and schedules another delivery after the queue's
// retry backoff, or moves the message to the dead-letter list if this was
// its last attempt. A lost claim gives an error that errors.Is ErrNotHeld.
// After a Redis error the claim is unchanged and Nack may be called again.
func (m *Message) Nack(ctx context.Context) error {
	if m.q.wd.isReleased(&m.lease) {
		return notHeld(m.ID, "already acked or nacked")
	}
	return m.settle(m.nack(ctx))
}

func (m *Message) nack(ctx context.Context) error {
	delay := max(m.q.backoff(m.Attempt), 0)
	call := scriptCall{keys: m.q.shards[m.shard], args: []any{m.ID, m.token, delay.Milliseconds(), m.q.maxAttempts}}
	code, err := runAll(ctx, m.q.client, nackScript, []scriptCall{call}, m.q.wake(ctx)...)[0].Int64()
	if err != nil {
		return fmt.Errorf("redlease: nack %q: %w", m.ID, err)
	}
	return claimGone(m.ID, code)
}

// Extend sets the claim to end d from now (by the Redis clock). A d under a
// millisecond is an error that changes nothing; a lost claim gives an error
// that errors.Is ErrNotHeld.
func (m *Message) Extend(ctx context.Context, d time.Duration) error {
	return m.q.wd.extend(&m.lease, "extend", "already acked or nacked", d, func() (int64, error) {
		codes, err := extendScript.Run(ctx, m.q.client, m.q.shards[m.shard], m.ID, m.token, d.Milliseconds()).Int64Slice()
		if err == nil && len(codes) != 1 {
			err = errUnexpected(codes)
		}
		if err != nil {
			return 0, err
		}
		return codes[0], nil
	}, claimGone)
}

// claimGone turns a script's claim code into an error (nil for success).
func claimGone(id string, code int64) error {
	switch code {
	case codeOK, codeBuried:
		return nil
	case codeGone:
		return notHeld(id, "claim lease expired")
	case codeTaken:
		return notHeld(id, "claimed by another consumer")
	}
	return errUnexpected(code)
}

// extendMany renews a batch of claims for the watchdog: one script call per
// shard and scriptBatch claims, all in one round trip.
func (q *Queue) extendMany(ctx context.Context, batch []renewal) ([]int64, []error) {
	var calls []scriptCall
	var members [][]int // batch indexes of each call
	byShard := make([][]int, len(q.shards))
	for i, r := range batch {
		byShard[r.lk.shard] = append(byShard[r.lk.shard], i)
	}
	for s, idx := range byShard {
		for len(idx) > 0 {
			part := idx[:min(scriptBatch, len(idx))]
			idx = idx[len(part):]
			args := make([]any, 0, 3*len(part))
			for _, i := range part {
				args = append(args, batch[i].lk.rkey, batch[i].lk.token, batch[i].ttl.Milliseconds())
			}
			calls = append(calls, scriptCall{keys: q.shards[s], args: args})
			members = append(members, part)
		}
	}
	codes := make([]int64, len(batch))
	errs := make([]error, len(batch))
	for c, cmd := range runAll(ctx, q.client, extendScript, calls) {
		res, err := cmd.Int64Slice()
		if err == nil && len(res) != len(members[c]) {
			err = errUnexpected(res)
		}
		for j, i := range members[c] {
			if err != nil {
				errs[i] = err
			} else {
				codes[i] = res[j]
			}
		}
	}
	return codes, errs
}

// Reclaim gives back every claim whose lease has ended: to ready, or to
// the dead-letter list when its attempts are used up, and returns how many
// it gave back. Consume calls it periodically, and Claim takes expired
// claims itself when nothing else is ready; a deployment can call it too.
func (q *Queue) Reclaim(ctx context.Context) (int, error) {
	if err := q.check(); err != nil {
		return 0, err
	}
	total := 0
	for s := range q.shards {
		for range maxReclaimCalls {
			n, err := q.reclaim(ctx, s, 0, "")
			if err != nil {
				return total, err
			}
			total += n
			if n < scriptBatch {
				break
			}
		}
	}
	return total, nil
}

// reclaim runs one reclaim script call on shard s and returns how many
// claims it gave back; with a guard, it does nothing if another consumer
// reaped the shard within the guard.
func (q *Queue) reclaim(ctx context.Context, s int, guard time.Duration, token string) (int, error) {
	res, err := reclaimScript.Run(ctx, q.client, q.shards[s], q.maxAttempts, scriptBatch, guard.Milliseconds(), token).Int64Slice()
	if err == nil && len(res) != 2 && !(len(res) == 1 && res[0] == codeReaping) {
		err = errUnexpected(res)
	}
	if err != nil {
		return 0, fmt.Errorf("redlease: reclaim on %q: %w", q.name, err)
	}
	if len(res) == 1 {
		return 0, nil
	}
	if res[0] > 0 && len(q.shards) > 1 {
		_ = q.client.ZAdd(ctx, q.wakeKey, redis.Z{Member: "m"}).Err() // best effort: idle consumers also poll
	}
	return int(res[0] + res[1]), nil
}

// Stats counts the queue's messages by state, in one round trip.
func (q *Queue) Stats(ctx context.Context) (Stats, error) {
	if err := q.check(); err != nil {
		return Stats{}, err
	}
	cmds := make([][4]*redis.IntCmd, len(q.shards))
	_, err := q.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, keys := range q.shards {
			cmds[i] = [4]*redis.IntCmd{p.LLen(ctx, keys[keyReady]), p.ZCard(ctx, keys[keyDelayed]), p.ZCard(ctx, keys[keyInflight]), p.LLen(ctx, keys[keyDead])}
		}
		return nil
	})
	if err != nil {
		return Stats{}, fmt.Errorf("redlease: stats of %q: %w", q.name, err)
	}
	var st Stats
	for _, c := range cmds {
		st.Ready += c[0].Val()
		st.Delayed += c[1].Val()
		st.InFlight += c[2].Val()
		st.Dead += c[3].Val()
	}
	return st, nil
}

// DeadLetters returns up to n dead letters, oldest first (across shards,
// by when they died), without removing them.
func (q *Queue) DeadLetters(ctx context.Context, n int) ([]DeadLetter, error) {
	if err := q.check(); err != nil {
		return nil, err
	}
	if n < 1 {
		return nil, fmt.Errorf("%w: dead letters: n %d must be at least 1", ErrInvalidArgument, n)
	}
	cmds := make([]*redis.StringSliceCmd, len(q.shards))
	_, err := q.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, keys := range q.shards {
			cmds[i] = p.LRange(ctx, keys[keyDead], 0, int64(n-1))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redlease: dead letters of %q: %w", q.name, err)
	}
	var out []DeadLetter
	for _, c := range cmds {
		for _, r := range c.Val() {
			d, err := decodeDeadLetter(r)
			if err != nil {
				return nil, fmt.Errorf("redlease: dead letters of %q: %w", q.name, err)
			}
			out = append(out, d)
		}
	}
	// Each shard's list is oldest first; a stable sort merges them.
	slices.SortStableFunc(out, func(a, b DeadLetter) int { return a.DiedAt.Compare(b.DiedAt) })
	return out[:min(n, len(out))], nil
}

// decodeDeadLetter parses "attempts:died-at-ms:len(id):" id payload, as
// the bury function in queueLua writes it.
func decodeDeadLetter(s string) (DeadLetter, error) {
	var fields [3]int64
	rest := s
	for i := range fields {
		f, r, ok := strings.Cut(rest, ":")
		n, err := strconv.ParseInt(f, 10, 64)
		if !ok || err != nil || n < 0 {
			return DeadLetter{}, fmt.Errorf("malformed dead letter %.40q", s)
		}
		fields[i], rest = n, r
	}
	if fields[2] > int64(len(rest)) || fields[0] > math.MaxInt32 {
		return DeadLetter{}, fmt.Errorf("malformed dead letter %.40q", s)
	}
	return DeadLetter{
		ID: rest[:fields[2]], Payload: []byte(rest[fields[2]:]), Attempts: int(fields[0]),
		DiedAt: time.UnixMilli(fields[1]),
	}, nil
}

// Consume runs h on claimed messages, up to WithConcurrency at once, until
// ctx ends. Each claim is renewed while its handler runs; the handler's
// context is cancelled if the claim is lost anyway. A nil return acks the
// message; an error or a panic (recovered) nacks it. Consume also gives
// back expired claims periodically (one consumer at a time does).
//
// When ctx ends, Consume stops claiming, waits for running handlers (their
// contexts are not cancelled by ctx: they finish their work), acks or nacks
// what they return, and returns ctx's error.
func (q *Queue) Consume(ctx context.Context, h func(context.Context, *Message) error, opts ...ConsumeOption) error {
	if err := q.check(); err != nil {
		return err
	}
	if h == nil {
		return fmt.Errorf("%w: nil handler", ErrInvalidArgument)
	}
	cfg := consumeConfig{concurrency: 1}
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if cfg.err != nil {
		return cfg.err
	}
	c := &consumer{q: q, h: h, onError: cfg.onError, idle: make(chan struct{}, 1), ctx: ctx}
	for range cfg.concurrency {
		c.wg.Go(func() { c.work(ctx) })
	}
	c.wg.Go(func() { c.reap(ctx) })
	c.wg.Wait()
	return ctx.Err()
}

type consumer struct {
	ctx      context.Context // Consume's
	wg       sync.WaitGroup  // every goroutine Consume started
	q        *Queue
	h        func(context.Context, *Message) error
	onError  func(error)
	blocking atomic.Bool   // one worker at a time waits on Redis
	idle     chan struct{} // passes the waiting role to an idle worker
}

func (c *consumer) report(err error) {
	if c.onError != nil && err != nil {
		c.onError(err)
	}
}

// work claims and handles messages until ctx ends. A message whose
// handler succeeded is acked in the same round trip as the next claim.
func (c *consumer) work(ctx context.Context) {
	pause := 10 * time.Millisecond
	var done *Message // handled, to ack with the next claim
	waited := false
	for ctx.Err() == nil {
		hctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
		if done != nil {
			c.q.wd.release(&done.lease) // renewal stops; the script acks
		}
		m, next, err := c.q.claimAfter(ctx, done, true, cancel)
		if done != nil {
			c.report(done.ackErr)
			done = nil
		}
		switch {
		case err != nil:
			c.report(err)
			sleep(ctx, pause)
			pause = min(2*pause, time.Second)
		case m == nil:
			c.wait(ctx, next)
			waited = true
		default:
			if waited {
				// Work arrived: wake an idle worker too, in case there is more.
				signal(c.idle)
				c.q.passWake(ctx)
				waited = false
			}
			pause = 10 * time.Millisecond
			done = c.handle(hctx, m)
		}
		cancel(nil)
	}
	if done != nil {
		c.report(done.Ack(context.WithoutCancel(ctx)))
		c.q.wd.release(&done.lease) // acked or not, Consume is done with it
	}
}

// handle runs the handler and nacks a failure; it returns m to ack when the
// handler succeeded.
func (c *consumer) handle(ctx context.Context, m *Message) *Message {
	err := c.run(ctx, m)
	if err == nil {
		return m
	}
	c.fail(m, err)
	return nil
}

// fail reports a handler's failure and nacks its message. Whatever Redis
// answers, Consume stops renewing the claim: one the nack did not end
// expires and is delivered again.
func (c *consumer) fail(m *Message, err error) {
	c.report(fmt.Errorf("redlease: handler failed on %q (attempt %d): %w", m.ID, m.Attempt, err))
	c.report(m.Nack(context.WithoutCancel(c.ctx)))
	c.q.wd.release(&m.lease)
}

// errGoexit stands for a handler that ended its goroutine with
// runtime.Goexit (t.FailNow, for one) instead of returning.
var errGoexit = errors.New("handler called runtime.Goexit")

// run runs the handler on the worker's goroutine; a panic becomes an
// error. A handler that calls runtime.Goexit ends the worker's goroutine
// instead of returning: its message is nacked and a new worker takes the
// old one's place, so neither the claim nor the pool is lost.
func (c *consumer) run(ctx context.Context, m *Message) (err error) {
	returned := false
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		} else if !returned {
			c.fail(m, errGoexit)
			c.wg.Go(func() { c.work(c.ctx) }) // this worker still counts in wg
		}
	}()
	err = c.h(ctx, m)
	returned = true
	return err
}

// wait idles a worker that found no work: one worker blocks on Redis, the
// others wait for it to pass the role on.
func (c *consumer) wait(ctx context.Context, next time.Duration) {
	if c.blocking.CompareAndSwap(false, true) {
		err := c.q.block(ctx, next)
		c.blocking.Store(false)
		signal(c.idle)
		if err != nil {
			c.report(err)
			sleep(ctx, 50*time.Millisecond)
		}
		return
	}
	t := time.NewTimer(maxBlock)
	defer t.Stop()
	select {
	case <-c.idle:
	case <-t.C:
	case <-ctx.Done():
	}
}

// reap gives back expired claims about ten times per lease.
func (c *consumer) reap(ctx context.Context) {
	every := min(max(c.q.lease/10, 10*time.Millisecond), time.Second)
	token := uuid.NewString()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for s := range c.q.shards {
			if _, err := c.q.reclaim(ctx, s, every, token); err != nil {
				c.report(err)
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
