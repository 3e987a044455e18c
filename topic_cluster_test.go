package redlease

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease/internal/redistest"
)

// Topics on the tests' Redis Cluster: every key of a topic and of its
// subscriptions lives in the slot of the topic's hash tag, on that slot's
// master; Listen subscribes to a shard channel there (SSUBSCRIBE) and
// publishes go out with SPUBLISH from the publish script.

// clusterTopicDelay delays some messages of the scenario.
const clusterTopicDelay = 400 * time.Millisecond

// clusterTopicCase is one topic of the scenario: its name, and clients on
// the master that serves its slot and on the other masters.
type clusterTopicCase struct {
	cc     *redis.ClusterClient
	prefix string
	name   string
	master *redis.Client   // the master of the topic's slot
	others []*redis.Client // the other masters
}

// clusterTopicCases returns a case for each topic name in names (one per
// master address in byMaster), with direct clients on the masters closed
// when t ends.
func clusterTopicCases(t *testing.T, cc *redis.ClusterClient, prefix string, byMaster map[string][]string) []clusterTopicCase {
	t.Helper()
	nodes := map[string]*redis.Client{}
	for addr := range byMaster {
		nodes[addr] = redis.NewClient(&redis.Options{Addr: addr})
		t.Cleanup(func() { nodes[addr].Close() })
	}
	var cases []clusterTopicCase
	for _, addr := range sortedKeys(byMaster) {
		k := clusterTopicCase{cc: cc, prefix: prefix, name: byMaster[addr][0], master: nodes[addr]}
		for other, c := range nodes {
			if other != addr {
				k.others = append(k.others, c)
			}
		}
		if got := redistest.MasterOf(t, cc, topicBase(prefix, k.name)+"payloads"); got != addr {
			t.Fatalf("topic %q: its keys live on %s, its name's slot on %s", k.name, got, addr)
		}
		cases = append(cases, k)
	}
	return cases
}

// clusterTopicNames picks one topic name whose slot lives on each master.
func clusterTopicNames(t *testing.T, cc *redis.ClusterClient) map[string][]string {
	t.Helper()
	byMaster := redistest.NamesPerMaster(t, cc, 1, func(i int) string { return "topic-" + strconv.Itoa(i) })
	if len(byMaster) != 3 {
		t.Fatalf("topic names on %d masters, want 3: %v", len(byMaster), byMaster)
	}
	return byMaster
}

// crossSlotErrors sums the CROSSSLOT errors every node of the tests'
// cluster has answered (INFO errorstats).
func crossSlotErrors(t *testing.T) int64 {
	t.Helper()
	var total int64
	for _, s := range cluster.Nodes {
		c := redis.NewClient(&redis.Options{Addr: s.Addr})
		info, err := c.Info(context.Background(), "errorstats").Result()
		c.Close()
		require.NoError(t, err)
		for _, line := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "errorstat_CROSSSLOT:count="); ok {
				n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				require.NoError(t, err)
				total += n
			}
		}
	}
	return total
}

