package redlease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

// Topic is publish/subscribe on Redis: every message published reaches
// every subscription of the topic. A subscription is a [Queue], durable and
// with every Queue guarantee, that receives each message published after
// [Topic.Subscribe] returned, whether or not anyone consumes it yet; each
// subscription claims, acks, retries and dead-letters its copy on its own,
// so a slow or failing one never holds up another. [Topic.Listen] adds
// live, at-most-once delivery for notifications.
//
// A payload is stored once for all the subscriptions that took it, with a
// count of them; each subscription holds the message's id and state. All
// keys of a topic and its subscriptions share one hash tag, {name}, so a
// topic lives on one Redis Cluster slot. A Topic is safe for concurrent
// use.
type Topic struct {
	client  redis.UniversalClient
	name    string
	prefix  string
	opts    []QueueOption // the subscriptions' defaults
	err     error
	log     *slog.Logger // WithLogger's; nil: slog.Default(), Warn and above
	hook    Hook         // WithHook's; nil: none
	publish string       // "PUBLISH", or "SPUBLISH" on a Cluster
	keys    topicKeys
	view    atomic.Pointer[topicView] // the subscriptions as last seen
	waits   listenWaits               // its listeners'
}

// topicKeys are a topic's own keys and its listeners' channel.
type topicKeys struct {
	version  string // string: set to a new random value by every change to subs
	subs     string // set of subscription names
	payloads string // hash: see lua/queue.lua
	done     string // sorted set: request token -> when done (ms)
	trashes  string // hash: removed subscriptions' hashes not yet drained -> scan cursor
	unique   string // sorted set: id WithUniqueFor keeps taken -> when it is free (ms)
	events   string // listeners' channel
}

// topicView is what Publish believes the subscriptions are: the version
// they were read at, and a publish call's KEYS for them (the topic's five,
// then each subscription's READY, DELAYED, MESSAGES and MARKER).
type topicView struct {
	version string
	keys    []string
}

// subs is how many subscriptions v has.
func (v *topicView) subs() int { return (len(v.keys) - topicKeyCount) / 4 }

// topicKeyCount is how many of a publish call's KEYS are the topic's own.
const topicKeyCount = 5

// newView returns the view of the subscriptions names at version.
func (t *Topic) newView(version string, names []string) *topicView {
	v := &topicView{version: version, keys: make([]string, 0, topicKeyCount+4*len(names))}
	v.keys = append(v.keys, t.keys.version, t.keys.subs, t.keys.payloads, t.keys.done, t.keys.unique)
	for _, name := range names {
		s := newSubscriptionShard(t.prefix, t.name, name)
		v.keys = append(v.keys, s.ready, s.delayed, s.messages, s.marker)
	}
	return v
}

// NewTopic returns the topic called name in client. The options are the
// defaults of the Queues that [Topic.Subscribe] returns (lease, attempts,
// retry backoff, logger) and set the key prefix; [WithShards] is not
// available, since a topic lives under one hash tag. Errors in the
// arguments do not panic: every call on the Topic returns them.
func NewTopic(client redis.UniversalClient, name string, opts ...QueueOption) *Topic {
	cfg := newQueueConfig(opts)
	base := topicBase(cfg.prefix, name)
	t := &Topic{
		client: client, name: name, prefix: cfg.prefix, opts: opts, err: cfg.err, log: cfg.log, hook: cfg.hook, publish: publishCommand(client),
		waits: listenWaits{ping: listenPing, answer: answerWait},
		keys: topicKeys{
			version: base + "version", subs: base + "subs", payloads: base + "payloads",
			done: base + "done", trashes: base + "trashes", unique: base + "unique", events: base + "events",
		},
	}
	switch {
	case isNil(client):
		t.err = fmt.Errorf("%w: nil redis client", ErrInvalidArgument)
	case !validName(name):
		t.err = fmt.Errorf("%w: topic name %q must be non-empty and free of '{' and '}'", ErrInvalidArgument, name)
	case cfg.err == nil && cfg.shards != 1:
		t.err = fmt.Errorf("%w: a topic's subscriptions cannot be sharded", ErrInvalidArgument)
	}
	t.view.Store(t.newView(unknownVersion, nil))
	return t
}

