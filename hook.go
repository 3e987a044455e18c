package redlease

import (
	"context"
	"fmt"
	"time"
)

// A Hook observes a Locker, Queue or Topic: what happens to its leases and
// messages, and each message's way from Enqueue to its handler. Install
// one with [WithHook]; the module github.com/redlease/redlease/redleaseotel
// has one for OpenTelemetry metrics and traces. A Hook's methods run on the
// goroutine doing the work, so they must be quick, must not block, and
// must be safe for concurrent use. Observe may run on the goroutine that
// renews every lease of its Locker or Queue: it must not call Close.
type Hook interface {
	// Observe is told of each Observation as it happens.
	Observe(ctx context.Context, o Observation)
	// Enqueue wraps each [Queue.Enqueue] and [Topic.Publish]: it may add
	// headers (a trace context, say) to a copy of headers, which may be
	// nil and must not be changed, and pass it to next, whose id and error
	// it returns. dest is the queue's or topic's name. It should call next
	// once: on a Queue a second call is a resend that adds nothing again,
	// but on a Topic it publishes the message again.
	Enqueue(ctx context.Context, dest string, headers map[string]string, next EnqueueFunc) (string, error)
	// Handle wraps each call of a [Queue.Consume] handler: it calls next,
	// perhaps with a derived context, and returns what next returns.
	Handle(ctx context.Context, m *Message, next func(context.Context, *Message) error) error
}

// EnqueueFunc sends one message with the given headers and returns its id.
type EnqueueFunc func(ctx context.Context, headers map[string]string) (string, error)

// ObservationKind says what an [Observation] reports.
type ObservationKind int

// The kinds of Observation, and the fields each sets besides Kind and Name.
const (
	// LockAcquired: a lock was obtained (Fence, Wait, Latency, HandedOff).
	LockAcquired ObservationKind = iota + 1
	// LockLost: a held lease ended before its release (Fence, Err).
	LockLost
	// LockRenewed: the watchdog renewed a lease (Fence).
	LockRenewed
	// LockRenewFailed: a renewal failed on a Redis error; the lease is
	// kept and renewed again (Fence, Err).
	LockRenewFailed
	// MessageEnqueued: N messages were added (ID for a single one; a
	// batch, which [Hook.Enqueue] does not wrap, has none).
	MessageEnqueued
	// MessageClaimed: a message was claimed (ID, Attempt).
	MessageClaimed
	// MessageAcked: a message was acked (ID, Attempt).
	MessageAcked
	// MessageNacked: a message was nacked and will be retried (ID,
	// Attempt, Err: the cause, if any). A Nack resent after a lost reply
	// that had dead-lettered the message is reported as MessageNacked.
	MessageNacked
	// MessageDead: N messages were dead-lettered: a nacked one (N 1, ID,
	// Attempt, Err), or those whose last lease ended, found by a reclaim
	// (N, no ID).
	MessageDead
	// MessagesReclaimed: N claims whose lease had ended were taken back
	// by a reclaim, to ready or, on their last attempt, dead (those also
	// reported as MessageDead).
	MessagesReclaimed
)

// String returns the kind's name, as in "LockAcquired".
func (k ObservationKind) String() string {
	switch k {
	case LockAcquired:
		return "LockAcquired"
	case LockLost:
		return "LockLost"
	case LockRenewed:
		return "LockRenewed"
	case LockRenewFailed:
		return "LockRenewFailed"
	case MessageEnqueued:
		return "MessageEnqueued"
	case MessageClaimed:
		return "MessageClaimed"
	case MessageAcked:
		return "MessageAcked"
	case MessageNacked:
		return "MessageNacked"
	case MessageDead:
		return "MessageDead"
	case MessagesReclaimed:
		return "MessagesReclaimed"
	}
	return "ObservationKind(unknown)"
}

// An Observation is one thing a Locker, Queue or Topic did; which fields
// are set depends on Kind.
type Observation struct {
	Kind ObservationKind
	// Name is the lock's key, or the queue's (a topic subscription's
	// queue is named "topic/subscription"; a Publish reports the topic's
	// name).
	Name string
	// Shared is true for a shared lease ([Locker.ObtainShared]).
	Shared bool
	// ID is the message's id.
	ID string
	// Attempt is the message's delivery count ([Message.Attempt]).
	Attempt int
	// Fence is the lock's fencing token.
	Fence int64
	// N counts the messages of MessageEnqueued, MessageDead and
	// MessagesReclaimed.
	N int
	// Latency is how long the call that acquired the lock took.
	Latency time.Duration
	// Wait is the part of Latency spent waiting for other holders: 0 when
	// the lock was free on the first try.
	Wait time.Duration
	// HandedOff is true when the lock was granted to this waiter by its
	// previous holder's release.
	HandedOff bool
	// Err is the error or cause, if any.
	Err error
}

// WithHook adds h to a Locker, Queue or Topic (a Topic's subscriptions
// inherit it). Several hooks run in the order given: the first one's
// Enqueue and Handle wrap the others'. A nil hook is an error.
func WithHook(h Hook) Option { return hookOption{h} }

type hookOption struct{ h Hook }

var errNilHook = fmt.Errorf("%w: nil hook", ErrInvalidArgument)

func (o hookOption) applyLocker(c *lockerConfig) {
	if o.h == nil {
		c.err = errNilHook
		return
	}
	c.hook = chain(c.hook, o.h)
}

func (o hookOption) applyQueue(c *queueConfig) {
	if o.h == nil {
		c.err = errNilHook
		return
	}
	c.hook = chain(c.hook, o.h)
}

// chain returns a Hook that runs outer, then inner (either may be nil).
func chain(outer, inner Hook) Hook {
	if outer == nil {
		return inner
	}
	return hookChain{outer, inner}
}

type hookChain struct{ outer, inner Hook }

func (c hookChain) Observe(ctx context.Context, o Observation) {
	c.outer.Observe(ctx, o)
	c.inner.Observe(ctx, o)
}

func (c hookChain) Enqueue(ctx context.Context, dest string, headers map[string]string, next EnqueueFunc) (string, error) {
	return c.outer.Enqueue(ctx, dest, headers, func(ctx context.Context, headers map[string]string) (string, error) {
		return c.inner.Enqueue(ctx, dest, headers, next)
	})
}

func (c hookChain) Handle(ctx context.Context, m *Message, next func(context.Context, *Message) error) error {
	return c.outer.Handle(ctx, m, func(ctx context.Context, m *Message) error {
		return c.inner.Handle(ctx, m, next)
	})
}

// observe tells the Queue's hook, if any, of o.
func (q *Queue) observe(ctx context.Context, o Observation) {
	if q.hook != nil {
		q.hook.Observe(ctx, o)
	}
}

// observe tells the Topic's hook, if any, of o.
func (t *Topic) observe(ctx context.Context, o Observation) {
	if t.hook != nil {
		t.hook.Observe(ctx, o)
	}
}

// observe tells the Locker's hook, if any, of o.
func (l *Locker) observe(ctx context.Context, o Observation) {
	if l.hook != nil {
		l.hook.Observe(ctx, o)
	}
}
