package redlease

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// Message is one delivery of a message, claimed under a lease by
// [Queue.Claim] or [Queue.Consume]. Its methods are safe for concurrent use.
type Message struct {
	// ID is the message's id: random, or the one given with [WithID].
	ID string
	// Payload is the message's body, as enqueued.
	Payload []byte
	// Headers are the message's headers ([WithHeaders]), nil if none.
	Headers map[string]string
	// Attempt counts deliveries of this message, 1 on the first, and grows
	// by one with each delivery while the id stays live. So (ID, Attempt)
	// orders the deliveries of one message: a store that refuses writes
	// for an ID with a lower Attempt than it has seen is safe from a
	// consumer whose claim expired. An id enqueued again after its message
	// was acked or dead-lettered starts over at 1, and so does a dead
	// letter [Queue.RetryDead] moves back: a consumer of the earlier life
	// whose claim expired may still be running with a higher Attempt.
	// Where ids are reused or dead letters retried, fence on a version of
	// your own as well.
	Attempt int

	lease
	q      *Queue
	ackErr error // the outcome of an ack folded into the next claim
}

// Queue returns the name of the queue the message was claimed from (a
// topic subscription's is "topic/subscription"), or "" for a Message not
// claimed from a Queue (one a test made).
func (m *Message) Queue() string {
	if m.q == nil {
		return ""
	}
	return m.q.name
}

// Ack ends the claim by deleting the message. If the claim was lost (its
// lease expired, or another consumer claimed the message since), Ack
// changes nothing and returns an error that errors.Is [ErrNotHeld]. After a
// Redis error the claim is unchanged, still renewed if it was, and Ack
// may be called again; a resent Ack that finds its work done succeeds.
func (m *Message) Ack(ctx context.Context) error {
	if m.q.wd.isReleased(&m.lease) {
		return notHeld(m.ID, "already acked or nacked")
	}
	return m.settle(m.ack(ctx))
}

func (m *Message) ack(ctx context.Context) error {
	code, err := run(ctx, m.q.client, ackScript, m.q.shards[m.shard].keys, m.ID, m.token).Int64()
	if err != nil {
		return fmt.Errorf("redlease: ack %q: %w", m.ID, err)
	}
	return m.acked(ctx, code)
}

// acked turns an ack's code into its error, and observes a success.
func (m *Message) acked(ctx context.Context, code int64) error {
	err := claimGone(m.ID, code)
	if err == nil {
		m.q.observe(ctx, Observation{Kind: MessageAcked, Name: m.q.name, ID: m.ID, Attempt: m.Attempt})
	}
	return err
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
// its last attempt or the cause given with [WithCause] wraps
// [ErrSkipRetry]. A lost claim gives an error that errors.Is
// [ErrNotHeld]. After a Redis error the claim is unchanged and Nack may be
// called again.
func (m *Message) Nack(ctx context.Context, opts ...NackOption) error {
	if m.q.wd.isReleased(&m.lease) {
		return notHeld(m.ID, "already acked or nacked")
	}
	var cfg nackConfig
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	return m.settle(m.nack(ctx, cfg.cause))
}

// NackOption configures one [Message.Nack] call.
type NackOption func(*nackConfig)

type nackConfig struct{ cause error }

// WithCause gives the reason a Nack fails the message: if the message is
// dead-lettered, [DeadLetter.Err] keeps cause's text (its first
// [MaxErrLength] bytes), and a cause that wraps [ErrSkipRetry]
// dead-letters it at once. Consume nacks with the handler's error.
func WithCause(cause error) NackOption { return func(c *nackConfig) { c.cause = cause } }

// MaxErrLength is the most of an error's text a dead letter keeps.
const MaxErrLength = 1024

// errText is cause's text, cut to MaxErrLength bytes on a rune boundary.
func errText(cause error) string {
	if cause == nil {
		return ""
	}
	s := cause.Error()
	if len(s) <= MaxErrLength {
		return s
	}
	// Back off to the start of the rune the cut falls in, if any.
	cut := MaxErrLength
	for i := cut; i > MaxErrLength-utf8.UTFMax && i > 0; i-- {
		if utf8.RuneStart(s[i]) {
			cut = i
			break
		}
	}
	return s[:cut]
}

func (m *Message) nack(ctx context.Context, cause error) error {
	delay := max(m.q.backoff(m.Attempt), 0)
	skip := 0
	if errors.Is(cause, ErrSkipRetry) {
		skip = 1
	}
	call := scriptCall{keys: m.q.shards[m.shard].keys, args: []any{m.ID, m.token, delay.Milliseconds(), m.q.maxAttempts, m.q.deadLimit, skip, errText(cause)}}
	code, err := runAll(ctx, m.q.client, nackScript, []scriptCall{call}, m.q.wake(ctx)...)[0].Int64()
	if err != nil {
		return fmt.Errorf("redlease: nack %q: %w", m.ID, err)
	}
	switch code {
	case codeOK:
		m.q.observe(ctx, Observation{Kind: MessageNacked, Name: m.q.name, ID: m.ID, Attempt: m.Attempt, Err: cause})
	case codeBuried:
		m.q.logger().Warn("redlease: message dead-lettered", "queue", m.q.name, "id", m.ID, "attempt", m.Attempt, "err", cause)
		m.q.observe(ctx, Observation{Kind: MessageDead, Name: m.q.name, ID: m.ID, Attempt: m.Attempt, N: 1, Err: cause})
	}
	return claimGone(m.ID, code)
}

// Extend sets the claim to end d from now (by the Redis clock). A d under a
// millisecond is an error that changes nothing; a lost claim gives an error
// that errors.Is [ErrNotHeld].
func (m *Message) Extend(ctx context.Context, d time.Duration) error {
	return m.q.wd.extend(&m.lease, "extend", "already acked or nacked", d, func() (int64, error) {
		codes, err := ints(run(ctx, m.q.client, extendScript, m.q.shards[m.shard].keys, m.ID, m.token, d.Milliseconds()), 1)
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
		return notHeld(id, "claim lease expired, or the message is gone")
	case codeTaken:
		return notHeld(id, "claimed by another consumer")
	}
	return errUnexpected(code)
}

// extendAll renews a batch of claims for the watchdog: one script call per
// shard and scriptBatch claims, all in one round trip.
func (q *Queue) extendAll(ctx context.Context, batch []renewal) ([]int64, []error) {
	groups := groupBatch(batch, func(ls *lease) int { return ls.shard }, scriptBatch)
	calls := make([]scriptCall, len(groups))
	for g, idx := range groups {
		args := make([]any, 0, 3*len(idx))
		for _, i := range idx {
			args = append(args, batch[i].ls.rkey, batch[i].ls.token, batch[i].ttl.Milliseconds())
		}
		calls[g] = scriptCall{keys: q.shards[batch[idx[0]].ls.shard].keys, args: args}
	}
	return spreadReplies(runAll(ctx, q.client, extendScript, calls), groups, len(batch))
}
