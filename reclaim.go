package redlease

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// maxReclaimCalls bounds Reclaim's script calls per shard.
const maxReclaimCalls = 10_000

// Reclaim gives back every claim whose lease has ended: to ready, or to
// the dead-letter list when its attempts are used up, and returns how many
// it gave back. [Queue.Consume] calls it periodically, and [Queue.Claim]
// takes expired claims itself when nothing else is ready; a deployment can
// call it too.
func (q *Queue) Reclaim(ctx context.Context) (int, error) {
	if err := q.check(); err != nil {
		return 0, err
	}
	total := 0
	for _, s := range q.shards {
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
// claims it gave back. With a guard, it does nothing if a consumer
// reclaimed the shard within the guard (the guard's token is that
// consumer's).
func (q *Queue) reclaim(ctx context.Context, s *shard, guard time.Duration, token string) (int, error) {
	res, err := ints(run(ctx, q.client, reclaimScript, s.keys, q.maxAttempts, scriptBatch, guard.Milliseconds(), token, q.deadLimit), -1)
	if err == nil && len(res) != 2 && !(len(res) == 1 && res[0] == codeReclaiming) {
		err = errUnexpected(res)
	}
	if err != nil {
		return 0, fmt.Errorf("redlease: reclaim on %q: %w", q.name, err)
	}
	if len(res) == 1 {
		return 0, nil
	}
	if res[0] > 0 && len(q.shards) > 1 {
		// Best effort, and only while ctx lasts: idle consumers also poll.
		_ = q.client.ZAdd(ctx, q.wakeKey, redis.Z{Member: "m"}).Err()
	}
	back, dead := int(res[0]), int(res[1])
	if back+dead > 0 {
		q.logger().Info("redlease: reclaimed claims whose lease ended", "queue", q.name, "shard", s.index, "ready", back, "dead", dead)
		q.observe(ctx, Observation{Kind: MessagesReclaimed, Name: q.name, N: back + dead})
	}
	if dead > 0 {
		q.logger().Warn("redlease: messages dead-lettered: their last lease ended", "queue", q.name, "shard", s.index, "n", dead)
		q.observe(ctx, Observation{Kind: MessageDead, Name: q.name, N: dead})
	}
	return back + dead, nil
}
