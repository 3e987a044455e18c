package redlease

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/redlease/redlease/internal/redistest"
)

func TestTopicListen(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ignore := goleak.IgnoreCurrent()
		ctx := context.Background()
		lc := redis.NewClient(c.Options())
		tp := NewTopic(lc, "t", WithPrefix(uniq(t)))
		lctx, stop := context.WithCancel(ctx)
		events, err := tp.Listen(lctx)
		require.NoError(t, err)
		// No subscription: listeners still see it.
		id := publish(t, tp, "alone")
		subscribe(t, tp, "a")
		ids, err := tp.PublishBatch(ctx, [][]byte{[]byte("b1"), {}, []byte("b:3")})
		require.NoError(t, err)
		dup := publish(t, tp, "d", WithID("d"))
		_, err = tp.Publish(ctx, []byte("d again"), WithID("d"))
		require.ErrorIs(t, err, ErrDuplicate)
		last := publish(t, tp, "last")
		want := []Event{{ID: id, Payload: []byte("alone")}, {ID: ids[0], Payload: []byte("b1")}, {ID: ids[1], Payload: []byte{}},
			{ID: ids[2], Payload: []byte("b:3")}, {ID: dup, Payload: []byte("d")}, {ID: last, Payload: []byte("last")}}
		for _, w := range want {
			select {
			case ev := <-events:
				require.Equal(t, w.ID, ev.ID)
				require.Equal(t, string(w.Payload), string(ev.Payload))
			case <-time.After(5 * time.Second):
				t.Fatalf("no event %q", w.Payload)
			}
		}
		stop()
		for range events { // closes once ctx ended
		}
		lc.Close()
		redistest.Eventually(t, 5*time.Second, "no goroutine left", func() bool { return goleak.Find(ignore) == nil })
	})
}

// A listener that does not read never blocks publishers: its channel
// fills, later events are dropped and logged, and it gets events again
// once it reads.
func TestTopicSlowListener(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var logs logLines
		tp := newTopic(t, c, WithLogger(logs.logger()))
		events, err := tp.Listen(ctx)
		require.NoError(t, err)
		const over = 50
		batch := make([][]byte, ListenBuffer+over)
		for i := range batch {
			batch[i] = []byte(strconv.Itoa(i))
		}
		_, err = tp.PublishBatch(ctx, batch)
		require.NoError(t, err)
		redistest.Eventually(t, 10*time.Second, "drop logged", func() bool {
			return logged(t, &logs, "dropping events")
		})
		for i := range ListenBuffer {
			ev := <-events
			require.Equal(t, strconv.Itoa(i), string(ev.Payload), "the first events are kept")
		}
		publish(t, tp, "after")
		for range over + 1 {
			select {
			case ev := <-events:
				if string(ev.Payload) == "after" {
					redistest.Eventually(t, 5*time.Second, "catch-up logged", func() bool {
						return logged(t, &logs, "caught up")
					})
					return
				}
				// Events the listener took before it saw the buffer full.
				require.GreaterOrEqual(t, mustAtoi(t, string(ev.Payload)), ListenBuffer)
			case <-time.After(5 * time.Second):
				t.Fatal("no event after reading again")
			}
		}
		t.Fatal("the event published after reading never came")
	})
}

// logged says whether a line whose message contains text was logged.
func logged(t *testing.T, logs *logLines, text string) bool {
	for _, e := range logs.entries(t) {
		if msg, _ := e["msg"].(string); strings.Contains(msg, text) {
			return true
		}
	}
	return false
}

// A listener whose connection is killed subscribes again by itself and
// gets the messages published after that.
func TestTopicListenSurvivesReconnect(t *testing.T) {
	c := realRedis(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tp := newTopic(t, c)
	events, err := tp.Listen(ctx)
	require.NoError(t, err)
	publish(t, tp, "before")
	require.Equal(t, "before", string((<-events).Payload))
	require.NoError(t, c.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err())
	heardAgain(t, ctx, tp, events)
}

// A listener on a replica hears what is published on the master: Redis
// passes publishes on to replicas, and the script sends each one whether
// or not the master counts a listener.
func TestTopicListenOnReplica(t *testing.T) {
	master, replica := replicatedClients(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	events, err := NewTopic(replica, "t", WithPrefix(uniq(t))).Listen(ctx)
	require.NoError(t, err)
	id := publish(t, NewTopic(master, "t", WithPrefix(uniq(t))), "x")
	select {
	case ev := <-events:
		require.Equal(t, id, ev.ID)
	case <-ctx.Done():
		t.Fatal("a listener on a replica heard nothing")
	}
}

// listenVia listens on topic "t" through a fault proxy to the real Redis,
// with shortWaits if short, and returns the events and a Topic that
// publishes directly.
func listenVia(t *testing.T, ctx context.Context, short bool) (*redistest.FaultProxy, <-chan Event, *Topic) {
	t.Helper()
	c := realRedis(t)
	p := redistest.NewFaultProxy(t, c.Options().Addr)
	lc := redis.NewClient(&redis.Options{Addr: p.Addr()})
	t.Cleanup(func() { lc.Close() })
	tp := NewTopic(lc, "t", WithPrefix(uniq(t)))
	if short {
		shortWaits(tp)
	}
	events, err := tp.Listen(ctx)
	require.NoError(t, err)
	pub := NewTopic(c, "t", WithPrefix(uniq(t)))
	publish(t, pub, "before")
	select {
	case ev := <-events:
		require.Equal(t, "before", string(ev.Payload))
	case <-time.After(5 * time.Second):
		t.Fatal("no event before the fault")
	}
	return p, events, pub
}

// Listen gives up when its ctx ends while Redis has not yet confirmed the
// subscription.
func TestListenCancelledWhileSubscribing(t *testing.T) {
	c := realRedis(t)
	p := redistest.NewFaultProxy(t, c.Options().Addr)
	p.FreezeOn([]byte("subscribe"))
	lc := redis.NewClient(&redis.Options{Addr: p.Addr()})
	defer lc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := NewTopic(lc, "t", WithPrefix(uniq(t))).Listen(ctx); done <- err }()
	time.Sleep(300 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(5 * time.Second):
		t.Fatal("Listen still blocked 5s after its ctx ended")
	}
}

// The channel closes when ctx ends while the listener subscribes anew.
func TestListenClosesWhenCancelledWhileResubscribing(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, events, _ := listenVia(t, ctx, false)
	p.FreezeOn([]byte("subscribe"))
	p.Drop() // the receive fails; the new subscription is never confirmed
	time.Sleep(time.Second)
	cancel()
	closesWithin(t, events, 5*time.Second)
}

// A link that dies without a word is found by an unanswered ping, and the
// listener subscribes anew.
func TestListenFindsASilentLink(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, events, pub := listenVia(t, ctx, true)
	p.Freeze()
	heardAgain(t, ctx, pub, events)
}

// heardAgain publishes "after <n>" every 50ms until the listener hears
// one, or fails when ctx ends.
func heardAgain(t *testing.T, ctx context.Context, pub *Topic, events <-chan Event) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case ev := <-events:
			if strings.HasPrefix(string(ev.Payload), "after ") {
				return
			}
		case <-tick.C:
			publish(t, pub, fmt.Sprintf("after %d", i))
		case <-ctx.Done():
			t.Fatal("the listener never subscribed again")
		}
	}
}

