package redlease

import (
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Defaults used when no option says otherwise.
const (
	// DefaultPrefix namespaces every key and channel the library uses.
	DefaultPrefix = "redlease"
	// DefaultTTL is the lease length of a lock.
	DefaultTTL = 30 * time.Second
	// DefaultGrantTTL is how long a lease handed to a waiter lasts until
	// the waiter's Locker renews it.
	DefaultGrantTTL = 2 * time.Second
)

// Option configures a Locker, or a Queue: every Option is also a
// QueueOption. An invalid option does not panic: its error is returned by
// every call on the Locker or Queue.
type Option interface {
	QueueOption
	applyLocker(*lockerConfig)
}

type lockerConfig struct {
	prefix string
	log    *slog.Logger // nil: slog.Default(), Warn and above
	hook   Hook         // nil: none
	err    error
}

type prefixOption string

func (p prefixOption) applyLocker(c *lockerConfig) {
	if err := validPrefix(string(p)); err != nil {
		c.err = err
		return
	}
	c.prefix = string(p)
}

func (p prefixOption) applyQueue(c *queueConfig) {
	if err := validPrefix(string(p)); err != nil {
		c.err = err
		return
	}
	c.prefix = string(p)
}

// WithPrefix sets the namespace of every key and channel a Locker or Queue
// uses (default "redlease"). The prefix must be non-empty and must not
// contain '{' or '}', which would change how Redis Cluster places keys.
func WithPrefix(prefix string) Option { return prefixOption(prefix) }

func validPrefix(prefix string) error {
	if prefix == "" || strings.ContainsAny(prefix, "{}") {
		return fmt.Errorf("%w: prefix %q must be non-empty and free of '{' and '}'", ErrInvalidArgument, prefix)
	}
	return nil
}

// WithLogger sets where a Locker, Queue or Topic logs what it recovers
// from by itself. Without it, records at Warn level and above go to
// [slog.Default] (as it is when each is logged), and the rest are dropped.
//
// Warn: a lock's lease lost ("redlease: lock lost", attributes key,
// fence, shared, err) or its renewal failed; a claim Consume renews lost
// ("redlease: claim lost", queue, id, attempt, err) or its renewal
// failed; a message dead-lettered (queue, id, attempt, err); a Topic
// listener's errors and resubscriptions. [Queue.Consume], when no
// [WithErrorHandler] is given, logs its handler's errors at Warn level and
// panics at Error level with the stack (queue, id, attempt, err), and its
// own Redis errors at Warn level (queue, err). Info: claims a reclaim gave
// back (queue, shard, ready, dead), a lease stopped by Close, and a lease
// without the watchdog ([WithoutWatchdog]) that ran out.
// [Locker.Every] logs its function's errors and panics at Error level and
// its own Redis errors at Warn level (name, slot when known, err). A nil
// logger is an error.
func WithLogger(log *slog.Logger) Option { return loggerOption{log} }

type loggerOption struct{ log *slog.Logger }

var errNilLogger = fmt.Errorf("%w: nil logger", ErrInvalidArgument)

func (o loggerOption) applyLocker(c *lockerConfig) {
	if o.log == nil {
		c.err = errNilLogger
		return
	}
	c.log = o.log
}

func (o loggerOption) applyQueue(c *queueConfig) {
	if o.log == nil {
		c.err = errNilLogger
		return
	}
	c.log = o.log
}

// LockOption configures one [Locker.TryObtain], Obtain or Do call. An invalid option
// makes that call return an error wrapping [ErrInvalidArgument].
type LockOption func(*lockConfig)

type lockConfig struct {
	ttl      time.Duration
	grantTTL time.Duration
	watchdog bool
	retry    RetryStrategy // nil: the Locker's default
	replicas int           // WithReplicaAck
	wait     time.Duration // WithReplicaAck
	limit    int           // WithLimit; 0: none given
	shared   bool          // set by the shared calls, not by an option
	err      error
}

func newLockConfig(opts []LockOption) (lockConfig, error) {
	c := lockConfig{ttl: DefaultTTL, grantTTL: DefaultGrantTTL, watchdog: true}
	if len(opts) == 0 {
		return c, nil // c stays on the stack: the common call allocates nothing here
	}
	return applyLockOptions(c, opts)
}

func applyLockOptions(c lockConfig, opts []LockOption) (lockConfig, error) {
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	return c, c.err
}

// WithTTL sets the lease length (default 30s). With the watchdog on, the
// lease is renewed every TTL/3, so the TTL bounds how long a crashed holder
// keeps others waiting. It must be at least one millisecond.
func WithTTL(d time.Duration) LockOption {
	return durationOption("ttl", d, func(c *lockConfig) { c.ttl = d })
}

// durationOption sets a duration of at least one millisecond with set, or
// records why d is refused.
func durationOption(what string, d time.Duration, set func(*lockConfig)) LockOption {
	return func(c *lockConfig) {
		if d < time.Millisecond {
			c.err = fmt.Errorf("%w: %s %v must be at least 1ms", ErrInvalidArgument, what, d)
			return
		}
		set(c)
	}
}

// WithGrantTTL sets how long a lease that a release hands to this Obtain,
// while it waits, lasts before its Locker renews it to the full TTL
// (default [DefaultGrantTTL], 2s; never more than the TTL). It bounds how
// long a waiter whose process dies just as the lock reaches it holds up the
// others. It must be at least one millisecond.
func WithGrantTTL(d time.Duration) LockOption {
	return durationOption("grant ttl", d, func(c *lockConfig) { c.grantTTL = d })
}

// WithoutWatchdog turns off automatic renewal: the lease ends after its TTL
// unless the holder calls Refresh. Lost still closes when the lease has
// ended by the client's clock.
func WithoutWatchdog() LockOption {
	return func(c *lockConfig) { c.watchdog = false }
}

// WithReplicaAck makes an acquisition wait, with WAIT on the same
// connection, until at least replicas replicas have the lease, for at most
// timeout; if too few acknowledge, the lease is released and the call fails
// with an error that errors.Is [ErrNotObtained]. It narrows, but does not
// close, the window in which a failover loses a lock: WAIT does not make
// Redis strongly consistent. The timeout must stay below the client's read
// timeout. Not available on a quorum Locker.
func WithReplicaAck(replicas int, timeout time.Duration) LockOption {
	return func(c *lockConfig) {
		if replicas < 1 || timeout < time.Millisecond {
			c.err = fmt.Errorf("%w: replica ack needs replicas >= 1 and a timeout of at least 1ms, got %d and %v", ErrInvalidArgument, replicas, timeout)
			return
		}
		c.replicas, c.wait = replicas, timeout
	}
}

// MaxLimit is the largest [WithLimit].
const MaxLimit = 1 << 20

// WithLimit makes a shared lease one of at most n on its lock: a semaphore
// of n permits, each a lease that expires if its holder crashes. Without
// it any number of shared leases hold a lock at once. Callers sharing a
// lock name should give the same n: each acquisition compares the number
// of shared leases held with its own n. It applies to
// [Locker.TryObtainShared], ObtainShared and DoShared only; n must be
// between 1 and [MaxLimit].
func WithLimit(n int) LockOption {
	return func(c *lockConfig) {
		if n < 1 || n > MaxLimit {
			c.err = fmt.Errorf("%w: limit %d must be between 1 and %d", ErrInvalidArgument, n, MaxLimit)
			return
		}
		c.limit = n
	}
}

// WithRetry sets how long Obtain waits between its own checks of Redis and
// when it gives up. A queued waiter is handed the lock by the release that
// frees it, so its checks only matter when that notice is lost or the
// holder's lease expires; the default waits 250ms, doubling up to 1s,
// until the context ends. A quorum Locker's waiters, which do not queue,
// try again on the strategy's schedule (default 16ms, doubling up to 1s).
func WithRetry(s RetryStrategy) LockOption {
	return func(c *lockConfig) {
		if s == nil {
			c.err = fmt.Errorf("%w: nil retry strategy", ErrInvalidArgument)
			return
		}
		if v, ok := s.(interface{ validate() error }); ok {
			if err := v.validate(); err != nil {
				c.err = err
				return
			}
		}
		c.retry = s
	}
}

// Queue defaults.
const (
	// DefaultLease is how long a claim lasts unless renewed.
	DefaultLease = 30 * time.Second
	// DefaultMaxAttempts is how many times a message is delivered before it
	// is dead-lettered.
	DefaultMaxAttempts = 5
	// MaxPayload is the largest payload Enqueue accepts.
	MaxPayload = 1 << 20
	// MaxIDLength is the longest message id [WithID] accepts.
	MaxIDLength = 1024
	// DefaultDeadLetterLimit is how many dead letters a queue keeps.
	DefaultDeadLetterLimit = 10_000
	// MaxDeadLetterLimit is the largest [WithDeadLetterLimit], and the
	// most ids one RetryDead or DeleteDead call takes: each call is one
	// script per shard, which must not block Redis for long (about 0.1s
	// for 10,000 dead letters of 1 KiB).
	MaxDeadLetterLimit = 10_000
	// DefaultShutdownTimeout is how long Consume's running handlers have to
	// finish once its context ends, before their contexts are cancelled.
	DefaultShutdownTimeout = 30 * time.Second
)

// DefaultRetryBackoff waits 1s before the second attempt, doubling with
// each attempt up to 10 minutes.
func DefaultRetryBackoff(attempt int) time.Duration {
	return min(time.Second<<min(max(attempt-1, 0), 10), 10*time.Minute)
}

// QueueOption configures a Queue. An invalid option does not panic: its
// error is returned by every call on the Queue.
type QueueOption interface {
	applyQueue(*queueConfig)
}

type queueConfig struct {
	prefix      string
	shards      int
	lease       time.Duration
	maxAttempts int
	deadLimit   int
	backoff     func(attempt int) time.Duration
	log         *slog.Logger // nil: slog.Default(), Warn and above
	hook        Hook         // nil: none
	err         error
}

type queueOption func(*queueConfig)

func (o queueOption) applyQueue(c *queueConfig) { o(c) }

// WithShards splits the queue into n shards (default 1, at most 1024),
// each under its own hash tag, so that Redis Cluster spreads them over its
// masters. Producers spread messages over the shards (by id with [WithID],
// so duplicates are still caught); consumers claim from the shards in
// turn. Every guarantee holds per message; order across shards is not
// kept. All producers and consumers of a queue must use the same n.
func WithShards(n int) QueueOption {
	return queueOption(func(c *queueConfig) {
		if n < 1 || n > 1024 {
			c.err = fmt.Errorf("%w: shards %d must be 1 to 1024", ErrInvalidArgument, n)
			return
		}
		c.shards = n
	})
}

// WithLease sets how long a claim lasts unless renewed (default 30s). Consume
// renews claims every lease/3 while their handlers run; a crashed consumer's
// messages are delivered again once their lease ends.
func WithLease(d time.Duration) QueueOption {
	return queueOption(func(c *queueConfig) {
		if d < time.Millisecond {
			c.err = fmt.Errorf("%w: lease %v must be at least 1ms", ErrInvalidArgument, d)
			return
		}
		c.lease = d
	})
}

// WithMaxAttempts sets how many times a message is delivered before a
// failure moves it to the dead-letter list (default 5; at least 1).
func WithMaxAttempts(n int) QueueOption {
	return queueOption(func(c *queueConfig) {
		if n < 1 {
			c.err = fmt.Errorf("%w: max attempts %d must be at least 1", ErrInvalidArgument, n)
			return
		}
		c.maxAttempts = n
	})
}

// WithDeadLetterLimit sets how many dead letters the queue keeps (default
// [DefaultDeadLetterLimit], 10,000; 1 to [MaxDeadLetterLimit]): when a
// message dies past the limit, the oldest dead letters are deleted. Each
// shard keeps its share, n divided by the shards and rounded up. Lowering
// the limit deletes the excess over the next few deaths, up to 100 each.
func WithDeadLetterLimit(n int) QueueOption {
	return queueOption(func(c *queueConfig) {
		if n < 1 || n > MaxDeadLetterLimit {
			c.err = fmt.Errorf("%w: dead letter limit %d must be 1 to %d", ErrInvalidArgument, n, MaxDeadLetterLimit)
			return
		}
		c.deadLimit = n
	})
}

// WithRetryBackoff sets how long a failed message waits before its next
// delivery, given the attempt that failed (1 for the first). A negative
// result counts as zero. The default is [DefaultRetryBackoff].
func WithRetryBackoff(f func(attempt int) time.Duration) QueueOption {
	return queueOption(func(c *queueConfig) {
		if f == nil {
			c.err = fmt.Errorf("%w: nil retry backoff", ErrInvalidArgument)
			return
		}
		c.backoff = f
	})
}

// EnqueueOption configures one Enqueue call.
type EnqueueOption func(*enqueueConfig)

type enqueueConfig struct {
	delay   time.Duration
	id      string
	unique  time.Duration
	headers map[string]string // WithHeaders'
	err     error
}

// WithDelay makes the message ready only after d (millisecond resolution,
// by the Redis server's clock). A negative d is an error.
func WithDelay(d time.Duration) EnqueueOption {
	return func(c *enqueueConfig) {
		if d < 0 {
			c.err = fmt.Errorf("%w: negative delay %v", ErrInvalidArgument, d)
			return
		}
		c.delay = d
	}
}

// WithID gives the message its id instead of a random one. While a message
// with that id is ready, delayed or in flight, enqueueing it again adds
// nothing and returns [ErrDuplicate]; once it is acked or dead-lettered the id
// is free again, unless [WithUniqueFor] keeps it taken longer. An id is 1
// to [MaxIDLength] bytes of anything.
func WithID(id string) EnqueueOption {
	return func(c *enqueueConfig) {
		if err := checkID(id); err != nil {
			c.err = err
			return
		}
		c.id = id
	}
}

// WithUniqueFor keeps the message's id, given with [WithID], taken for d
// after the enqueue (millisecond resolution, by the Redis server's clock),
// even once the message is acked or dead-lettered: until then, every
// Enqueue of that id adds nothing and returns [ErrDuplicate], with or
// without WithUniqueFor. So a job that several schedulers enqueue runs
// once per window. On a Topic, the id is taken for the whole topic. d
// must be at least a millisecond, and WithID must be given too.
func WithUniqueFor(d time.Duration) EnqueueOption {
	return func(c *enqueueConfig) {
		if d < time.Millisecond {
			c.err = fmt.Errorf("%w: unique window %v must be at least 1ms", ErrInvalidArgument, d)
			return
		}
		c.unique = d
	}
}

// checkID refuses a message id that is empty or longer than MaxIDLength.
func checkID(id string) error {
	if id == "" || len(id) > MaxIDLength {
		return fmt.Errorf("%w: message id must be 1 to %d bytes, got %d", ErrInvalidArgument, MaxIDLength, len(id))
	}
	return nil
}

// ConsumeOption configures Consume.
type ConsumeOption func(*consumeConfig)

type consumeConfig struct {
	concurrency int
	onError     func(error)
	shutdown    time.Duration
	err         error
}

// WithConcurrency sets how many handlers run at once (default 1).
func WithConcurrency(n int) ConsumeOption {
	return func(c *consumeConfig) {
		if n < 1 {
			c.err = fmt.Errorf("%w: concurrency %d must be at least 1", ErrInvalidArgument, n)
			return
		}
		c.concurrency = n
	}
}

// WithShutdownTimeout sets how long handlers still running when Consume's
// context ends have to finish (default [DefaultShutdownTimeout], 30s; 0:
// none). Then their contexts are cancelled, with a cause that names the
// timeout, and what they return within a second is acked or nacked as
// usual. A handler that has still not returned is abandoned: Consume stops
// renewing its claim (the handler may still Ack or Nack it while the lease
// lasts), drops whatever it returns, and returns; the message is delivered
// again once its lease ends. A negative d is an error.
func WithShutdownTimeout(d time.Duration) ConsumeOption {
	return func(c *consumeConfig) {
		if d < 0 {
			c.err = fmt.Errorf("%w: negative shutdown timeout %v", ErrInvalidArgument, d)
			return
		}
		c.shutdown = d
	}
}

// WithErrorHandler receives the errors Consume recovers from by itself:
// Redis errors while claiming, acking or reclaiming, and handler errors and
// panics (each message is nacked all the same). It must not block. Without
// it, Consume logs them to the Queue's logger ([WithLogger]), except those
// that only say Consume's context ended.
func WithErrorHandler(f func(error)) ConsumeOption {
	return func(c *consumeConfig) { c.onError = f }
}
