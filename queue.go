package redlease

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// scriptBatch caps the messages one script call handles, so no call blocks
// Redis for long.
const scriptBatch = 100

// Queue is a reliable work queue in Redis. Every message is claimed under a
// lease: at any instant at most one consumer holds a valid claim on a
// message; a consumer whose claim was lost cannot ack, nack or extend it;
// and no message is lost: each one ends acked or in the dead-letter list
// (which keeps the newest [WithDeadLetterLimit] of them).
// Delivery is at least once (a claim that expires is delivered again), so
// handlers should be idempotent; [Message.Attempt] helps.
//
// A message is ready (waiting to be claimed), delayed (waiting for
// WithDelay or a retry backoff), in flight (claimed) or dead (in the
// dead-letter list); [Queue.Stats] counts each.
//
// These guarantees hold while the Redis instance keeps its data: see the
// README for what a failover or a restart without persistence does. A
// Queue is safe for concurrent use.
type Queue struct {
	client      redis.UniversalClient
	name        string
	shards      []*shard
	wakeKey     string // where an idle consumer blocks
	enqueueNext atomic.Uint64
	claimNext   atomic.Uint64
	lease       time.Duration
	maxAttempts int
	deadLimit   int // per shard
	backoff     func(attempt int) time.Duration
	log         *slog.Logger // WithLogger's; nil: slog.Default(), Warn and above
	hook        Hook         // WithHook's; nil: none
	err         error
	wd          watchdog // renews the claims of Consume's handlers
}

// NewQueue returns the queue called name in client. Errors in the arguments
// do not panic: every call on the Queue returns them.
func NewQueue(client redis.UniversalClient, name string, opts ...QueueOption) *Queue {
	cfg := newQueueConfig(opts)
	err := cfg.err
	switch {
	case isNil(client):
		err = fmt.Errorf("%w: nil redis client", ErrInvalidArgument)
	case !validName(name):
		err = fmt.Errorf("%w: queue name %q must be non-empty and free of '{' and '}'", ErrInvalidArgument, name)
	}
	shards := make([]*shard, cfg.shards)
	for i := range shards {
		shards[i] = newShard(cfg.prefix, name, i, cfg.shards)
	}
	q := buildQueue(client, name, cfg, shards)
	if err != nil {
		q.err = err
	}
	if cfg.shards > 1 {
		q.wakeKey = cfg.prefix + ":queue:{" + name + "}:wake"
	}
	return q
}

// newQueueConfig applies opts to the defaults.
func newQueueConfig(opts []QueueOption) queueConfig {
	cfg := queueConfig{prefix: DefaultPrefix, shards: 1, lease: DefaultLease, maxAttempts: DefaultMaxAttempts,
		deadLimit: DefaultDeadLetterLimit, backoff: DefaultRetryBackoff}
	for _, o := range opts {
		if o != nil {
			o.applyQueue(&cfg)
		}
	}
	return cfg
}

// validName says whether a queue, topic or subscription name is usable: a
// brace would change the keys' hash tag.
func validName(name string) bool { return name != "" && !strings.ContainsAny(name, "{}") }

// buildQueue returns a Queue on shards, named name in errors and logs.
func buildQueue(client redis.UniversalClient, name string, cfg queueConfig, shards []*shard) *Queue {
	q := &Queue{client: client, name: name, shards: shards, wakeKey: shards[0].marker, lease: cfg.lease,
		maxAttempts: cfg.maxAttempts, deadLimit: (cfg.deadLimit + len(shards) - 1) / len(shards),
		backoff: cfg.backoff, log: cfg.log, hook: cfg.hook, err: cfg.err}
	q.wd = newWatchdog(context.Background(), q.extendAll)
	q.wd.report = q.claimNews
	return q
}

func (q *Queue) check() error { return q.err }

// Name returns the queue's name; a topic subscription's is
// "topic/subscription".
func (q *Queue) Name() string { return q.name }

// shardOf picks the shard of a new message: by its id when the caller gave
// one (so a duplicate lands where the original is), else in turn.
func (q *Queue) shardOf(id string) *shard {
	n := uint64(len(q.shards))
	if id != "" {
		h := fnv.New32a()
		h.Write([]byte(id))
		return q.shards[uint64(h.Sum32())%n]
	}
	return q.shards[q.enqueueNext.Add(1)%n]
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

// passWake wakes another idle consumer when a consumer that was idle finds
// work: so a burst wakes consumers one after another, not all at once.
// One shard's scripts do this themselves, and only while work remains.
func (q *Queue) passWake(ctx context.Context) {
	if len(q.shards) > 1 { // one shard's marker says nothing of the others
		_ = q.client.ZAdd(context.WithoutCancel(ctx), q.wakeKey, redis.Z{Member: "m"}).Err() // best effort: idle consumers also poll
	}
}