// logger is where the Topic reports: WithLogger's, or slog's default.
func (t *Topic) logger() *slog.Logger { return orDefault(t.log) }

// unknownVersion is no version Redis has, so a Topic's first Publish
// learns the subscriptions.
const unknownVersion = ""

// publishCommand is how scripts announce to listeners on c: shard
// channels on a Cluster, so a message goes only to its slot's nodes.
func publishCommand(c redis.UniversalClient) string {
	if _, ok := c.(*redis.ClusterClient); ok {
		return "SPUBLISH"
	}
	return "PUBLISH"
}

// Name returns the topic's name.
func (t *Topic) Name() string { return t.name }

// Subscribe creates the subscription called name, if it does not exist,
// and returns its Queue. It is idempotent: every call with the same name
// returns a Queue on the same subscription. The Queue receives every
// message published after Subscribe returned. opts are applied after the
// Topic's; they may not change the prefix or shard the subscription.
func (t *Topic) Subscribe(ctx context.Context, name string, opts ...QueueOption) (*Queue, error) {
	q, err := t.subscription(name, opts)
	if err != nil {
		return nil, err
	}
	keys := []string{t.keys.version, t.keys.subs, t.keys.done}
	if err := run(ctx, t.client, subscribeScript, keys, name, uuid.NewString(), uuid.NewString()).Err(); err != nil {
		return nil, fmt.Errorf("redlease: subscribe %q to topic %q: %w", name, t.name, err)
	}
	return q, nil
}

// subscription checks a subscription's name and options and returns its
// Queue, without touching Redis.
func (t *Topic) subscription(name string, opts []QueueOption) (*Queue, error) {
	if t.err != nil {
		return nil, t.err
	}
	if !validName(name) {
		return nil, fmt.Errorf("%w: subscription name %q must be non-empty and free of '{' and '}'", ErrInvalidArgument, name)
	}
	cfg := newQueueConfig(append(slices.Clip(t.opts), opts...))
	switch {
	case cfg.err != nil:
		return nil, cfg.err
	case cfg.shards != 1:
		return nil, fmt.Errorf("%w: a topic's subscriptions cannot be sharded", ErrInvalidArgument)
	case cfg.prefix != t.prefix:
		return nil, fmt.Errorf("%w: subscription prefix %q differs from its topic's %q", ErrInvalidArgument, cfg.prefix, t.prefix)
	}
	return buildQueue(t.client, t.name+"/"+name, cfg, []*shard{newSubscriptionShard(t.prefix, t.name, name)}), nil
}

// drainBatch caps the fields one step of Unsubscribe deletes, and
// maxDrainSteps the steps of one call, so no script blocks Redis for long
// and no loop runs unbounded.
const (
	drainBatch    = 1000
	maxDrainSteps = 1 << 20
)

// Unsubscribe deletes the subscription called name and its whole backlog:
// ready, delayed, in flight and dead messages. Publishes stop reaching it
// at once, and the name is free for a new Subscribe at once; the payloads
// only it referred to are freed in bounded steps before Unsubscribe
// returns (if ctx ends first, the next Unsubscribe on the topic finishes
// the work). Its Queues' consumers find no more messages, and their acks
// of messages they held fail with [ErrNotHeld]; an Enqueue on one of its
// Queues adds a message outside the topic, which another Unsubscribe
// deletes. Unsubscribing a name that does not exist succeeds.
func (t *Topic) Unsubscribe(ctx context.Context, name string) error {
	if _, err := t.subscription(name, nil); err != nil {
		return err
	}
	s := newSubscriptionShard(t.prefix, t.name, name)
	keys := []string{t.keys.version, t.keys.subs, t.keys.done, t.keys.trashes, topicBase(t.prefix, t.name) + "trash:" + uuid.NewString(),
		s.messages, s.ready, s.delayed, s.inflight, s.dead, s.marker, s.reclaimer, s.done, s.unique}
	if err := run(ctx, t.client, unsubscribeScript, keys, name, uuid.NewString(), uuid.NewString()).Err(); err != nil {
		return fmt.Errorf("redlease: unsubscribe %q from topic %q: %w", name, t.name, err)
	}
	if err := t.drain(ctx); err != nil {
		return fmt.Errorf("redlease: unsubscribe %q from topic %q: %w", name, t.name, err)
	}
	return nil
}

