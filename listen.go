package redlease

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
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
	// listenPing is how long a listener waits for a message before it
	// pings Redis, so a dead link is found and the subscription renewed.
	listenPing = 30 * time.Second
	// listenPause is how long a listener waits after a failed receive,
	// doubling up to maxListenPause while receives keep failing.
	listenPause    = 100 * time.Millisecond
	maxListenPause = 5 * time.Second
)

// Listen subscribes to the topic's live messages: every message published
// while the listener is subscribed, with no durability (Redis pub/sub).
// It returns once the subscription is active, so every message published
// after it returns is delivered, in order, unless a fault intervenes: a
// lost connection loses what is published until go-redis reconnects and
// subscribes again. Use it for notifications and cache invalidation; use
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
	var ps *redis.PubSub
	switch c := t.client.(type) {
	case *redis.Ring:
		return nil, fmt.Errorf("%w: redis.Ring cannot listen to a topic; use a ClusterClient", ErrInvalidArgument)
	case *redis.ClusterClient:
		ps = c.SSubscribe(ctx, t.keys.events)
	default:
		ps = c.Subscribe(ctx, t.keys.events)
	}
	// The subscription is active once Redis confirms it.
	if _, err := ps.Receive(ctx); err != nil {
		_ = ps.Close()
		return nil, fmt.Errorf("redlease: listen on topic %q: %w", t.name, err)
	}
	out := make(chan Event, ListenBuffer)
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() }) // unblocks a receive
	go func() {
		defer close(out)
		defer stop()
		t.listen(ctx, ps, out)
	}()
	return out, nil
}

// listen passes events from ps to out until ctx ends, never blocking on
// out.
func (t *Topic) listen(ctx context.Context, ps *redis.PubSub, out chan<- Event) {
	dropped := 0
	pause := listenPause
	for ctx.Err() == nil {
		msg, err := ps.ReceiveTimeout(ctx, listenPing)
		if ctx.Err() != nil {
			return
		}
		var netErr interface{ Timeout() bool }
		switch {
		case err != nil && errors.As(err, &netErr) && netErr.Timeout():
			_ = ps.Ping(ctx) // a failed ping makes the next receive reconnect
			continue
		case err != nil:
			t.logger().Warn("redlease: listen", "topic", t.name, "err", err)
			sleep(ctx, pause)
			pause = min(2*pause, maxListenPause)
			continue
		}
		pause = listenPause
		m, ok := msg.(*redis.Message)
		if !ok {
			continue // a subscription confirmation or a pong
		}
		ev, err := decodeEvent(m.Payload)
		if err != nil {
			t.logger().Warn("redlease: listen", "topic", t.name, "err", err)
			continue
		}
		select {
		case out <- ev:
			if dropped > 0 {
				t.logger().Warn("redlease: listener caught up after dropping events", "topic", t.name, "dropped", dropped)
				dropped = 0
			}
		default:
			if dropped == 0 {
				t.logger().Warn("redlease: listener too slow: dropping events", "topic", t.name, "buffer", ListenBuffer)
			}
			dropped++
		}
	}
}

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
