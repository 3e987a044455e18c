package redlease

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
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
	shards      [][]string // each shard's keys, as queueLua lists them
	wakeKey     string     // where an idle consumer blocks
	next        atomic.Uint64
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
	for i := range cfg.shards {
		tag := name
		if cfg.shards > 1 {
			tag = name + ":" + strconv.Itoa(i) // each shard its own slot
		}
		base := cfg.prefix + ":queue:{" + tag + "}:"
		var keys []string
		for _, part := range []string{"ready", "delayed", "inflight", "messages", "dead", "marker", "reaper"} {
			keys = append(keys, base+part)
		}
		q.shards = append(q.shards, keys)
	}
	q.wakeKey = q.shards[0][5]
	if cfg.shards > 1 {
		q.wakeKey = cfg.prefix + ":queue:{" + name + "}:wake"
	}
	q.wd = newWatchdog(context.Background(), q.extendMany)
	return q
}

// Message is one delivery of a message, claimed under a lease.
type Message struct {
	ID      string
	Payload []byte
	// Attempt counts deliveries of this message, 1 on the first. It only
	// grows while the id is live, so (ID, Attempt) is a fencing token: a
	// store that refuses writes for an ID with a lower Attempt than it has
	// seen is safe from a consumer whose claim expired.
	Attempt int

	lease
	q      *Queue
	keys   []string // of the message's shard
	ackErr error    // the outcome of an ack folded into the next claim
}

// Stats counts a queue's messages by state.
type Stats struct {
	Ready, Delayed, InFlight, Dead int64
}

// DeadLetter is a message that used up its attempts.
type DeadLetter struct {
	ID       string
	Payload  []byte
	Attempts int
}

func (q *Queue) check() error { return q.err }

// Enqueue adds a message and returns its id (random unless WithID is
// given). It is one round trip. Payloads are opaque bytes, empty allowed,
// up to MaxPayload. With WithID, a live message with the same id makes
// Enqueue add nothing and return the id with an error that errors.Is
// ErrDuplicate.
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
	keys := q.shardOf(cfg.id)
	var codes []int64
	var err error
	if len(q.shards) == 1 || cfg.delay > 0 {
		codes, err = enqueueScript.Run(ctx, q.client, keys, cfg.delay.Milliseconds(), id, payload).Int64Slice()
	} else {
		cmds := q.enqueueAndWake(ctx, []scriptCall{{keys: keys, args: []any{0, id, payload}}})
		codes, err = cmds[0].Int64Slice()
	}
	if err == nil && len(codes) != 1 {
		err = fmt.Errorf("unexpected reply %v", codes)
	}
	if err != nil {
		return "", fmt.Errorf("redlease: enqueue on %q: %w", q.name, err)
	}
	if codes[0] == 0 {
		return id, fmt.Errorf("%w: %q is live in queue %q", ErrDuplicate, id, q.name)
	}
	return id, nil
}

// shardOf picks the shard of a new message: by its id when the caller gave
// one (so a duplicate lands where the original is), else in turn.
func (q *Queue) shardOf(id string) []string {
	if len(q.shards) == 1 {
		return q.shards[0]
	}
	if id != "" {
		h := fnv.New32a()
		h.Write([]byte(id))
		return q.shards[h.Sum32()%uint32(len(q.shards))]
	}
	return q.shards[q.next.Add(1)%uint64(len(q.shards))]
}

// enqueueAndWake runs enqueue calls of a sharded queue and sets its wake
// key, in one round trip.
func (q *Queue) enqueueAndWake(ctx context.Context, calls []scriptCall) []*redis.Cmd {
	return runAll(ctx, q.client, enqueueScript, calls, func(p redis.Pipeliner) {
		p.ZAdd(ctx, q.wakeKey, redis.Z{Member: "m"}) // its own slot: not in the script
	})
}

func checkPayload(p []byte) error {
	if len(p) > MaxPayload {
		return fmt.Errorf("%w: payload of %d bytes exceeds %d", ErrInvalidArgument, len(p), MaxPayload)
	}
	return nil
}