// drain frees every removed subscription's messages, this call's and any
// an earlier call left.
func (t *Topic) drain(ctx context.Context) error {
	trashes, err := t.client.HKeys(ctx, t.keys.trashes).Result()
	if err != nil {
		return err
	}
	for _, trash := range trashes {
		for step := 0; ; step++ {
			if step == maxDrainSteps {
				return fmt.Errorf("drain %q: gave up after %d steps", trash, step)
			}
			done, err := run(ctx, t.client, drainScript, []string{t.keys.payloads, t.keys.trashes, trash}, drainBatch).Int64()
			if err != nil {
				return err
			}
			if done == 1 {
				break
			}
		}
	}
	return nil
}

// Subscriptions returns the names of the topic's subscriptions, sorted.
func (t *Topic) Subscriptions(ctx context.Context) ([]string, error) {
	if t.err != nil {
		return nil, t.err
	}
	names, err := t.client.SMembers(ctx, t.keys.subs).Result()
	if err != nil {
		return nil, fmt.Errorf("redlease: subscriptions of topic %q: %w", t.name, err)
	}
	slices.Sort(names)
	return names, nil
}

// Publish adds a message to every subscription of the topic, or to none
// if it fails, and sends it to the topic's live listeners; it returns the
// message's id, the same in every subscription and in [Event.ID]. It is
// one round trip (two when the subscriptions changed since this Topic last
// published), atomic, and safe to retry as Enqueue is. With no
// subscriptions it succeeds and only listeners see the message.
//
// The options apply per subscription: [WithDelay] delays each copy;
// [WithID] dedupes per subscription, so a subscription where that id is
// live keeps its message and the others get the new one. When every
// subscription (at least one) had the id live, Publish adds nothing,
// notifies no listener, and returns the id with an error that errors.Is
// [ErrDuplicate]. [WithUniqueFor] keeps the id taken for the whole topic:
// within its window, a Publish of that id adds nothing, notifies no
// listener and returns [ErrDuplicate] (an Enqueue on one subscription's
// Queue does not see the topic's window). If the subscriptions change before each of its tries
// (about a second of them), it publishes nothing and returns an error that
// errors.Is [ErrBusy].
func (t *Topic) Publish(ctx context.Context, payload []byte, opts ...EnqueueOption) (string, error) {
	if t.err != nil {
		return "", t.err
	}
	cfg, id, err := newMessage(payload, opts)
	if err != nil {
		return "", err
	}
	send := func(ctx context.Context, headers map[string]string) (string, error) {
		return t.publishOne(ctx, cfg, id, payload, headers)
	}
	if t.hook != nil {
		return t.hook.Enqueue(ctx, t.name, cfg.headers, send)
	}
	return send(ctx, cfg.headers)
}

