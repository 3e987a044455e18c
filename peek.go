package redlease

import (
	"context"
	"fmt"
	"strconv"
)

// MaxPeek bounds the messages one [Queue.Peek] returns, and reads from
// each shard, so that one read never blocks Redis for long.
const MaxPeek = 1000

// ReadyMessage is a ready message as [Queue.Peek] read it: not claimed,
// so it has no token and cannot be acked.
type ReadyMessage struct {
	// ID is the message's id.
	ID string
	// Payload is the message's body, as enqueued.
	Payload []byte
	// Headers are the message's headers ([WithHeaders]), nil if none.
	Headers map[string]string
	// Attempts counts the deliveries it had so far: 0 for a message never
	// claimed (or a retried dead letter), more for one that was nacked or
	// whose lease ended. Its next claim is attempt Attempts+1.
	Attempts int
}

// Peek returns up to n ready messages (at most [MaxPeek]) in about the
// order claims would take them, without claiming, removing or changing
// anything. Each shard's part is read atomically, in claim order, by one
// script; all shards' parts come in one round trip, interleaved (the
// first of each shard, then the second, and so on) since claims go round
// the shards in turn. Delayed messages are not included, even due ones,
// which a claim takes first; nor are messages in flight. A message may be
// claimed by the time Peek returns.
func (q *Queue) Peek(ctx context.Context, n int) ([]ReadyMessage, error) {
	if err := q.check(); err != nil {
		return nil, err
	}
	if n < 1 {
		return nil, fmt.Errorf("%w: peek: n %d must be at least 1", ErrInvalidArgument, n)
	}
	n = min(n, MaxPeek)
	calls := make([]scriptCall, len(q.shards))
	for i, s := range q.shards {
		calls[i] = scriptCall{keys: s.keys, args: []any{n}}
	}
	parts := make([][]ReadyMessage, len(q.shards))
	for i, cmd := range runAll(ctx, q.client, readyScript, calls) {
		res, err := cmd.StringSlice()
		if err == nil && len(res)%3 != 0 {
			err = errUnexpected(res)
		}
		if err != nil {
			return nil, fmt.Errorf("redlease: peek %q: %w", q.name, err)
		}
		for j := 0; j < len(res); j += 3 {
			attempts, err := strconv.Atoi(res[j+2])
			if err != nil || attempts < 0 {
				return nil, fmt.Errorf("redlease: peek %q: malformed attempts %q of %q", q.name, res[j+2], res[j])
			}
			payload, headers := unseal(res[j+1])
			parts[i] = append(parts[i], ReadyMessage{ID: res[j], Payload: payload, Headers: headers, Attempts: attempts})
		}
	}
	out := make([]ReadyMessage, 0, n)
	for k := 0; len(out) < n; k++ {
		took := false
		for _, p := range parts {
			if k < len(p) && len(out) < n {
				out = append(out, p[k])
				took = true
			}
		}
		if !took {
			break
		}
	}
	return out, nil
}
