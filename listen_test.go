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
		want := []Event{{id, []byte("alone")}, {ids[0], []byte("b1")}, {ids[1], []byte{}}, {ids[2], []byte("b:3")},
			{dup, []byte("d")}, {last, []byte("last")}}
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
	var logs logLines
	tp := newTopic(t, c, WithLogger(logs.logger()))
	events, err := tp.Listen(ctx)
	require.NoError(t, err)
	publish(t, tp, "before")
	require.Equal(t, "before", string((<-events).Payload))
	require.NoError(t, c.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err())
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case ev := <-events:
			require.True(t, strings.HasPrefix(string(ev.Payload), "after "), string(ev.Payload))
			return
		case <-tick.C:
			publish(t, tp, fmt.Sprintf("after %d", i))
		case <-ctx.Done():
			t.Fatal("the listener never came back")
		}
	}
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