// EnqueueBatch adds ready messages with random ids in one round trip and
// returns their ids in order. Each script call within the batch is atomic;
// on an error some messages may have been added. Nothing is sent if any
// payload is too large.
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
			call = scriptCall{keys: q.shardOf(""), args: make([]any, 1, 1+2*min(enqueueChunk, per, len(payloads)-i))}
		}
		ids[i] = uuid.NewString()
		call.args = append(call.args, ids[i], p)
		size += len(p)
		if n := (len(call.args) - 1) / 2; n >= min(enqueueChunk, per) || size >= enqueueChunkBytes || i == len(payloads)-1 {
			call.args[0] = 0
			calls = append(calls, call)
			call, size = scriptCall{}, 0
		}
	}
	if len(calls) == 0 {
		return ids, nil
	}
	var cmds []*redis.Cmd
	if len(q.shards) > 1 {
		cmds = q.enqueueAndWake(ctx, calls)
	} else {
		cmds = runAll(ctx, q.client, enqueueScript, calls)
	}
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			return nil, fmt.Errorf("redlease: enqueue batch on %q: %w", q.name, err)
		}
	}
	return ids, nil
}

// Claim waits until it claims a message or ctx ends. The claim lasts the
// queue's lease unless extended; Claim does not renew it. While no message
// is ready, Claim blocks on Redis (on its own pool connection) and is woken
// by the next Enqueue; it notices a cancelled ctx within about half a
// second.
func (q *Queue) Claim(ctx context.Context) (*Message, error) {
	if err := q.check(); err != nil {
		return nil, err
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("redlease: claim on %q: %w", q.name, err)
		}
		m, next, err := q.claim(ctx, false, nil)
		if m != nil || err != nil {
			return m, err
		}
		if err := q.block(ctx, next); err != nil {
			return nil, err
		}
	}
}

// claim makes one attempt. Without a message, it returns how long until a
// delayed message is due (negative: none). The claim is renewed by the
// watchdog if renew is set.
func (q *Queue) claim(ctx context.Context, renew bool, onLost context.CancelCauseFunc) (*Message, time.Duration, error) {
	return q.claimAfter(ctx, nil, renew, onLost)
}

// claimAfter acks done, if not nil, and claims, trying the shards in turn
// so that none starves. When done is in the first shard tried, the ack and
// the claim share one round trip; the ack's outcome is done.ackErr.
func (q *Queue) claimAfter(ctx context.Context, done *Message, renew bool, onLost context.CancelCauseFunc) (*Message, time.Duration, error) {
	// Not cancellable: a claim made but not heard of would wait for its lease.
	bg := context.WithoutCancel(ctx)
	first := 0
	if len(q.shards) > 1 {
		first = int(q.next.Add(1) % uint64(len(q.shards)))
	}
	soonest := time.Duration(-1)
	for i := range q.shards {
		keys := q.shards[(first+i)%len(q.shards)]
		start := time.Now()
		token := uuid.NewString()
		var res []any
		var err error
		if done != nil && &done.keys[0] == &keys[0] {
			res, err = ackClaimScript.Run(bg, q.client, keys, done.ID, done.token, q.lease.Milliseconds(), token).Slice()
			if err != nil {
				done.ackErr = done.ack(bg) // the ack's fate is unknown: ack again
			} else if code, ok := res[0].(int64); ok {
				done.ackErr, res = claimGone(done.ID, code), res[1:]
			}
			done = nil
		} else {
			if done != nil {
				done.ackErr, done = done.ack(bg), nil
			}
			res, err = claimScript.Run(bg, q.client, keys, q.lease.Milliseconds(), token).Slice()
		}
		if err != nil {
			return nil, 0, fmt.Errorf("redlease: claim on %q: %w", q.name, err)
		}
		m, next, err := q.parseClaim(res, token, renew, onLost)
		if err != nil {
			return nil, 0, fmt.Errorf("redlease: claim on %q: %w", q.name, err)
		}
		if m != nil {
			m.keys = keys
			m.lease.shard = keys
			if renew {
				q.wd.add(&m.lease, start)
			}
			return m, 0, nil
		}
		if next > 0 && (soonest < 0 || next < soonest) {
			soonest = next
		}
	}
	return nil, soonest, nil
}