// scanKeys returns the keys of the node c is on that start with prefix.
func scanKeys(ctx context.Context, c *redis.Client, prefix string) ([]string, error) {
	glob := strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`, `]`, `\]`).Replace(prefix) + "*"
	var keys []string
	var cursor uint64
	for range 100_000 {
		ks, next, err := c.Scan(ctx, cursor, glob, 1000).Result()
		if err != nil {
			return nil, err
		}
		keys = append(keys, ks...)
		if cursor = next; cursor == 0 {
			slices.Sort(keys)
			return slices.Compact(keys), nil
		}
	}
	return nil, fmt.Errorf("SCAN %s on %s did not finish", glob, c.Options().Addr)
}

// clusterTopicEvent is an event as the listener should see it.
type clusterTopicEvent struct{ id, payload string }

// delivery is one handler call of Consume.
type clusterTopicDelivery struct {
	payload string
	attempt int
	at      time.Time
}

// run is the scenario on one topic; it returns what it measured, or the
// first thing that went wrong. It calls no t.Fatal, so that several run at
// once.
func (k clusterTopicCase) run(ctx context.Context) (report string, err error) {
	tp := NewTopic(k.cc, k.name, WithPrefix(k.prefix))
	base := topicBase(k.prefix, k.name)
	subs := []string{"a", "b", "c"}
	queues := map[string]*Queue{}
	for _, s := range subs {
		q, err := tp.Subscribe(ctx, s)
		if err != nil {
			return "", err
		}
		queues[s] = q
	}
	if got, err := tp.Subscriptions(ctx); err != nil || !slices.Equal(got, subs) {
		return "", fmt.Errorf("subscriptions %v %v, want %v", got, err, subs)
	}

	lctx, stopListening := context.WithCancel(ctx)
	defer stopListening()
	events, err := tp.Listen(lctx)
	if err != nil {
		return "", err
	}
	// The listener's goroutine ends once its channel has closed, which
	// it must do soon after its context ends.
	defer func() {
		stopListening()
		if !clusterTopicDrained(events, 5*time.Second) && err == nil {
			err = errors.New("the listener's channel was not closed 5s after its context ended")
		}
	}()
	var wantEvents []clusterTopicEvent
	want := map[string]map[string]string{} // subscription -> id -> payload
	for _, s := range subs {
		want[s] = map[string]string{}
	}
	everyone := func(id, payload string) {
		for _, s := range subs {
			want[s][id] = payload
		}
		wantEvents = append(wantEvents, clusterTopicEvent{id, payload})
	}

	// WithID dedupes per subscription: a's copy acked, a publish with the
	// same id reaches a alone, and b and c keep their first message.
	dup := "dup-" + k.name
	if id, err := tp.Publish(ctx, []byte("x1"), WithID(dup)); err != nil || id != dup {
		return "", fmt.Errorf("publish with id: %q %v", id, err)
	}
	everyone(dup, "x1")
	if id, err := tp.Publish(ctx, []byte("x1 again"), WithID(dup)); !errors.Is(err, ErrDuplicate) || id != dup {
		return "", fmt.Errorf("publish with an id live everywhere: %q %v, want %q and ErrDuplicate", id, err, dup)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	m, err := queues["a"].Claim(cctx)
	cancel()
	if err != nil || m.ID != dup || string(m.Payload) != "x1" {
		return "", fmt.Errorf("a's first claim: %v %v", m, err)
	}
	if err := m.Ack(ctx); err != nil {
		return "", err
	}
	if id, err := tp.Publish(ctx, []byte("x2"), WithID(dup)); err != nil || id != dup {
		return "", fmt.Errorf("publish with an id acked in a alone: %q %v", id, err)
	}
	want["a"][dup] = "x2"
	wantEvents = append(wantEvents, clusterTopicEvent{dup, "x2"})
	// x1 is stored once for b and c, x2 once for a.
	stored, err := k.cc.HGetAll(ctx, base+"payloads").Result()
	if err != nil {
		return "", err
	}
	refs := map[string]string{}
	for f, v := range stored {
		if strings.HasPrefix(f, "p") {
			if _, twice := refs[v]; twice {
				return "", fmt.Errorf("payload %q stored twice: %v", v, stored)
			}
			refs[v] = stored["n"+f[1:]]
		}
	}
	if len(refs) != 2 || refs["x1"] != "2" || refs["x2"] != "1" {
		return "", fmt.Errorf("stored payloads and their counts %v, want x1 2, x2 1 (payloads hash %v)", refs, stored)
	}

	const singles, batch, delayed = 20, 100, 5
	for i := range singles {
		p := "single " + strconv.Itoa(i)
		id, err := tp.Publish(ctx, []byte(p))
		if err != nil {
			return "", err
		}
		everyone(id, p)
	}
	var payloads [][]byte
	for i := range batch {
		payloads = append(payloads, []byte("batch "+strconv.Itoa(i)))
	}
	ids, err := tp.PublishBatch(ctx, payloads)
	if err != nil || len(ids) != batch {
		return "", fmt.Errorf("publish batch: %d ids, %v", len(ids), err)
	}
	for i, id := range ids {
		everyone(id, string(payloads[i]))
	}
	delayedSince := time.Now()
	due := map[string]bool{}
	for i := range delayed {
		p := "delayed " + strconv.Itoa(i)
		id, err := tp.Publish(ctx, []byte(p), WithDelay(clusterTopicDelay))
		if err != nil {
			return "", err
		}
		everyone(id, p)
		due[id] = true
	}
	for _, s := range subs {
		if st, err := queues[s].Stats(ctx); err != nil || st.depth() != (Stats{Ready: 1 + singles + batch, Delayed: delayed}) {
			return "", fmt.Errorf("%s before consuming: %+v %v", s, st, err)
		}
	}
	if err := k.placed(ctx, subs); err != nil {
		return "", err
	}

	// The listener saw every message published since Listen returned, in
	// order, and not the duplicate.
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for i, we := range wantEvents {
		select {
		case ev, ok := <-events:
			if !ok {
				return "", fmt.Errorf("listener closed after %d of %d events", i, len(wantEvents))
			}
			if ev.ID != we.id || string(ev.Payload) != we.payload {
				return "", fmt.Errorf("event %d: %q %q, want %q %q", i, ev.ID, ev.Payload, we.id, we.payload)
			}
		case <-timeout.C:
			return "", fmt.Errorf("listener got %d of %d events in 10s", i, len(wantEvents))
		}
	}

	// Each subscription consumed at once by its own Consume: every id
	// handled once, with its payload; with the default 30s lease, renewed
	// while the handler runs, no claim ends before its ack, so a second
	// delivery would mean a claim was lost.
	consumeStart := time.Now()
	cctx, cancel = context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var (
		mu   sync.Mutex
		got  = map[string]map[string][]clusterTopicDelivery{}
		errs = make([]error, len(subs))
		wg   sync.WaitGroup
	)
	for _, s := range subs {
		got[s] = map[string][]clusterTopicDelivery{}
	}
	for i, s := range subs {
		sctx, done := context.WithCancel(cctx)
		wg.Go(func() {
			defer done()
			errs[i] = queues[s].Consume(sctx, func(_ context.Context, m *Message) error {
				mu.Lock()
				got[s][m.ID] = append(got[s][m.ID], clusterTopicDelivery{string(m.Payload), m.Attempt, time.Now()})
				all := len(got[s]) == len(want[s])
				mu.Unlock()
				if all {
					done()
				}
				return nil
			}, WithConcurrency(4))
		})
	}
	wg.Wait()
	consumed := time.Since(consumeStart)
	var lateness time.Duration // of the last delayed message handled, after it was due
	for i, s := range subs {
		if !errors.Is(errs[i], context.Canceled) || cctx.Err() != nil {
			return "", fmt.Errorf("%s: Consume returned %v after %d of %d messages", s, errs[i], len(got[s]), len(want[s]))
		}
		for id, p := range want[s] {
			d := got[s][id]
			if len(d) != 1 || d[0].payload != p || d[0].attempt != 1 {
				return "", fmt.Errorf("%s: message %s handled %d times %+v, want once with %q", s, id, len(d), d, p)
			}
			if due[id] {
				lateness = max(lateness, d[0].at.Sub(delayedSince.Add(clusterTopicDelay)))
			}
			if due[id] && d[0].at.Before(delayedSince.Add(clusterTopicDelay-2*time.Millisecond)) {
				return "", fmt.Errorf("%s: message %s delayed %v handled %v after its publish", s, id, clusterTopicDelay, d[0].at.Sub(delayedSince))
			}
		}
		for id := range got[s] {
			if _, ok := want[s][id]; !ok {
				return "", fmt.Errorf("%s: unknown message %s handled", s, id)
			}
		}
		if st, err := queues[s].Stats(ctx); err != nil || st.depth() != (Stats{}) {
			return "", fmt.Errorf("%s after consuming: %+v %v", s, st, err)
		}
	}
	if left, err := k.cc.HGetAll(ctx, base+"payloads").Result(); err != nil || len(left) != 1 || left["seq"] == "" {
		return "", fmt.Errorf("payloads after every subscription acked everything: %v %v, want only seq", left, err)
	}

	// Unsubscribe with a backlog: ready, delayed, in flight and dead.
	backlog := make([][]byte, 50)
	for i := range backlog {
		backlog[i] = []byte("backlog " + strconv.Itoa(i))
	}
	if _, err := tp.PublishBatch(ctx, backlog); err != nil {
		return "", err
	}
	for i := range 3 {
		if _, err := tp.Publish(ctx, []byte("later "+strconv.Itoa(i)), WithDelay(time.Minute)); err != nil {
			return "", err
		}
	}
	once, err := tp.Subscribe(ctx, "c", WithMaxAttempts(1)) // c's queue, dead-lettering at once
	if err != nil {
		return "", err
	}
	if m, err := once.Claim(ctx); err != nil {
		return "", err
	} else if err := m.Nack(ctx); err != nil {
		return "", err
	}
	held, err := queues["c"].Claim(ctx)
	if err != nil {
		return "", err
	}
	if st, err := queues["c"].Stats(ctx); err != nil || st.depth() != (Stats{Ready: 48, Delayed: 3, InFlight: 1, Dead: 1}) {
		return "", fmt.Errorf("c's backlog: %+v %v", st, err)
	}
	if err := tp.Unsubscribe(ctx, "c"); err != nil {
		return "", err
	}
	if err := k.gone(ctx, "c"); err != nil {
		return "", err
	}
	if err := held.Ack(ctx); !errors.Is(err, ErrNotHeld) {
		return "", fmt.Errorf("ack of a message of a removed subscription: %v, want ErrNotHeld", err)
	}
	if got, err := tp.Subscriptions(ctx); err != nil || !slices.Equal(got, []string{"a", "b"}) {
		return "", fmt.Errorf("subscriptions after unsubscribing c: %v %v", got, err)
	}
	// Every payload left is held by a and b alone: 53 of them.
	if err := k.counts(ctx, 53, "2"); err != nil {
		return "", fmt.Errorf("after unsubscribing c: %w", err)
	}
	if _, err := tp.Publish(ctx, []byte("after c")); err != nil {
		return "", err
	}
	if err := k.gone(ctx, "c"); err != nil {
		return "", fmt.Errorf("after a publish: %w", err)
	}
	if err := tp.Unsubscribe(ctx, "a"); err != nil {
		return "", err
	}
	if err := k.counts(ctx, 54, "1"); err != nil {
		return "", fmt.Errorf("after unsubscribing a: %w", err)
	}
	if err := tp.Unsubscribe(ctx, "b"); err != nil {
		return "", err
	}
	if err := tp.Unsubscribe(ctx, "c"); err != nil {
		return "", fmt.Errorf("unsubscribing c again: %w", err)
	}
	for _, s := range subs {
		if err := k.gone(ctx, s); err != nil {
			return "", err
		}
		if st, err := queues[s].Stats(ctx); err != nil || st.depth() != (Stats{}) {
			return "", fmt.Errorf("%s after unsubscribing: %+v %v", s, st, err)
		}
	}
	if err := k.counts(ctx, 0, ""); err != nil {
		return "", fmt.Errorf("after unsubscribing all: %w", err)
	}
	if got, err := tp.Subscriptions(ctx); err != nil || len(got) != 0 {
		return "", fmt.Errorf("subscriptions after unsubscribing all: %v %v", got, err)
	}
	return fmt.Sprintf("%d messages to 3 subscriptions consumed in %v (delayed ones handled at most %v after due), %d events heard",
		len(want["b"]), consumed.Round(time.Millisecond), lateness.Round(time.Millisecond), len(wantEvents)), nil
}

// clusterTopicDrained reads events until the channel closes, and reports
// whether it did within timeout.
func clusterTopicDrained(events <-chan Event, timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case _, ok := <-events:
			if !ok {
				return true
			}
		case <-t.C:
			return false
		}
	}
}

// placed checks that the topic's keys, the subscriptions' among them, are
// all in the slot of the topic's tag, on its master, and on no other.
func (k clusterTopicCase) placed(ctx context.Context, subs []string) error {
	base := topicBase(k.prefix, k.name)
	keys, err := scanKeys(ctx, k.master, base)
	if err != nil {
		return err
	}
	wantSlot := nameSlot(k.name)
	for _, key := range keys {
		if slot(key) != wantSlot {
			return fmt.Errorf("key %q in slot %d, the topic's is %d", key, slot(key), wantSlot)
		}
	}
	for _, s := range subs {
		sh := newSubscriptionShard(k.prefix, k.name, s)
		for _, key := range []string{sh.ready, sh.delayed, sh.messages, sh.marker, base + "payloads", base + "subs", base + "version"} {
			if !slices.Contains(keys, key) {
				return fmt.Errorf("key %q not on the topic's master %s; there: %v", key, k.master.Options().Addr, keys)
			}
		}
	}
	if n, err := k.master.ClusterKeySlot(ctx, base+"payloads").Result(); err != nil || n != int64(wantSlot) {
		return fmt.Errorf("CLUSTER KEYSLOT of the payloads: %d %v, want %d", n, err, wantSlot)
	}
	for _, o := range k.others {
		if keys, err := scanKeys(ctx, o, base); err != nil || len(keys) > 0 {
			return fmt.Errorf("keys of topic %q on %s: %v %v", k.name, o.Options().Addr, keys, err)
		}
	}
	return nil
}

// gone checks that no key of subscription sub is left, nor a hash that
// Unsubscribe set aside to drain.
func (k clusterTopicCase) gone(ctx context.Context, sub string) error {
	base := topicBase(k.prefix, k.name)
	for _, prefix := range []string{base + "sub:" + sub + ":", base + "trash"} {
		if keys, err := scanKeys(ctx, k.master, prefix); err != nil || len(keys) > 0 {
			return fmt.Errorf("subscription %s unsubscribed, yet keys %v %v", sub, keys, err)
		}
	}
	return nil
}

// counts checks that the topic holds n payloads, each with count want,
// and its counter (seq).
func (k clusterTopicCase) counts(ctx context.Context, n int, want string) error {
	stored, err := k.cc.HGetAll(ctx, topicBase(k.prefix, k.name)+"payloads").Result()
	if err != nil {
		return err
	}
	if len(stored) != 2*n+1 || stored["seq"] == "" {
		return fmt.Errorf("payloads hash has %d fields, want %d payloads with counts and seq: %v", len(stored), n, stored)
	}
	for f, v := range stored {
		if strings.HasPrefix(f, "n") && v != want {
			return fmt.Errorf("payload %s has count %s, want %s", f[1:], v, want)
		}
	}
	return nil
}

// A topic on one master of a 3-master cluster: Subscribe, Publish and
// PublishBatch (with WithDelay, and WithID deduped per subscription), a
// listener on its shard channel, three subscriptions consumed at once,
// Unsubscribe with a backlog; its keys all on its own slot's master, and
// no node answered CROSSSLOT.
func TestClusterTopic(t *testing.T) {
	cc := startCluster(t)
	ctx := context.Background()
	before := crossSlotErrors(t)
	cases := clusterTopicCases(t, cc, uniq(t), clusterTopicNames(t, cc))
	k := cases[0]
	start := time.Now()
	report, err := k.run(ctx)
	require.NoError(t, err, "topic %q on %s", k.name, k.master.Options().Addr)
	t.Logf("topic %q on %s: %s; %v in all", k.name, k.master.Options().Addr, report, time.Since(start).Round(time.Millisecond))
	require.Equal(t, before, crossSlotErrors(t), "CROSSSLOT errors on the cluster's nodes")
}

// Three topics, one on each master, go through the scenario at once, on
// one ClusterClient: each topic's keys stay on its own master, each
// listener hears only its own topic, on its own master's shard channel.
func TestClusterTopicsOnEveryMaster(t *testing.T) {
	cc := startCluster(t)
	ctx := context.Background()
	before := crossSlotErrors(t)
	cases := clusterTopicCases(t, cc, uniq(t), clusterTopicNames(t, cc))
	reports := make([]string, len(cases))
	errs := make([]error, len(cases))
	var wg sync.WaitGroup
	start := time.Now()
	for i, k := range cases {
		wg.Go(func() { reports[i], errs[i] = k.run(ctx) })
	}
	wg.Wait()
	for i, k := range cases {
		if errs[i] != nil {
			t.Errorf("topic %q on %s: %v", k.name, k.master.Options().Addr, errs[i])
		} else {
			t.Logf("topic %q on %s: %s", k.name, k.master.Options().Addr, reports[i])
		}
	}
	t.Logf("%d topics at once in %v", len(cases), time.Since(start).Round(time.Millisecond))
	require.Equal(t, before, crossSlotErrors(t), "CROSSSLOT errors on the cluster's nodes")
}

// A listener on a ClusterClient with ReadOnly set (as RouteByLatency and
// RouteRandomly set it) subscribes on a replica of the topic's slot:
// go-redis sends its SSUBSCRIBE there. Redis passes every SPUBLISH on to
// the replicas of the slot's shard, so such a listener, alone on the
// topic, hears every message published after Listen returned, in order,
// as one on the master does.
func TestClusterTopicListenOnReplica(t *testing.T) {
	cc := startCluster(t)
	ro := cluster.Client(t, func(o *redis.ClusterOptions) { o.ReadOnly = true })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	prefix := uniq(t)
	name := clusterTopicNames(t, cc)[redistest.MasterOf(t, cc, "t")][0]
	publisher := NewTopic(cc, name, WithPrefix(prefix))
	events, err := NewTopic(ro, name, WithPrefix(prefix)).Listen(ctx)
	require.NoError(t, err)
	defer func() {
		cancel()
		if !clusterTopicDrained(events, 5*time.Second) {
			t.Error("the listener's channel was not closed 5s after its context ended")
		}
	}()
	// The listener is subscribed on a replica of the topic's master.
	channel := publisher.keys.events
	master := redistest.MasterOf(t, cc, channel)
	subscribed := map[string]int64{}
	for _, s := range cluster.Nodes {
		c := redis.NewClient(&redis.Options{Addr: s.Addr})
		n := c.PubSubShardNumSub(ctx, channel).Val()[channel]
		c.Close()
		if n > 0 {
			subscribed[s.Addr] = n
		}
	}
	var replica string
	for _, s := range cc.ClusterSlots(ctx).Val() {
		for _, n := range s.Nodes[1:] {
			if s.Nodes[0].Addr == master && subscribed[n.Addr] == 1 {
				replica = n.Addr
			}
		}
	}
	if replica == "" || len(subscribed) != 1 {
		t.Fatalf("shard subscriptions to %s by node %v: want one, on a replica of %s", channel, subscribed, master)
	}

	var want []string
	for i := range 5 {
		id, err := publisher.Publish(ctx, []byte("m"+strconv.Itoa(i)))
		require.NoError(t, err)
		want = append(want, id)
	}
	var got []string
	timeout := time.After(5 * time.Second)
read:
	for range want {
		select {
		case ev := <-events:
			got = append(got, ev.ID)
		case <-timeout:
			break read
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("a listener subscribed on %s, a replica of the topic's master %s, heard %d of %d messages in 5s: %v, want %v",
			replica, master, len(got), len(want), got, want)
	}
}
