package redlease

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// DeadLetter is a message that used up its attempts, as kept in the
// queue's dead-letter list.
type DeadLetter struct {
	// ID is the message's id.
	ID string
	// Payload is the message's body, as enqueued.
	Payload []byte
	// Attempts counts the deliveries it had.
	Attempts int
	// DiedAt is when it was dead-lettered, by the Redis server's clock
	// (millisecond resolution).
	DiedAt time.Time
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
		for i, s := range q.shards {
			cmds[i] = p.LRange(ctx, s.dead, 0, int64(n-1))
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
// bury in lua/queue.lua writes it.
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