// publishOne publishes one checked message with headers (which a Hook may
// have added to).
func (t *Topic) publishOne(ctx context.Context, cfg enqueueConfig, id string, payload []byte, headers map[string]string) (string, error) {
	if err := checkHeaders(headers); err != nil {
		return "", err
	}
	took, subs, err := t.publishAll(ctx, publishOptions{cfg.delay.Milliseconds(), uniqueArg(cfg)}, [][]any{{id, seal(payload, headers)}})
	if err != nil {
		return "", fmt.Errorf("redlease: publish on topic %q: %w", t.name, err)
	}
	switch {
	case took[0] == codeUniqueTaken:
		return id, fmt.Errorf("%w: %q is taken in topic %q (WithUniqueFor)", ErrDuplicate, id, t.name)
	case took[0] == 0 && subs > 0:
		return id, fmt.Errorf("%w: %q is live in every subscription of topic %q", ErrDuplicate, id, t.name)
	}
	t.observe(ctx, Observation{Kind: MessageEnqueued, Name: t.name, ID: id, N: 1})
	return id, nil
}

// maxPublishDeliveries caps the copies (messages times subscriptions) one
// publish script call adds, so no call blocks Redis for long.
const maxPublishDeliveries = 10_000

// PublishBatch publishes messages with random ids and returns their ids in
// order; subscriptions and listeners get them in that order. It takes one
// round trip per 4 MiB of payloads (one more when the subscriptions
// changed since this Topic last published), so that Redis never queues
// much more than that for a listener at once. Each script call within the
// batch is atomic and safe to resend, as with [Queue.EnqueueBatch]; on an
// error some messages may have been published. Nothing is sent if any
// payload is too large.
func (t *Topic) PublishBatch(ctx context.Context, payloads [][]byte) ([]string, error) {
	if t.err != nil {
		return nil, t.err
	}
	for _, p := range payloads {
		if err := checkPayload(p); err != nil {
			return nil, err
		}
	}
	ids := make([]string, len(payloads))
	pairs := make([][]any, len(payloads))
	for i, p := range payloads {
		ids[i] = uuid.NewString()
		pairs[i] = []any{ids[i], seal(p, nil)}
	}
	if len(pairs) == 0 {
		return ids, nil
	}
	if _, _, err := t.publishAll(ctx, publishOptions{unique: randomIDs}, pairs); err != nil {
		return nil, fmt.Errorf("redlease: publish batch on topic %q: %w", t.name, err)
	}
	t.observe(ctx, Observation{Kind: MessageEnqueued, Name: t.name, N: len(ids)})
	return ids, nil
}

// maxStaleViews bounds how often one publish learns the subscriptions
// anew because they changed under it; from the second time on it first
// waits staleBackoff, doubling up to maxStaleBackoff, with jitter, so
// that it can slip in between changes.
const (
	maxStaleViews   = 16
	staleBackoff    = time.Millisecond
	maxStaleBackoff = 64 * time.Millisecond
)

// publishOptions are what a publish call's messages share: their delay
// and how long WithUniqueFor keeps their ids taken, in ms (uniqueArg).
type publishOptions struct{ delay, unique int64 }

// errStaleView is a publish call refused because the subscriptions changed.
var errStaleView = errors.New("subscriptions changed")

