package redlease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Event is a message as a live listener sees it ([Topic.Listen]).
type Event struct {
	// ID is the message's id, as Publish returned it.
	ID string
	// Payload is the message's body, as published.
	Payload []byte
	// Headers are the message's headers ([WithHeaders]), nil if none.
	Headers map[string]string
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
// while the listener is subscribed, with no durability (Redis pub/sub). It
// returns once the subscription is active, so every message published after
// it returns is delivered, in order, unless a fault intervenes: a lost
// connection loses what is published until the listener has subscribed
// again, which it does by itself. It fails when ctx ends first or Redis
// does not confirm the subscription within 5 seconds. A listener may be on
// a replica (a ReadOnly ClusterClient, a Sentinel replica client): Redis
// passes every publish on to the replicas. Use it for notifications and
// cache invalidation; use [Topic.Subscribe] for messages that must not be
// lost.
//
// The channel closes when ctx ends or the client is closed. A listener that
// does not keep up never slows publishers and never grows memory without
// bound: its channel holds [ListenBuffer] events, and while it is full, new
// events are dropped, counted and logged at Warn level to the Topic's
// logger. Listen is not available on a redis.Ring, which places channels
// apart from keys.
func (t *Topic) Listen(ctx context.Context) (<-chan Event, error) {
	if t.err != nil {
		return nil, t.err
	}
	if _, ok := t.client.(*redis.Ring); ok {
		return nil, fmt.Errorf("%w: redis.Ring cannot listen to a topic; use a ClusterClient", ErrInvalidArgument)
	}
	l := &topicListener{t: t, out: make(chan Event, ListenBuffer)}
	// On ctx's end, the channel closes at once and the subscription's
	// connection too, which ends a receive waiting on it.
	stop := context.AfterFunc(ctx, l.shut)
	ps, err := l.subscribe(ctx)
	if err != nil {
		stop()
		l.shut()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("redlease: listen on topic %q: %w", t.name, err)
	}
	go func() {
		defer stop()
		defer l.shut()
		l.run(ctx, ps)
	}()
	return l.out, nil
}

// topicListener is one Listen call's subscription.
type topicListener struct {
	t   *Topic
	out chan Event

	mu     sync.Mutex
	ps     *redis.PubSub // the latest subscription, for shut to close
	closed bool          // shut: out is closed
}

// errNoAnswer is a subscription Redis did not confirm within answerWait.
var errNoAnswer = errors.New("no answer to subscribe")

// subscribe makes a new subscription, active once it returns (on a
// Cluster, on a node of the topic's slot). It gives up when ctx ends, at
// once, or when Redis has not answered within answerWait: go-redis does
// not give up a connection's handshake when its ctx ends, nor, with no
// read timeout, ever. An attempt given up ends by itself, and closes
// what it made.
func (l *topicListener) subscribe(ctx context.Context) (*redis.PubSub, error) {
	type result struct {
		ps  *redis.PubSub
		err error
	}
	done := make(chan result, 1)
	var gaveUp atomic.Bool
	go func() {
		ps, err := l.attempt(ctx, &gaveUp)
		done <- result{ps, err}
	}()
	t := time.NewTimer(l.t.waits.answer)
	defer t.Stop()
	var err error
	select {
	case r := <-done:
		return r.ps, r.err
	case <-ctx.Done():
		err = ctx.Err()
	case <-t.C:
		err = errNoAnswer
	}
	l.mu.Lock()
	gaveUp.Store(true)
	l.mu.Unlock()
	return nil, err
}

// attempt makes one subscription and keeps it as l.ps, unless shut or its
// subscribe gave up first: then it closes it.
func (l *topicListener) attempt(ctx context.Context, gaveUp *atomic.Bool) (*redis.PubSub, error) {
	var ps *redis.PubSub
	var err error
	if cc, ok := l.t.client.(*redis.ClusterClient); ok {
		ps = cc.SSubscribe(ctx)
		err = ps.SSubscribe(ctx, l.t.keys.events)
	} else {
		ps = l.t.client.Subscribe(ctx)
		err = ps.Subscribe(ctx, l.t.keys.events)
	}
	if err == nil {
		_, err = ps.ReceiveTimeout(ctx, l.t.waits.answer) // the confirmation
	}
	l.mu.Lock()
	var old *redis.PubSub
	kept := err == nil && !l.closed && !gaveUp.Load()
	if kept {
		old, l.ps = l.ps, ps
	}
	l.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	if !kept {
		_ = ps.Close()
		if err == nil {
			err = errListenerClosed
		}
		return nil, err
	}
	return ps, nil
}

// errListenerClosed is a subscription that shut or a timeout overtook.
var errListenerClosed = errors.New("listener closed")

// shut closes the channel, once, and the latest subscription.
func (l *topicListener) shut() {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		close(l.out)
	}
	ps := l.ps
	l.mu.Unlock()
	if ps != nil {
		_ = ps.Close() // waits while go-redis holds it, reconnecting
	}
}

