package redlease

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// A topic's subscriptions consumed by processes killed with SIGKILL at
// random moments: in every subscription each published message is acked
// exactly once and none is lost, and the payloads the subscriptions share
// are freed exactly when the last of them acks its copy.

// topicCrashChildEnv makes the test binary a consumer of one subscription:
// "addr prefix subscription". TestMain dispatches the other children; this
// file's init does this one, before TestMain runs.
const topicCrashChildEnv = "REDLEASE_TOPIC_CRASH_CHILD"

// topicCrashRecordedAck acks a claim on a subscription and, in the same
// script, records the ack (a count per id) and the payload the consumer
// was given: a process killed right after its ack cannot lose the record.
// Only the run that deletes the message records it, so a resent ack that
// finds its work done is not counted twice.
//
// KEYS: the subscription's shard keys (nine: lua/queue.lua's, PAYLOADS
// last), then ACKS and GOT, hashes under the topic's hash tag.
// ARGV: id, claim token, payload as claimed.
var topicCrashRecordedAck = redis.NewScript(queuePrelude + `
local ACKS, GOT = KEYS[#KEYS - 1], KEYS[#KEYS]
local held = holder(ARGV[1], ARGV[2]) == OK
local r = ack(ARGV[1], ARGV[2])
if held and r == OK then
  redis.call('HINCRBY', ACKS, ARGV[1], 1)
  redis.call('HSET', GOT, ARGV[1], ARGV[3])
end
return r
`)

// topicCrashLease is the subscriptions' lease: a killed consumer's claim
// comes back soon.
const topicCrashLease = 300 * time.Millisecond

// topicCrashTopic is the topic the test and its consumer processes share.
func topicCrashTopic(c *redis.Client, prefix string) *Topic {
	return NewTopic(c, "t", WithPrefix(prefix), WithLease(topicCrashLease), WithMaxAttempts(1000))
}

// topicCrashRecords returns the hashes where a subscription's acks are
// counted and its payloads recorded: under the topic's tag, apart from
// every key of the library's.
func topicCrashRecords(prefix, sub string) (acks, got string) {
	base := topicBase(prefix, "t") + "test:"
	return base + "acks:" + sub, base + "got:" + sub
}

// topicCrashChild consumes one subscription: it claims, "works" a few ms,
// acks with topicCrashRecordedAck, and gives back expired claims, until
// the subscription is empty and the test has published every message. It
// gives up after 75s (the test waits 60s at
// most, then kills it).
func topicCrashChild(env string) int {
	f := strings.Fields(env)
	if len(f) != 3 {
		fmt.Fprintf(os.Stderr, "%s=%q: want addr prefix subscription\n", topicCrashChildEnv, env)
		return 2
	}
	addr, prefix, sub := f[0], f[1], f[2]
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	ctx := context.Background()
	// Subscribe is idempotent: a consumer process opens its subscription so.
	q, err := topicCrashTopic(c, prefix).Subscribe(ctx, sub)
	if err != nil {
		fmt.Fprintln(os.Stderr, "subscribe:", err)
		return 2
	}
	acks, got := topicCrashRecords(prefix, sub)
	keys := append(append([]string(nil), q.shards[0].keys...), acks, got)
	for deadline := time.Now().Add(75 * time.Second); time.Now().Before(deadline); {
		_, _ = q.Reclaim(ctx)
		cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		m, err := q.Claim(cctx)
		cancel()
		if err != nil {
			if s, err := q.Stats(ctx); err == nil && s.depth() == (Stats{}) && c.Exists(ctx, prefix+":published").Val() == 1 {
				return 0
			}
			continue
		}
		c.HIncrBy(ctx, prefix+":claims", sub, 1)
		time.Sleep(time.Duration(rand.IntN(10_000)) * time.Microsecond)
		topicCrashRecordedAck.Run(ctx, c, keys, m.ID, m.token, m.Payload)
	}
	return 1
}

// topicCrashProc is one consumer process.
type topicCrashProc struct {
	sub    string
	cmd    *exec.Cmd
	stderr bytes.Buffer // read only once done is closed
	done   chan struct{}
	killed bool // by the test
}