// publishAll publishes messages (id, payload pairs) in order, in as few
// script calls as maxPublishDeliveries allows, sent in round trips of at
// most enqueueChunkBytes of payloads (so a listener's output buffer in
// Redis takes at most that at once). It returns how many subscriptions
// took each message (-1: a resend found it done; codeUniqueTaken) and how
// many there were.
// Calls refused because the subscriptions changed wrote nothing: only
// those, and the ones not yet sent, are sent again for the new ones.
func (t *Topic) publishAll(ctx context.Context, opts publishOptions, msgs [][]any) ([]int64, int, error) {
	took := make([]int64, len(msgs))
	pending := make([]int, len(msgs)) // indices into msgs not yet published
	for i := range pending {
		pending[i] = i
	}
	pause := staleBackoff
	for try := range maxStaleViews {
		if try > 1 { // the first resend goes at once: the first publish of a Topic learns
			sleep(ctx, pause/2+rand.N(pause/2+1))
			pause = min(2*pause, maxStaleBackoff)
			if err := ctx.Err(); err != nil {
				return nil, 0, err
			}
		}
		v := t.view.Load()
		calls, sizes, weights := t.publishCalls(v, opts, msgs, pending)
		var stale []int
		for start, next := 0, 0; start < len(calls); start = next {
			bytes := weights[start]
			for next = start + 1; next < len(calls) && bytes+weights[next] <= enqueueChunkBytes; next++ {
				bytes += weights[next]
			}
			for i, cmd := range t.send(ctx, calls[start:next]) {
				part := pending[:sizes[start+i]]
				pending = pending[sizes[start+i]:]
				res, err := cmd.Slice()
				if err != nil {
					return nil, 0, err
				}
				n, err := t.readPublish(v, res)
				switch {
				case errors.Is(err, errStaleView):
					stale = append(stale, part...)
				case err != nil:
					return nil, 0, err
				case len(n) != len(part):
					return nil, 0, errUnexpected(res)
				default:
					for k, m := range part {
						took[m] = n[k]
					}
				}
			}
			if len(stale) > 0 {
				break // the calls not sent would be refused too
			}
		}
		if len(stale) == 0 {
			return took, v.subs(), nil
		}
		pending = append(stale, pending...)
	}
	return nil, 0, fmt.Errorf("%w: the subscriptions of topic %q changed under each of %d tries", ErrBusy, t.name, maxStaleViews)
}

// send makes publish script calls in one round trip.
func (t *Topic) send(ctx context.Context, calls []scriptCall) []*redis.Cmd {
	if len(calls) == 1 {
		// The common Publish: keys passed as pointers, not boxed anew.
		return []*redis.Cmd{publishScript.call(ctx, t.client, calls[0].keys, calls[0].args...)}
	}
	return runInOrder(ctx, t.client, publishScript.Script, calls)
}

// publishCalls splits the messages of msgs at indices idx into publish
// script calls for the subscriptions in v, and says how many messages and
// payload bytes each takes.
func (t *Topic) publishCalls(v *topicView, opts publishOptions, msgs [][]any, idx []int) (calls []scriptCall, sizes, weights []int) {
	per := min(enqueueChunk, max(maxPublishDeliveries/max(v.subs(), 1), 1))
	for start := 0; start < len(idx); {
		args := []any{&v.version, uuid.NewString(), opts.delay, opts.unique, &t.publish, &t.keys.events}
		size := 0
		end := start
		for ; end < len(idx) && end-start < per && (end == start || size < enqueueChunkBytes); end++ {
			m := msgs[idx[end]]
			args = append(args, m...)
			size += len(m[1].([]byte))
		}
		calls = append(calls, scriptCall{keys: v.keys, args: args})
		sizes = append(sizes, end-start)
		weights = append(weights, size)
		start = end
	}
	return calls, sizes, weights
}

// readPublish reads lua/topic_publish.lua's reply: the counts, or
// errStaleView after storing the subscriptions it names.
func (t *Topic) readPublish(v *topicView, res []any) ([]int64, error) {
	if len(res) < 1 {
		return nil, errUnexpected(res)
	}
	if ok, _ := res[0].(int64); ok == 1 {
		n := make([]int64, len(res)-1)
		for i, r := range res[1:] {
			c, isInt := r.(int64)
			if !isInt {
				return nil, errUnexpected(res)
			}
			n[i] = c
		}
		return n, nil
	}
	if len(res) < 2 {
		return nil, errUnexpected(res)
	}
	version, ok := res[1].(string)
	if !ok {
		return nil, errUnexpected(res)
	}
	names := make([]string, 0, len(res)-2)
	for _, r := range res[2:] {
		name, ok := r.(string)
		if !ok {
			return nil, errUnexpected(res)
		}
		names = append(names, name)
	}
	t.view.CompareAndSwap(v, t.newView(version, names))
	return nil, errStaleView
}
