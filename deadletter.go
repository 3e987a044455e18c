package redlease

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

// DeadLetter is a message that used up its attempts (or whose handler
// gave up with [ErrSkipRetry]), as kept in the queue's dead-letter list.
// Its id is free: a new message may take it while it is dead. A queue
// keeps one dead letter per id, the latest.
type DeadLetter struct {
	// ID is the message's id.
	ID string
	// Payload is the message's body, as enqueued.
	Payload []byte
	// Headers are the message's headers ([WithHeaders]), nil if none.
	Headers map[string]string
	// Attempts counts the deliveries it had.
	Attempts int
	// Err is the error its last delivery failed with: the handler's, in
	// Consume, or the cause given to [Message.Nack] with [WithCause] (at
	// most [MaxErrLength] bytes of its text). It is "" when none was
	// given, as when the last claim's lease ended (its consumer crashed
	// or hung).
	Err string
	// DiedAt is when it was dead-lettered, by the Redis server's clock
	// (millisecond resolution).
	DiedAt time.Time
}

// DeadLetters returns up to n dead letters (at most [MaxDeadLetterLimit]),
// oldest first (by when they died, then by id, across shards), without
// removing them. To read them all, page with [Queue.DeadLettersAfter].
func (q *Queue) DeadLetters(ctx context.Context, n int) ([]DeadLetter, error) {
	return q.deadLetters(ctx, nil, n)
}

// DeadLettersAfter returns up to n dead letters that come after last in
// the order of [Queue.DeadLetters], whether or not last is still dead: so
// each page goes on from the last one's end. Only last's ID and DiedAt
// count. Dead letters that die while a reader pages are found if they
// sort after its place; none is returned twice.
func (q *Queue) DeadLettersAfter(ctx context.Context, last DeadLetter, n int) ([]DeadLetter, error) {
	return q.deadLetters(ctx, &last, n)
}

func (q *Queue) deadLetters(ctx context.Context, after *DeadLetter, n int) ([]DeadLetter, error) {
	if err := q.check(); err != nil {
		return nil, err
	}
	if n < 1 {
		return nil, fmt.Errorf("%w: dead letters: n %d must be at least 1", ErrInvalidArgument, n)
	}
	n = min(n, MaxDeadLetterLimit)
	args := []any{n, "", ""}
	if after != nil {
		args[1], args[2] = after.DiedAt.UnixMilli(), after.ID
	}
	calls := make([]scriptCall, len(q.shards))
	for i, s := range q.shards {
		calls[i] = scriptCall{keys: s.keys, args: args}
	}
	var out []DeadLetter
	for _, cmd := range runAll(ctx, q.client, deadScript, calls) {
		res, err := cmd.StringSlice()
		if err == nil && len(res)%2 != 0 {
			err = errUnexpected(res)
		}
		if err != nil {
			return nil, fmt.Errorf("redlease: dead letters of %q: %w", q.name, err)
		}
		for i := 0; i < len(res); i += 2 {
			d, err := decodeDeadLetter(res[i], res[i+1])
			if err != nil {
				return nil, fmt.Errorf("redlease: dead letters of %q: %w", q.name, err)
			}
			out = append(out, d)
		}
	}
	// Each shard's are in order; sorting merges them.
	slices.SortFunc(out, func(a, b DeadLetter) int {
		return cmp.Or(a.DiedAt.Compare(b.DiedAt), strings.Compare(a.ID, b.ID))
	})
	return out[:min(n, len(out))], nil
}

// decodeDeadLetter parses id's body, "attempts:died-at-ms:len(err):" err
// payload, as bury in lua/queue.lua writes it.
func decodeDeadLetter(id, body string) (DeadLetter, error) {
	var fields [3]int64
	rest := body
	for i := range fields {
		f, r, ok := strings.Cut(rest, ":")
		n, err := strconv.ParseInt(f, 10, 64)
		if !ok || err != nil || n < 0 {
			return DeadLetter{}, fmt.Errorf("malformed dead letter %q: %.40q", id, body)
		}
		fields[i], rest = n, r
	}
	if fields[2] > int64(len(rest)) || fields[0] > math.MaxInt32 {
		return DeadLetter{}, fmt.Errorf("malformed dead letter %q: %.40q", id, body)
	}
	payload, headers := unseal(rest[fields[2]:])
	return DeadLetter{
		ID: id, Err: rest[:fields[2]], Payload: payload, Headers: headers, Attempts: int(fields[0]),
		DiedAt: time.UnixMilli(fields[1]),
	}, nil
}

// RetryDead moves the dead letters with the given ids (at most
// [MaxDeadLetterLimit]; with none, every dead letter) back to ready,
// behind the messages already there, and returns how many it moved; ids
// that are not dead count 0. A retried message keeps its id and payload
// and starts over at attempt 1, as an id enqueued again does: a store
// that fences on (ID, [Message.Attempt]) must treat a retried dead letter
// as a new message (see [Message.Attempt]). A dead letter whose id is
// live again (enqueued since it died) stays dead; a [WithUniqueFor]
// window does not hold it back, since it is the same message. Each
// shard's part is one atomic script, safe to resend; on an error some
// shards may have moved theirs.
func (q *Queue) RetryDead(ctx context.Context, ids ...string) (int, error) {
	return q.settleDead(ctx, "retry", retryDeadScript, ids, q.wake(ctx)...)
}

// DeleteDead deletes the dead letters with the given ids (at most
// [MaxDeadLetterLimit]; with none, every dead letter) and returns how many
// it deleted; ids that are not dead count 0. Each shard's part is one
// atomic script, safe to resend; on an error some shards may have deleted
// theirs.
func (q *Queue) DeleteDead(ctx context.Context, ids ...string) (int, error) {
	return q.settleDead(ctx, "delete", deleteDeadScript, ids)
}

// settleDead runs a dead-letter script on every shard in one round trip:
// a message's shard is not known from its id alone (random ids are
// spread in turn), so each shard looks for every id.
func (q *Queue) settleDead(ctx context.Context, what string, s *redis.Script, ids []string, extra ...func(redis.Pipeliner)) (int, error) {
	if err := q.check(); err != nil {
		return 0, err
	}
	if len(ids) > MaxDeadLetterLimit {
		return 0, fmt.Errorf("%w: %s dead: %d ids, at most %d per call", ErrInvalidArgument, what, len(ids), MaxDeadLetterLimit)
	}
	args := make([]any, 1, 1+len(ids))
	args[0] = uuid.NewString()
	for _, id := range ids {
		if err := checkID(id); err != nil {
			return 0, fmt.Errorf("%s dead: %w", what, err)
		}
		args = append(args, id)
	}
	calls := make([]scriptCall, len(q.shards))
	for i, sh := range q.shards {
		calls[i] = scriptCall{keys: sh.keys, args: args}
	}
	total := 0
	var firstErr error
	for _, cmd := range runAll(ctx, q.client, s, calls, extra...) {
		n, err := cmd.Int64()
		if err != nil {
			firstErr = cmp.Or(firstErr, err)
			continue
		}
		total += int(n)
	}
	if firstErr != nil {
		return total, fmt.Errorf("redlease: %s dead letters of %q: %w", what, q.name, firstErr)
	}
	return total, nil
}
