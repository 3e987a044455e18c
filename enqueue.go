package redlease

import (
	"context"
	"fmt"

	"github.com/google/uuid"
)

// enqueueChunk caps the messages, and enqueueChunkBytes their payload
// bytes, in one enqueue script call.
const (
	enqueueChunk      = 1000
	enqueueChunkBytes = 4 << 20
)

// Enqueue adds a message and returns its id (random unless [WithID] is
// given). It is one round trip, and safe to retry: go-redis resending it
// after a lost reply adds the message once and reports success. Payloads
// are opaque bytes, empty allowed, up to [MaxPayload]. With [WithID], a live
// message with the same id makes Enqueue add nothing and return the id
// with an error that errors.Is [ErrDuplicate]; so does an id that
// [WithUniqueFor] keeps taken.
func (q *Queue) Enqueue(ctx context.Context, payload []byte, opts ...EnqueueOption) (string, error) {
	if err := q.check(); err != nil {
		return "", err
	}
	cfg, id, err := newMessage(payload, opts)
	if err != nil {
		return "", err
	}
	// One shard and request token for every call of send: a hook that
	// calls it again resends the same request, which adds nothing twice.
	s, token := q.shardOf(cfg.id), uuid.NewString()
	send := func(ctx context.Context, headers map[string]string) (string, error) {
		return q.enqueue(ctx, s, token, cfg, id, payload, headers)
	}
	if q.hook != nil {
		return q.hook.Enqueue(ctx, q.name, cfg.headers, send)
	}
	return send(ctx, cfg.headers)
}

// enqueue sends one checked message with headers (which a Hook may have
// added to).
func (q *Queue) enqueue(ctx context.Context, s *shard, token string, cfg enqueueConfig, id string, payload []byte, headers map[string]string) (string, error) {
	if err := checkHeaders(headers); err != nil {
		return "", err
	}
	call := scriptCall{keys: s.keys, args: []any{cfg.delay.Milliseconds(), uniqueArg(cfg), token, id, seal(payload, headers)}}
	codes, err := ints(runAll(ctx, q.client, enqueueScript, []scriptCall{call}, q.wake(ctx)...)[0], 1)
	if err != nil {
		return "", fmt.Errorf("redlease: enqueue on %q: %w", q.name, err)
	}
	switch codes[0] {
	case codeOK:
	case codeUniqueTaken:
		return id, fmt.Errorf("%w: %q is taken in queue %q (WithUniqueFor)", ErrDuplicate, id, q.name)
	default:
		return id, fmt.Errorf("%w: %q is live in queue %q", ErrDuplicate, id, q.name)
	}
	q.observe(ctx, Observation{Kind: MessageEnqueued, Name: q.name, ID: id, N: 1})
	return id, nil
}

// newMessage checks a new message's payload and options, and picks its
// id: WithID's, or a random one.
func newMessage(payload []byte, opts []EnqueueOption) (cfg enqueueConfig, id string, err error) {
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if cfg.err != nil {
		return cfg, "", cfg.err
	}
	if cfg.unique > 0 && cfg.id == "" {
		return cfg, "", fmt.Errorf("%w: WithUniqueFor needs WithID", ErrInvalidArgument)
	}
	if err := checkPayload(payload); err != nil {
		return cfg, "", err
	}
	if err := checkHeaders(cfg.headers); err != nil {
		return cfg, "", err
	}
	id = cfg.id
	if id == "" {
		id = uuid.NewString()
	}
	return cfg, id, nil
}

// randomIDs tells the enqueue and publish scripts that a call's ids are
// random: none can be taken, so they need not look.
const randomIDs = -1

// uniqueArg is the scripts' argument for how long a message's id stays
// taken, in ms: WithUniqueFor's window, or randomIDs.
func uniqueArg(cfg enqueueConfig) int64 {
	if cfg.id == "" {
		return randomIDs
	}
	return cfg.unique.Milliseconds()
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
			call = scriptCall{keys: q.shardOf("").keys, args: make([]any, 3, 3+2*min(enqueueChunk, per, len(payloads)-i))}
			call.args[0], call.args[1], call.args[2] = 0, randomIDs, uuid.NewString()
		}
		ids[i] = uuid.NewString()
		call.args = append(call.args, ids[i], seal(p, nil))
		size += len(p)
		if n := (len(call.args) - 3) / 2; n >= min(enqueueChunk, per) || size >= enqueueChunkBytes || i == len(payloads)-1 {
			calls = append(calls, call)
			call, size = scriptCall{}, 0
		}
	}
	if len(calls) == 0 {
		return ids, nil
	}
	for _, cmd := range runInOrder(ctx, q.client, enqueueScript, calls, q.wake(ctx)...) {
		if err := cmd.Err(); err != nil {
			return nil, fmt.Errorf("redlease: enqueue batch on %q: %w", q.name, err)
		}
	}
	q.observe(ctx, Observation{Kind: MessageEnqueued, Name: q.name, N: len(ids)})
	return ids, nil
}