func (q *Queue) parseClaim(res []any, token string, renew bool, onLost context.CancelCauseFunc) (*Message, time.Duration, error) {
	bad := fmt.Errorf("unexpected reply %v", res)
	if len(res) < 2 {
		return nil, 0, bad
	}
	if ok, _ := res[0].(int64); ok == 0 {
		next, isInt := res[1].(int64)
		if !isInt {
			return nil, 0, bad
		}
		return nil, time.Duration(next) * time.Millisecond, nil
	}
	if len(res) != 5 {
		return nil, 0, bad
	}
	id, ok1 := res[1].(string)
	payload, ok2 := res[2].(string)
	attempt, ok3 := res[3].(int64)
	if !ok1 || !ok2 || !ok3 {
		return nil, 0, bad
	}
	return &Message{
		ID: id, Payload: []byte(payload), Attempt: int(attempt), q: q,
		lease: newLease(id, id, token, q.lease, renew, onLost),
	}, 0, nil
}

// block waits on the queue's marker until an Enqueue signals work, the next
// delayed message is due, or maxBlock passes.
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
	// A fractional timeout, which go-redis's BZPopMin would round up to
	// whole seconds; it stays well under the client's read timeout.
	secs := strconv.FormatFloat(d.Seconds(), 'f', 3, 64)
	err := q.client.Do(ctx, "BZPOPMIN", q.wakeKey, secs).Err()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("redlease: wait on %q: %w", q.name, err)
	}
	return nil
}

// Ack ends the claim by deleting the message. If the claim was lost (its
// lease expired, or another consumer claimed the message since), Ack
// changes nothing and returns an error that errors.Is ErrNotHeld.
func (m *Message) Ack(ctx context.Context) error {
	if _, already := m.q.wd.release(&m.lease); already {
		return notHeld(m.ID, "already acked or nacked")
	}
	return m.ack(ctx)
}

func (m *Message) ack(ctx context.Context) error {
	code, err := ackScript.Run(ctx, m.q.client, m.keys, m.ID, m.token).Int64()
	if err != nil {
		return fmt.Errorf("redlease: ack %q: %w", m.ID, err)
	}
	return claimGone(m.ID, code)
}

// Nack ends the claim and schedules another delivery after the queue's
// retry backoff, or moves the message to the dead-letter list if this was
// its last attempt. A lost claim gives an error that errors.Is ErrNotHeld.
func (m *Message) Nack(ctx context.Context) error {
	if _, already := m.q.wd.release(&m.lease); already {
		return notHeld(m.ID, "already acked or nacked")
	}
	delay := max(m.q.backoff(m.Attempt), 0)
	code, err := nackScript.Run(ctx, m.q.client, m.keys, m.ID, m.token, delay.Milliseconds(), m.q.maxAttempts).Int64()
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
		codes, err := extendScript.Run(ctx, m.q.client, m.keys, m.ID, m.token, d.Milliseconds()).Int64Slice()
		if err == nil && len(codes) != 1 {
			err = fmt.Errorf("unexpected reply %v", codes)
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
	case 0:
		return notHeld(id, "claim lease expired")
	case -1:
		return notHeld(id, "claimed by another consumer")
	}
	return nil
}

