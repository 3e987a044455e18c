// Package redlease provides distributed locks, a reliable work queue and
// topics on Redis, all built on one primitive: the lease, a key in Redis
// that says who holds something and until when.
//
// # Locks
//
// A [Locker] hands out leases on named locks; share one per process and
// Redis, and [Locker.Close] it when done. [Locker.TryObtain] makes one
// attempt, [Locker.Obtain] waits for the lock, and [Locker.Do] obtains it,
// runs a function and releases it. The first two return a [Lock], which the
// holder gives back with [Lock.Release].
//
//	err := locker.Do(ctx, "invoice:42", func(ctx context.Context) error {
//		return charge(ctx, 42) // ctx is cancelled if the lease is lost
//	})
//
// Do in every process runs the function in every process, one after
// another. For a job that must run once per period across a fleet, use
// [Locker.Every]: it runs the job under the lock of its name, at most once
// per period slot on Redis's clock, on one of the processes that call it.
//
//	err := locker.Every(ctx, "nightly-report", 24*time.Hour, buildReport)
//
// # Leases
//
// A lease lasts its TTL ([WithTTL], default [DefaultTTL]) unless it is
// renewed, and Redis expires it on its own clock: a holder that crashes
// keeps others waiting until its lease's TTL runs out, no longer. Each lease has a random token
// ([Lock.Token]), and every release, renewal and refresh compares it first,
// in the same Lua script: a holder never touches a lease that is no longer
// its own, and learns that it lost it from an error that errors.Is
// [ErrNotHeld].
//
// # Fences
//
// Each lease carries a fencing token, [Lock.Fence]. For one lock name,
// fences only grow: a lease's fence is greater than that of every earlier
// lease on the name, whoever held it (not always by one). A lease is a
// promise with a deadline: a holder whose process pauses (GC, swap, a
// stopped VM) past its lease can act on a lock it no longer holds, and no
// lock service can prevent that. A resource that remembers the highest
// fence it accepted and refuses lower ones, atomically with the write, is
// safe from such a holder; see the package example.
//
// # Watchdog and Lost
//
// A Locker's watchdog renews each lease it holds about every TTL/3, until
// Release; one loop serves all the Locker's leases, in batched script
// calls. [WithoutWatchdog] turns renewal off: the holder then calls
// [Lock.Refresh] itself.
//
// [Lock.Lost] returns a channel that is closed when the lease is no longer
// held: at once when a renewal or a Refresh finds it expired or taken, and,
// if renewals cannot get through, when the lease must have ended by the
// client's own clock (counted from when the request was sent, with a
// margin for clock drift). It also closes on Release and on Close, and
// [Lock.Err] says why. Do cancels its function's context when the lease is
// lost. A paused process cannot notice in time: that is what fences are for.
//
// # Waiting
//
// Obtain's waiters queue in Redis, first come, first served across every
// process, and do not poll. The release that frees a lock hands it to the
// oldest waiter still listening, in the same script (its token, a short
// grant TTL, the next fence), and tells only that waiter's Locker, so the
// waiter's Obtain returns without another round trip; while waiters are
// queued, nobody else can take the lock. A Locker listens on one channel
// (on a Redis Cluster, one per hash slot it waits in), so a waiter whose
// process died is skipped at once; one that dies just as the lock reaches
// it holds it at most its grant TTL ([WithGrantTTL], 2s by default). A
// waiter checks Redis itself when its [RetryStrategy]'s wait passes
// ([WithRetry]; by default after 250ms, doubling up to 1s) or when the
// holder's lease must have ended: after a lost notice, or when the holder
// crashed. It gives up when its context ends or the strategy says so. A
// quorum Locker's waiters do not queue: they try again on that schedule.
//
// # Shared leases
//
// [Locker.TryObtainShared], [Locker.ObtainShared] and [Locker.DoShared]
// take a shared lease: a read-write lock's read side, or with [WithLimit]
// one of n permits of a semaphore. One name is one lock: an exclusive
// lease and shared leases exclude each other, and shared leases hold it
// together. Each shared lease is a lease in full (TTL, watchdog, Lost,
// Refresh, Release), so a crashed holder's share ends with its TTL while
// the others keep theirs. Waiting writers come first: while an exclusive
// Obtain waits, new shared leases queue behind it, so readers cannot
// starve it. A shared lease's fence is the fence counter when it was
// granted: at least every earlier lease's fence, below every later
// exclusive lease's.
//
// # Quorum locks
//
// [NewQuorumLocker] returns a Locker with the same API whose leases live on
// a majority of independent Redis masters (the Redlock scheme), so its
// locks survive the loss of a minority of them. Its fences still only
// grow. It makes Redis no more a consensus system than before: fence at
// the resource where correctness matters.
//
// # Queue
//
// A [Queue] is a work queue in which every message is claimed under a
// lease. Producers add messages with [Queue.Enqueue] or
// [Queue.EnqueueBatch]; consumers take them one at a time with
// [Queue.Claim] and settle each [Message] with [Message.Ack],
// [Message.Nack] or [Message.Extend], or run a pool of handlers with
// [Queue.Consume], which renews claims every lease/3 while handlers run,
// acks on a nil return, and nacks on an error or a panic.
//
// A message is in one of four states, which [Queue.Stats] counts:
//
//   - ready: waiting to be claimed, in the order it became ready.
//   - delayed: waiting for its [WithDelay], or for the retry backoff
//     ([WithRetryBackoff]) after a Nack; once due, it is claimed before the
//     ready ones.
//   - in flight: claimed under a lease that lasts [WithLease] (default
//     [DefaultLease]) unless extended. Ack deletes the message; Nack makes
//     it delayed (ready at once if the backoff is zero). A message whose
//     lease ends is delivered again: [Queue.Reclaim] (which Consume runs)
//     makes it ready, and a Claim that finds no other work takes it.
//   - dead: its last attempt ([WithMaxAttempts], default
//     [DefaultMaxAttempts]) was nacked or expired; or, at any attempt, a
//     Nack's cause ([WithCause]) or its handler's error wrapped
//     [ErrSkipRetry]. A [DeadLetter] keeps its id, payload, attempts, the
//     last failure's error text and when it died.
//
// [Queue.DeadLetters] reads the dead-letter list, oldest first, and
// [Queue.DeadLettersAfter] pages through it. [Queue.RetryDead] moves dead
// letters back to ready with their id and payload, starting over at
// attempt 1, and [Queue.DeleteDead] deletes them; given no ids, each takes
// them all, in one atomic script per shard that is safe to resend. The
// list keeps one dead letter per id, the latest, and is capped by
// [WithDeadLetterLimit] (default [DefaultDeadLetterLimit]): past it the
// oldest are deleted.
//
// At any instant at most one consumer holds a valid claim on a message; a
// consumer whose claim was lost cannot ack, nack or extend it (the call
// returns an error that errors.Is [ErrNotHeld]); and no message is lost:
// each one ends acked or dead. Delivery is at least once, though: a claim
// whose lease ends is delivered again, and a handler whose ack did not
// arrive sees its message again. Make handlers idempotent, or fence their
// writes with (ID, Attempt): [Message.Attempt] grows by one with each
// delivery while the id is live, so it orders the deliveries of a message
// as a fence orders the leases of a lock. An id enqueued again, or a dead
// letter retried, starts over at attempt 1 while a consumer of its
// earlier life may still run: fence on a version of your own as well
// there. [WithID] gives a message an id of your own and refuses a
// duplicate with [ErrDuplicate] while that id is live; [WithUniqueFor]
// keeps the id taken for a while after the enqueue, even once the message
// is acked or dead. [WithShards] splits a queue into shards that Redis
// Cluster can spread over its masters.
//
// When Consume's context ends, it stops claiming and gives running
// handlers [WithShutdownTimeout] (default [DefaultShutdownTimeout]) to
// finish, then cancels their contexts; what they return within a second
// more is acked or nacked. A handler still running then is abandoned: its
// claim is no longer renewed, its message is delivered again once its
// lease ends, and Consume returns ctx's error wrapped with the count of
// abandoned handlers.
//
// # Topics
//
// A [Topic] sends every message published on it to every one of its
// subscriptions. A subscription is a [Queue]: [Topic.Subscribe] creates it
// by name, if it does not exist, and returns it. It is durable, keeps every
// Queue guarantee, and receives each message published after Subscribe
// returned, whether or not anyone consumes it yet. Each subscription
// claims, retries and dead-letters its own copy, so a slow or failing
// consumer in one never holds up another.
//
//	orders := redlease.NewTopic(client, "orders")
//	billing, err := orders.Subscribe(ctx, "billing")
//	id, err := orders.Publish(ctx, payload) // every subscription gets a copy
//	err = billing.Consume(ctx, charge)
//
// [Topic.Publish] is one Lua script, atomic: the message reaches every
// current subscription or none, with one id in all of them. A Subscribe
// racing a Publish either gets the message or does not; the other
// subscriptions get it either way. [Topic.Unsubscribe] deletes a
// subscription and its backlog. [WithUniqueFor] on a Publish keeps the id
// taken for the whole topic.
//
// [Topic.Listen] is live delivery for notifications such as cache
// invalidation, over Redis pub/sub: at most once, only while the listener
// is subscribed, and nothing is stored. A listener that falls
// [ListenBuffer] events behind loses the newest ones; publishers never
// wait for it. Use a subscription for messages that must not be lost.
//
// All the keys of a topic and its subscriptions share one hash tag, so a
// topic lives on one Redis Cluster slot; spread load over several topics.
// A payload is stored once for all the subscriptions that took it, with a
// count of them, and freed when the last one is done with it.
//
// # Headers
//
// [WithHeaders] gives a message string headers, which [Message.Headers],
// [DeadLetter.Headers] and a listener's [Event.Headers] read back. They
// stay with the message through retries, its death, [Queue.RetryDead] and
// every subscription of a topic; [MaxHeaders] and [MaxHeaderBytes] bound
// them. They carry what is about the message rather than in it: a trace
// context, a tenant, a schema version.
//
// # Operations
//
// Logging: a Locker, Queue or Topic logs what it recovers from by itself
// to [WithLogger]'s *slog.Logger, with the attributes key, fence, queue,
// id and attempt as they apply: lost leases and claims and failed
// renewals (Warn), messages dead-lettered (Warn), handlers' errors (Warn)
// and panics (Error, with the stack), reclaimed claims (Info), a
// listener's resubscriptions (Warn). With no WithLogger, records at Warn
// level and above go to [slog.Default], so nothing important is silent.
//
// Metrics and traces: [WithHook] installs a [Hook], which is told of each
// [Observation] (a lock obtained, renewed or lost; a message enqueued,
// claimed, acked, nacked, dead-lettered or reclaimed) and wraps each
// Enqueue, Publish and Consume handler. The module
// github.com/redlease/redlease/redleaseotel is one for OpenTelemetry: it
// records metrics and links the consumer's span to the producer's through
// the message's headers. [Queue.Stats] adds totals (enqueued, acked,
// nacked, dead-lettered) to the depths, for rates.
//
// The command github.com/redlease/redlease/cmd/redlease lists and
// inspects locks, queues and topics, reads and retries dead letters, and
// serves a dashboard with Prometheus metrics (redlease dash).
//
// # Redis
//
// redlease needs Redis 7.0 or later and works with go-redis's Client,
// ClusterClient and failover (Sentinel) client; a Ring serves queues and
// topics but not Lockers, nor [Topic.Listen]. Every guarantee holds only
// while Redis keeps its data: a restart without persistence, eviction (use
// maxmemory-policy noeviction) or a failover to a replica that missed a
// write can give a lock to two holders, or a message to two consumers, or
// lose it. The README says more.
//
// # Errors
//
// Errors are matched with errors.Is against [ErrNotObtained], [ErrNotHeld],
// [ErrInvalidArgument], [ErrClosed], [ErrDuplicate] and [ErrBusy].
// [ErrSkipRetry] goes the other way: a handler's error, or a Nack's cause,
// that wraps it dead-letters the message at once. Nothing panics on
// bad input: an invalid argument or option makes the call, or every call on
// the Locker, Queue or Topic it configures, return an error that errors.Is
// [ErrInvalidArgument].
package redlease