// exited reports whether the process has ended.
func (p *topicCrashProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill ends the process with SIGKILL and waits for it.
func (p *topicCrashProc) kill() {
	p.killed = true
	_ = p.cmd.Process.Kill()
	<-p.done
}

// check fails the test if the process, once ended, reported a data race,
// or ended otherwise than with success or the test's SIGKILL.
func (p *topicCrashProc) check(t *testing.T) {
	t.Helper()
	out := p.stderr.String()
	if strings.Contains(out, "DATA RACE") {
		t.Errorf("consumer of %s reported a data race:\n%s", p.sub, out)
	}
	st := p.cmd.ProcessState
	ws, _ := st.Sys().(syscall.WaitStatus)
	if st.Success() || (p.killed && ws.Signaled() && ws.Signal() == syscall.SIGKILL) {
		return
	}
	t.Errorf("consumer of %s ended with %v:\n%s", p.sub, st, out)
}

// Three subscriptions of a topic, a few hundred messages published to them
// (Publish and PublishBatch, half of them while the consumers run, and
// while a fourth subscription comes and goes with its backlog), each
// subscription consumed by two processes that are killed with SIGKILL at
// random moments and replaced: in every subscription every message is
// acked exactly once, with the payload published, and no other id is
// acked; nothing is left in any subscription; and the topic's payloads,
// stored once with a count of the subscriptions that hold them, are all
// freed: only the reference counter is left.
func TestTopicCrashingConsumerProcesses(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	prefix := uniq(t)
	tp := topicCrashTopic(c, prefix)
	subs := []string{"s0", "s1", "s2"}
	queues := map[string]*Queue{}
	for _, s := range subs {
		q, err := tp.Subscribe(ctx, s)
		require.NoError(t, err)
		queues[s] = q
	}

	// 300 messages, 60 published one by one and 240 in batches: half
	// before the consumers start, half while they run and are killed.
	const n = 300
	want := map[string]string{} // id -> payload
	singles, batches := 0, 0
	publishOne := func() {
		p := "single " + strconv.Itoa(singles)
		singles++
		id, err := tp.Publish(ctx, []byte(p))
		require.NoError(t, err)
		want[id] = p
	}
	publishBatch := func(size int) {
		var payloads [][]byte
		for i := range size {
			payloads = append(payloads, []byte(fmt.Sprintf("batch %d message %d", batches, i)))
		}
		batches++
		ids, err := tp.PublishBatch(ctx, payloads)
		require.NoError(t, err)
		require.Len(t, ids, size)
		for i, id := range ids {
			want[id] = string(payloads[i])
		}
	}
	for range 30 {
		publishOne()
	}
	publishBatch(120)

	// Each payload is stored once, referred to by the three subscriptions.
	payloadsKey := topicBase(prefix, "t") + "payloads"
	stored, err := c.HGetAll(ctx, payloadsKey).Result()
	require.NoError(t, err)
	require.Len(t, stored, 2*len(want)+1, "payloads hash: a payload and a count per message, and seq")
	require.Equal(t, strconv.Itoa(len(want)), stored["seq"])
	seen := map[string]bool{}
	for f, v := range stored {
		switch f[0] {
		case 'n':
			require.Equal(t, "3", v, "count %s", f)
		case 'p':
			require.False(t, seen[v], "payload %q stored twice", v)
			seen[v] = true
		}
	}
	for _, s := range subs {
		wantStats(t, queues[s], Stats{Ready: int64(len(want))})
	}

	// The rest, a step every 20ms once the consumers run: 30 messages one
	// by one and 6 batches of 20. Every fourth step, a fourth subscription,
	// which nobody consumes, comes or goes with its backlog.
	var steps []func()
	for j := range 36 {
		if j%6 == 5 {
			steps = append(steps, func() { publishBatch(20) })
		} else {
			steps = append(steps, publishOne)
		}
	}
	churning, churns := false, 0
	churn := func() {
		var err error
		if churning {
			err = tp.Unsubscribe(ctx, "churn")
		} else {
			_, err = tp.Subscribe(ctx, "churn")
		}
		require.NoError(t, err)
		churning = !churning
		churns++
	}
	published := prefix + ":published" // set once every message is published

	exe, err := os.Executable()
	require.NoError(t, err)
	start := func(sub string) *topicCrashProc {
		p := &topicCrashProc{sub: sub, done: make(chan struct{})}
		p.cmd = exec.Command(exe, "-test.run=^$")
		p.cmd.Env = append(os.Environ(), topicCrashChildEnv+"="+c.Options().Addr+" "+prefix+" "+sub)
		p.cmd.Stderr = &p.stderr
		require.NoError(t, p.cmd.Start())
		go func() {
			_ = p.cmd.Wait()
			close(p.done)
		}()
		return p
	}
	const perSub = 2
	var procs []*topicCrashProc // procs[i] consumes subs[i/perSub]
	for _, s := range subs {
		for range perSub {
			procs = append(procs, start(s))
		}
	}
	t.Cleanup(func() {
		for _, p := range procs {
			p.kill()
		}
	})
	// replace ends proc i, if it has not ended, checks how it ended, and
	// starts another in its place.
	replace := func(i int) {
		if !procs[i].exited() {
			procs[i].kill()
		}
		procs[i].check(t)
		procs[i] = start(procs[i].sub)
	}

	// A subscription is drained once it is empty and every id's ack is
	// recorded (Stats reads its counts apart, not atomically).
	drained := map[string]bool{}
	isDrained := func(s string) bool {
		acks, _ := topicCrashRecords(prefix, s)
		st, err := queues[s].Stats(ctx)
		return err == nil && st.depth() == (Stats{}) && c.HLen(ctx, acks).Val() >= n
	}
	began := time.Now()
	deadline := began.Add(60 * time.Second)
	killUntil := began.Add(10 * time.Second)
	nextKill := began.Add(time.Duration(50+rand.IntN(200)) * time.Millisecond)
	kills := map[string]int{}
	turn, step := 0, 0
	for {
		left := 0
		var pending []string
		for _, s := range subs {
			if !drained[s] {
				drained[s] = isDrained(s)
			}
			if !drained[s] {
				left++
				pending = append(pending, s)
			}
		}
		if left == 0 {
			break
		}
		if step < len(steps) {
			if step%4 == 0 {
				churn()
			}
			steps[step]()
			if step++; step == len(steps) {
				if churning {
					churn()
				}
				require.Len(t, want, n, "ids are not distinct")
				require.NoError(t, c.Set(ctx, published, 1, 0).Err())
			}
		}
		now := time.Now()
		if now.After(deadline) {
			var state []string
			for _, s := range subs {
				acks, _ := topicCrashRecords(prefix, s)
				st, err := queues[s].Stats(ctx)
				state = append(state, fmt.Sprintf("%s: %d of %d acks recorded, stats %+v %v", s, c.HLen(ctx, acks).Val(), n, st, err))
			}
			t.Fatalf("subscriptions not drained after %v (%d kills):\n%s", now.Sub(began), len(kills), strings.Join(state, "\n"))
		}
		// Every 50-250ms (for 10s at most), kill a consumer of a
		// subscription that has a message in flight, taking such
		// subscriptions in turn, and start another in its place.
		if now.Before(killUntil) && now.After(nextKill) {
			var busy []string
			for _, s := range pending {
				if c.ZCard(ctx, queues[s].shards[0].inflight).Val() > 0 {
					busy = append(busy, s)
				}
			}
			if len(busy) > 0 {
				s := busy[turn%len(busy)]
				turn++
				replace(slices.Index(subs, s)*perSub + rand.IntN(perSub))
				kills[s]++
				nextKill = time.Now().Add(time.Duration(50+rand.IntN(200)) * time.Millisecond)
			}
		}
		// A consumer that ended (it saw its subscription empty after the
		// last publish, in counts that Stats does not read atomically)
		// while work is left is replaced.
		for i, p := range procs {
			if p.exited() && !drained[p.sub] && !isDrained(p.sub) {
				replace(i)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	elapsed := time.Since(began)
	for _, p := range procs {
		if !p.exited() {
			p.kill()
		}
		p.check(t)
	}

	claims, err := c.HGetAll(ctx, prefix+":claims").Result()
	require.NoError(t, err)
	totalKills, totalClaims := 0, 0
	for _, s := range subs {
		acks, got := topicCrashRecords(prefix, s)
		counts, err := c.HGetAll(ctx, acks).Result()
		require.NoError(t, err)
		payloads, err := c.HGetAll(ctx, got).Result()
		require.NoError(t, err)
		for id, p := range want {
			if counts[id] != "1" {
				t.Errorf("subscription %s: message %s acked %q times, want 1", s, id, counts[id])
			} else if payloads[id] != p {
				t.Errorf("subscription %s: message %s claimed with payload %q, published %q", s, id, payloads[id], p)
			}
		}
		for id, k := range counts {
			if _, ok := want[id]; !ok {
				t.Errorf("subscription %s: unknown id %q acked %s times", s, id, k)
			}
		}
		wantStats(t, queues[s], Stats{})
		messages := queues[s].shards[0].messages
		// Only the totals stay, and they count each message once.
		total := strconv.Itoa(len(want))
		if fields, err := c.HGetAll(ctx, messages).Result(); err != nil ||
			!maps.Equal(fields, map[string]string{"#enqueued": total, "#acked": total}) {
			t.Errorf("subscription %s: %s left with %d fields %v, want the totals %s: %v", s, messages, len(fields), err, total, fields)
		}
		k, _ := strconv.Atoi(claims[s])
		totalKills += kills[s]
		totalClaims += k
		t.Logf("subscription %s: %d consumer processes killed, %d claims (%d cut short)", s, kills[s], k, k-n)
	}
	names, err := tp.Subscriptions(ctx)
	require.NoError(t, err)
	require.Equal(t, subs, names)
	left, err := c.HGetAll(ctx, payloadsKey).Result()
	require.NoError(t, err)
	if len(left) != 1 || left["seq"] != strconv.Itoa(n) {
		fields := slices.Sorted(maps.Keys(left))
		t.Errorf("the topic's payloads hash holds %d fields, want only seq=%d; the first: %v", len(left), n, fields[:min(len(fields), 10)])
	}
	t.Logf("%d messages (%d one by one, %d batches) to %d subscriptions drained in %v, %d processes killed with SIGKILL, %d claims; a fourth subscription came or went %d times",
		n, singles, batches, len(subs), elapsed.Round(time.Millisecond), totalKills, totalClaims, churns)
	if totalKills == 0 || totalClaims <= len(subs)*n {
		t.Fatal("no claim was cut short: the test proves little")
	}
}