// A listener whose client is closed stops, and its channel closes.
func TestListenStopsWhenClientClosed(t *testing.T) {
	c := realRedis(t)
	lc := redis.NewClient(c.Options())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	events, err := NewTopic(lc, "t", WithPrefix(uniq(t))).Listen(ctx)
	require.NoError(t, err)
	require.NoError(t, lc.Close())
	select {
	case _, open := <-events:
		require.False(t, open)
	case <-time.After(5 * time.Second):
		t.Fatal("the client closed 5s ago, and the listener still runs")
	}
}

// shortWaits makes tp's listeners ping after 200ms of quiet and wait
// 500ms for an answer.
func shortWaits(tp *Topic) *Topic {
	tp.waits = listenWaits{ping: 200 * time.Millisecond, answer: 500 * time.Millisecond}
	return tp
}

// A resubscription whose link goes silent is given up after answerWait
// and tried again, so the listener comes back once the network does.
func TestListenResubscribesOverASilentLink(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, events, pub := listenVia(t, ctx, true)
	p.FreezeOn([]byte("subscribe")) // the next SUBSCRIBE's link goes silent for good
	p.Drop()                        // the receive fails: the listener subscribes anew
	time.Sleep(time.Second)
	p.FreezeOn(nil) // the network works again for new connections
	heardAgain(t, ctx, pub, events)
}

// Listen gives up at once when its ctx ends while its connection waits for
// Redis to answer the handshake go-redis sends before SUBSCRIBE, with a
// client read timeout or none (as pub/sub clients often set).
func TestListenCancelledDuringHandshake(t *testing.T) {
	for _, rt := range []time.Duration{-1, 0} {
		c := realRedis(t)
		p := redistest.NewFaultProxy(t, c.Options().Addr)
		lc := redis.NewClient(&redis.Options{Addr: p.Addr(), ReadTimeout: rt})
		p.FreezeOn([]byte("hello"))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { _, err := NewTopic(lc, "t", WithPrefix(uniq(t))).Listen(ctx); done <- err }()
		time.Sleep(300 * time.Millisecond)
		cancel()
		start := time.Now()
		select {
		case err := <-done:
			require.ErrorIs(t, err, context.Canceled)
			require.Less(t, time.Since(start), time.Second, "read timeout %v: Listen returned long after its ctx ended", rt)
		case <-time.After(8 * time.Second):
			t.Fatalf("read timeout %v: Listen still blocked 8s after its ctx ended", rt)
		}
		p.Drop()
		lc.Close()
	}
}

// The channel closes at once when ctx ends while a resubscription waits
// for Redis to answer its handshake, even one go-redis makes by itself
// inside a receive with no read timeout.
func TestListenClosesWhenCancelledDuringResubscribeHandshake(t *testing.T) {
	c := realRedis(t)
	p := redistest.NewFaultProxy(t, c.Options().Addr)
	lc := redis.NewClient(&redis.Options{Addr: p.Addr(), ReadTimeout: -1})
	defer lc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := NewTopic(lc, "t", WithPrefix(uniq(t))).Listen(ctx)
	require.NoError(t, err)
	p.FreezeOn([]byte("hello"))
	p.Drop() // the receive fails; the new connection's handshake is never answered
	time.Sleep(time.Second)
	cancel()
	closesWithin(t, events, 2*time.Second)
}

// closesWithin fails unless events closes within d, with no event first.
func closesWithin(t *testing.T, events <-chan Event, d time.Duration) {
	t.Helper()
	select {
	case ev, open := <-events:
		if open {
			t.Fatalf("an event after the fault: %q", ev.Payload)
		}
	case <-time.After(d):
		t.Fatalf("the channel is still open %v after ctx ended", d)
	}
}
