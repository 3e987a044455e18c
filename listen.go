package redlease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Event is a message as a live listener sees it ([Topic.Listen]).
type Event struct {
	// ID is the message's id, as Publish returned it.
	ID string
	// Payload is the message's body, as published.
	Payload []byte
}

const (
	// ListenBuffer is how many events a listener's channel holds. When it
	// is full, new events are dropped (see [Topic.Listen]).
	ListenBuffer = 1024

	// listenPause is how long a listener waits after a failed receive,
	// doubling up to maxListenPause while receives keep failing.
	listenPause    = 100 * time.Millisecond
	maxListenPause = 5 * time.Second
)

// Listen subscribes to the topic's live messages: every message published
// while the listener is subscribed, with no durability (Redis pub/sub).
// It returns once the subscription is active, so every message published
// after it returns is delivered, in order, unless a fault intervenes: a
// lost connection loses what is published until the listener has
// subscribed again, which it does by itself. A listener may be on a
// replica (a ReadOnly ClusterClient, a Sentinel replica client): Redis
// passes every publish on to the replicas. Use it for notifications and cache invalidation; use
// [Topic.Subscribe] for messages that must not be lost.
//
// The channel closes when ctx ends. A listener that does not keep up
// never slows publishers and never grows memory without bound: its
// channel holds [ListenBuffer] events, and while it is full, new events
// are dropped, counted and logged at Warn level to the Topic's logger.
// Listen is not available on a redis.Ring, which places channels apart
// from keys.
func (t *Topic) Listen(ctx context.Context) (<-chan Event, error) {
	if t.err != nil {
		return nil, t.err
	}
	if _, ok := t.client.(*redis.Ring); ok {
		return nil, fmt.Errorf("%w: redis.Ring cannot listen to a topic; use a ClusterClient", ErrInvalidArgument)
	}
	l := &topicListener{t: t, out: make(chan Event, ListenBuffer)}
	stop := context.AfterFunc(ctx, l.close) // unblocks a receive, the first one too
	if err := l.subscribe(ctx); err != nil {
		stop()
		l.close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("redlease: listen on topic %q: %w", t.name, err)
	}
	go func() {
		defer close(l.out)
		defer stop()
		defer l.close()
		l.run(ctx)
	}()
	return l.out, nil
}

// topicListener is one Listen call's subscription.
type topicListener struct {
	t   *Topic
	out chan Event

	mu     sync.Mutex
	ps     *redis.PubSub // written under mu, by the goroutine that reads it
	closed bool
}

// errListenerClosed is a subscribe that close overtook.
var errListenerClosed = errors.New("listener closed")

// subscribe replaces the subscription with a new one, active once it
// returns (on a Cluster, on a node of the topic's slot). close reaches it
// while it waits for Redis to confirm.
func (l *topicListener) subscribe(ctx context.Context) error {
	var ps *redis.PubSub
	if cc, ok := l.t.client.(*redis.ClusterClient); ok {
		ps = cc.SSubscribe(ctx, l.t.keys.events)
	} else {
		ps = l.t.client.Subscribe(ctx, l.t.keys.events)
	}
	l.mu.Lock()
	if l.ps != nil {
		_ = l.ps.Close()
	}
	l.ps = ps
	closed := l.closed
	l.mu.Unlock()
	if closed {
		_ = ps.Close()
		return errListenerClosed
	}
	if _, err := ps.Receive(ctx); err != nil {
		_ = ps.Close()
		return err
	}
	return nil
}

func (l *topicListener) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.ps != nil {
		_ = l.ps.Close()
	}
}

// run passes events to out until ctx ends or the client is closed, never
// blocking on out, and subscribes anew when the subscription fails, Redis
// ends it, or a ping it sent after listenPing of quiet gets no answer
// within pongWait (a link that died without a word).
func (l *topicListener) run(ctx context.Context) {
	log := l.t.logger().With("topic", l.t.name)
	dropped := 0
	pause := listenPause
	pinged := false
	for ctx.Err() == nil {
		wait := listenPing
		if pinged {
			wait = pongWait
		}
		msg, err := l.ps.ReceiveTimeout(ctx, wait)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			pinged = false
		}
		var netErr interface{ Timeout() bool }
		renew := false
		switch m := msg.(type) {
		case *redis.Message:
			pause = listenPause
			ev, err := decodeEvent(m.Payload)
			if err != nil {
				log.Warn("redlease: listen", "err", err)
				continue
			}
			select {
			case l.out <- ev:
				if dropped > 0 {
					log.Warn("redlease: listener caught up after dropping events", "dropped", dropped)
					dropped = 0
				}
			default:
				if dropped == 0 {
					log.Warn("redlease: listener too slow: dropping events", "buffer", ListenBuffer)
				}
				dropped++
			}
			continue
		case *redis.Subscription:
			renew = m.Count == 0 // Redis ended it: the slot moved away, say
		}
		switch {
		case err != nil && errors.As(err, &netErr) && netErr.Timeout():
			// Quiet for a while: ask Redis, and give up on the link if
			// the last ask got no answer.
			renew = pinged || l.ps.Ping(ctx) != nil
			pinged = true
		case err != nil:
			log.Warn("redlease: listen", "err", err)
			renew = true
		}
		if renew && !l.resubscribe(ctx, log, &pause) {
			return
		}
		if renew {
			pinged = false
		}
	}
}

// resubscribe subscribes anew, backing off while it fails, until ctx ends
// or the client is closed: false then.
func (l *topicListener) resubscribe(ctx context.Context, log *slog.Logger, pause *time.Duration) bool {
	for ctx.Err() == nil {
		sleep(ctx, *pause)
		*pause = min(2**pause, maxListenPause)
		err := l.subscribe(ctx)
		switch {
		case err == nil:
			return true
		case ctx.Err() != nil || errors.Is(err, errListenerClosed):
			return false
		case errors.Is(err, redis.ErrClosed):
			log.Warn("redlease: listen: the client is closed; listening stops")
			return false
		}
		log.Warn("redlease: listen: subscribe", "err", err)
	}
	return false
}

// A listener that has heard nothing for listenPing pings Redis, and
// subscribes anew when no answer comes within pongWait: a link can die
// without a word (a host gone, a network cut), and Redis would go on
// counting the dead subscriber. Variables so tests can shorten them.
var (
	listenPing = 30 * time.Second
	pongWait   = 5 * time.Second
)

// decodeEvent parses "len(id):" id payload, as lua/topic_publish.lua
// publishes it.
func decodeEvent(s string) (Event, error) {
	f, rest, ok := strings.Cut(s, ":")
	n, err := strconv.Atoi(f)
	if !ok || err != nil || n < 0 || n > len(rest) {
		return Event{}, fmt.Errorf("malformed event %.40q", s)
	}
	return Event{ID: rest[:n], Payload: []byte(rest[n:])}, nil
}