// deliver passes ev on unless the channel is full (false) or closed.
func (l *topicListener) deliver(ev Event) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return true
	}
	select {
	case l.out <- ev:
		return true
	default:
		return false
	}
}

// run passes events from ps on until ctx ends or the client is closed,
// never blocking on the channel, and subscribes anew when the
// subscription fails, Redis ends it, or a ping it sent after listenPing
// of quiet gets no answer within answerWait (a link that died without a
// word).
func (l *topicListener) run(ctx context.Context, ps *redis.PubSub) {
	log := l.t.logger().With("topic", l.t.name)
	dropped := 0
	pause := listenPause
	pinged := false
	for ctx.Err() == nil {
		wait := l.t.waits.ping
		if pinged {
			wait = l.t.waits.answer
		}
		msg, err := ps.ReceiveTimeout(ctx, wait)
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
			switch {
			case !l.deliver(ev):
				if dropped == 0 {
					log.Warn("redlease: listener too slow: dropping events", "buffer", ListenBuffer)
				}
				dropped++
			case dropped > 0:
				log.Warn("redlease: listener caught up after dropping events", "dropped", dropped)
				dropped = 0
			}
			continue
		case *redis.Subscription:
			renew = m.Count == 0 // Redis ended it: the slot moved away, say
		}
		switch {
		case err != nil && errors.As(err, &netErr) && netErr.Timeout():
			// Quiet for a while: ask Redis, and give up on the link if
			// the last ask got no answer.
			renew = pinged || ps.Ping(ctx) != nil
			pinged = true
		case err != nil:
			log.Warn("redlease: listen", "err", err)
			renew = true
		}
		if !renew {
			continue
		}
		if ps = l.resubscribe(ctx, log, &pause); ps == nil {
			return
		}
		pinged = false
	}
}

// resubscribe subscribes anew, backing off while it fails, until ctx ends
// or the client is closed: nil then.
func (l *topicListener) resubscribe(ctx context.Context, log *slog.Logger, pause *time.Duration) *redis.PubSub {
	for ctx.Err() == nil {
		sleep(ctx, *pause)
		*pause = min(2**pause, maxListenPause)
		ps, err := l.subscribe(ctx)
		switch {
		case err == nil:
			// Events published meanwhile reached nobody here.
			log.Warn("redlease: listen: subscribed again; events published meanwhile were missed")
			return ps
		case ctx.Err() != nil || errors.Is(err, errListenerClosed):
			return nil
		case errors.Is(err, redis.ErrClosed) && errors.Is(l.t.client.Ping(ctx).Err(), redis.ErrClosed):
			// Not a Cluster's node client that go-redis retired: the
			// client itself is closed.
			log.Warn("redlease: listen: the client is closed; listening stops")
			return nil
		}
		log.Warn("redlease: listen: subscribe", "err", err)
	}
	return nil
}

// A listener that has heard nothing for listenPing pings Redis, and
// subscribes anew when no answer comes within answerWait: a link can die
// without a word (a host gone, a network cut), and Redis would go on
// counting the dead subscriber. A subscription not confirmed within
// answerWait is tried again. A Topic copies them, so tests can shorten
// its own.
const (
	listenPing = 30 * time.Second
	answerWait = 5 * time.Second
)

// listenWaits are a Topic's listenPing and answerWait.
type listenWaits struct{ ping, answer time.Duration }

// decodeEvent parses "len(id):" id payload, as lua/topic_publish.lua
// publishes it.
func decodeEvent(s string) (Event, error) {
	f, rest, ok := strings.Cut(s, ":")
	n, err := strconv.Atoi(f)
	if !ok || err != nil || n < 0 || n > len(rest) {
		return Event{}, fmt.Errorf("malformed event %.40q", s)
	}
	payload, headers := unseal(rest[n:])
	return Event{ID: rest[:n], Payload: payload, Headers: headers}, nil
}
