package redlease

import (
	"context"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// Stats counts a queue's messages by state, summed over its shards.
type Stats struct {
	// Ready counts messages waiting to be claimed.
	Ready int64
	// Delayed counts messages waiting for their delay or retry backoff,
	// including due ones until they are claimed.
	Delayed int64
	// InFlight counts claimed messages, including claims whose lease has
	// ended but that nobody has reclaimed yet.
	InFlight int64
	// Dead counts messages in the dead-letter list.
	Dead int64

	// Totals since the queue's first message, which only grow (unless
	// its keys are deleted): for rates, as in a dashboard or a
	// Prometheus counter.

	// Enqueued counts messages added.
	Enqueued int64
	// Acked counts messages acked.
	Acked int64
	// Nacked counts Nacks (a Consume handler's errors included) that sent
	// a message back to be retried; a claim whose lease ended is not
	// counted.
	Nacked int64
	// DeadLettered counts messages moved to the dead letters. A dead
	// letter [Queue.RetryDead] moves back is not counted as enqueued
	// again, so Enqueued − Acked − DeadLettered is not the backlog.
	DeadLettered int64
}

// Stats counts the queue's messages by state, and what it has done, in
// one round trip. The counts are read in one pipeline, not atomically.
func (q *Queue) Stats(ctx context.Context) (Stats, error) {
	if err := q.check(); err != nil {
		return Stats{}, err
	}
	cmds := make([][4]*redis.IntCmd, len(q.shards))
	totals := make([]*redis.SliceCmd, len(q.shards))
	_, err := q.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, s := range q.shards {
			cmds[i] = [4]*redis.IntCmd{p.LLen(ctx, s.ready), p.ZCard(ctx, s.delayed), p.ZCard(ctx, s.inflight), p.ZCard(ctx, s.dead)}
			totals[i] = p.HMGet(ctx, s.messages, totalFields[:]...)
		}
		return nil
	})
	if err != nil {
		return Stats{}, fmt.Errorf("redlease: stats of %q: %w", q.name, err)
	}
	var st Stats
	for i, c := range cmds {
		st.Ready += c[0].Val()
		st.Delayed += c[1].Val()
		st.InFlight += c[2].Val()
		st.Dead += c[3].Val()
		t := totals[i].Val()
		for j, sum := range []*int64{&st.Enqueued, &st.Acked, &st.Nacked, &st.DeadLettered} {
			*sum += total(t[j])
		}
	}
	return st, nil
}

// totalFields are the fields of a shard's messages hash that hold its
// totals, as lua/queue.lua names them: enqueued, acked, nacked, dead.
var totalFields = [...]string{"#enqueued", "#acked", "#nacked", "#dead"}

// total reads one of HMGET's values: a count, or nil when none was kept.
func total(v any) int64 {
	s, _ := v.(string)
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}