// extendMany renews a batch of claims for the watchdog: one script call per
// shard and scriptBatch claims, all in one round trip.
func (q *Queue) extendMany(ctx context.Context, batch []renewal) ([]int64, []error) {
	var calls []scriptCall
	var members [][]int // batch indexes of each call
	byShard := map[*string][]int{}
	var order []*string
	for i, r := range batch {
		k := &r.lk.shard[0]
		if _, ok := byShard[k]; !ok {
			order = append(order, k)
		}
		byShard[k] = append(byShard[k], i)
	}
	for _, k := range order {
		idx := byShard[k]
		for len(idx) > 0 {
			part := idx[:min(scriptBatch, len(idx))]
			idx = idx[len(part):]
			args := make([]any, 0, 3*len(part))
			for _, i := range part {
				args = append(args, batch[i].lk.rkey, batch[i].lk.token, batch[i].ttl.Milliseconds())
			}
			calls = append(calls, scriptCall{keys: batch[part[0]].lk.shard, args: args})
			members = append(members, part)
		}
	}
	codes := make([]int64, len(batch))
	errs := make([]error, len(batch))
	for c, cmd := range runAll(ctx, q.client, extendScript, calls) {
		res, err := cmd.Int64Slice()
		if err == nil && len(res) != len(members[c]) {
			err = fmt.Errorf("unexpected reply %v", res)
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
// the dead-letter list when its attempts are used up. It also makes due
// delayed messages ready, and returns how many claims it gave back.
// Consume calls it periodically; a producer-only deployment can too.
func (q *Queue) Reclaim(ctx context.Context) (int, error) {
	if err := q.check(); err != nil {
		return 0, err
	}
	total := 0
	for _, keys := range q.shards {
		for range 10_000 { // bounded: scriptBatch claims a call
			back, dead, promoted, err := q.reclaim(ctx, keys, 0, "")
			if err != nil {
				return total, err
			}
			total += back + dead
			if back+dead < scriptBatch && promoted < scriptBatch {
				break
			}
		}
	}
	return total, nil
}

// reclaim runs one reclaim script call on a shard; with a guard, it does
// nothing if another consumer reaped the shard within the guard.
func (q *Queue) reclaim(ctx context.Context, keys []string, guard time.Duration, token string) (back, dead, promoted int, err error) {
	res, err := reclaimScript.Run(ctx, q.client, keys, q.maxAttempts, scriptBatch, guard.Milliseconds(), token).Int64Slice()
	if err == nil && len(res) != 3 && !(len(res) == 1 && res[0] == -1) {
		err = fmt.Errorf("unexpected reply %v", res)
	}
	if err != nil {
		return 0, 0, 0, fmt.Errorf("redlease: reclaim on %q: %w", q.name, err)
	}
	if len(res) == 1 {
		return 0, 0, 0, nil
	}
	return int(res[0]), int(res[1]), int(res[2]), nil
}

// Stats counts the queue's messages by state, in one round trip.
func (q *Queue) Stats(ctx context.Context) (Stats, error) {
	if err := q.check(); err != nil {
		return Stats{}, err
	}
	cmds := make([][4]*redis.IntCmd, len(q.shards))
	_, err := q.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, keys := range q.shards {
			cmds[i] = [4]*redis.IntCmd{p.LLen(ctx, keys[0]), p.ZCard(ctx, keys[1]), p.ZCard(ctx, keys[2]), p.LLen(ctx, keys[4])}
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

// DeadLetters returns up to n dead letters, oldest first, without removing
// them.
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
			cmds[i] = p.LRange(ctx, keys[4], 0, int64(n-1))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redlease: dead letters of %q: %w", q.name, err)
	}
	var raw []string
	for _, c := range cmds {
		raw = append(raw, c.Val()...)
	}
	raw = raw[:min(n, len(raw))]
	out := make([]DeadLetter, 0, len(raw))
	for _, r := range raw {
		d, err := decodeDeadLetter(r)
		if err != nil {
			return out, fmt.Errorf("redlease: dead letters of %q: %w", q.name, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// decodeDeadLetter parses "attempts:len(id):" id payload.
func decodeDeadLetter(s string) (DeadLetter, error) {
	bad := fmt.Errorf("malformed dead letter %.40q", s)
	a, rest, ok := strings.Cut(s, ":")
	n, rest2, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 {
		return DeadLetter{}, bad
	}
	attempts, err1 := strconv.Atoi(a)
	idLen, err2 := strconv.Atoi(n)
	if err1 != nil || err2 != nil || attempts < 0 || idLen < 0 || idLen > len(rest2) {
		return DeadLetter{}, bad
	}
	return DeadLetter{ID: rest2[:idLen], Payload: []byte(rest2[idLen:]), Attempts: attempts}, nil
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
	c := &consumer{q: q, h: h, onError: cfg.onError, idle: make(chan struct{}, 1)}
	var wg sync.WaitGroup
	for range cfg.concurrency {
		wg.Go(func() { c.work(ctx) })
	}
	wg.Go(func() { c.reap(ctx) })
	wg.Wait()
	return ctx.Err()
}

type consumer struct {
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
				waited = false
			}
			pause = 10 * time.Millisecond
			done = c.handle(hctx, m)
		}
		cancel(nil)
	}
	if done != nil {
		c.report(done.Ack(context.WithoutCancel(ctx)))
	}
}

// handle runs the handler and nacks a failure; it returns m to ack when the
// handler succeeded.
func (c *consumer) handle(ctx context.Context, m *Message) *Message {
	err := c.run(ctx, m)
	if err == nil {
		return m
	}
	c.report(fmt.Errorf("redlease: handler failed on %q (attempt %d): %w", m.ID, m.Attempt, err))
	c.report(m.Nack(context.WithoutCancel(ctx)))
	return nil
}

func (c *consumer) run(ctx context.Context, m *Message) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return c.h(ctx, m)
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
		for _, keys := range c.q.shards {
			if _, _, _, err := c.q.reclaim(ctx, keys, every, token); err != nil {
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
