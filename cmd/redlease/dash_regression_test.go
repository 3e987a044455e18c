package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease"
)

// DNS rebinding: with no --token (the default, on loopback), a page on
// attacker.example whose name is rebound to 127.0.0.1 would be same-origin
// with the dashboard; the dashboard answers only a Host that is an IP
// address or localhost, so it reads nothing and deletes nothing.
func TestDashDNSRebinding(t *testing.T) {
	_, c := newMini(t)
	seed(t, c, redlease.DefaultPrefix)
	d, h := newTestDash(t, c, dashConfig{})
	const evil = "http://attacker.example:7380"

	w := get(h, evil+"/queue?name=emails")
	require.Equal(t, http.StatusForbidden, w.Code, "a request for Host attacker.example:7380")
	for _, site := range []string{"http://localhost:7380", "http://[::1]:7380", testSite} {
		require.Equal(t, http.StatusOK, get(h, site+"/").Code, site)
	}
	form := url.Values{csrfField: {d.csrf}, "name": {"emails"}, "all": {"yes"}, "confirm": {"yes"}}
	w = post(h, evil+"/queue/delete", form, "Origin", evil, "Sec-Fetch-Site", "same-origin")
	st, err := redlease.NewQueue(c, "emails").Stats(context.Background())
	require.NoError(t, err)
	require.Equal(t, int64(2), st.Dead, "rebound page deleted every dead letter (POST answered %d)", w.Code)
}

// The ?token= redirect keeps the request path as it is: "//host" is a
// scheme-relative URL in Location.
func TestDashTokenRedirectStaysOnSite(t *testing.T) {
	_, c := newMini(t)
	_, h := newTestDash(t, c, dashConfig{token: "s3cret"})
	w := get(h, "//evil.example/?token=s3cret")
	loc := w.Header().Get("Location")
	require.False(t, strings.HasPrefix(loc, "//"), "redirects off-site: Location %q", loc)
}

// Every value that comes from Redis is escaped (expected to pass).
func TestDashEscapesRedisValues(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	const x = `"><img src=x onerror=alert(1)>`
	name := "q" + x
	q := redlease.NewQueue(c, name, redlease.WithMaxAttempts(1))
	_, err := q.Enqueue(ctx, []byte(x), redlease.WithID("d"+x), redlease.WithHeaders(map[string]string{x: x}))
	require.NoError(t, err)
	m, err := q.Claim(ctx)
	require.NoError(t, err)
	require.NoError(t, m.Nack(ctx, redlease.WithCause(fmt.Errorf("err%s", x))))
	_, err = q.Enqueue(ctx, []byte(x), redlease.WithID("r"+x), redlease.WithHeaders(map[string]string{x: x}))
	require.NoError(t, err)
	l := redlease.NewLocker(c)
	defer l.Close()
	lk, err := l.TryObtain(ctx, "lock"+x)
	require.NoError(t, err)
	defer lk.Release(ctx)

	_, h := newTestDash(t, c, dashConfig{})
	for _, target := range []string{"/", "/queue?name=" + url.QueryEscape(name), "/locks", "/lock?name=" + url.QueryEscape("lock"+x), "/locks?match=" + url.QueryEscape(x)} {
		w := get(h, target)
		require.Equal(t, http.StatusOK, w.Code, target)
		require.NotContains(t, w.Body.String(), "<img", target)
	}
}

// Redis glob matching by backtracking is exponential: one lock name and a
// ?match= of a few stars pin a CPU. The request's timeout does not stop it.
func TestGlobMatchIsNotExponential(t *testing.T) {
	done := make(chan bool, 1)
	go func() { done <- globMatch("*a*a*a*a*a*a*a*a*a*a*a*a*b", strings.Repeat("a", 60)) }()
	select {
	case got := <-done:
		require.False(t, got)
	case <-time.After(3 * time.Second):
		t.Fatal("globMatch still running after 3s on a 26-byte pattern and a 60-byte name")
	}
}

// replyBytes counts the bytes of script replies a client receives.
type replyBytes struct{ n atomic.Int64 }

func (h *replyBytes) add(cmd redis.Cmder) {
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case string:
			h.n.Add(int64(len(v)))
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	if c, ok := cmd.(*redis.Cmd); ok {
		walk(c.Val())
	}
}
func (h *replyBytes) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *replyBytes) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.add(cmd)
		return err
	}
}
func (h *replyBytes) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, c := range cmds {
			h.add(c)
		}
		return err
	}
}

// The "Older dead letters" link (?after=ID) reads every dead letter, with
// its payload, from the oldest, to find the one named: up to 4 x 10,000 per
// shard for one page of 50. Any unknown ?after= does the most.
func TestDashDeadPagingReadsOnlyAPage(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	const size = 32 << 10
	q := redlease.NewQueue(c, "many", redlease.WithMaxAttempts(1))
	for i := range deadOnPage + 10 {
		_, err := q.Enqueue(ctx, []byte(strings.Repeat("x", size)), redlease.WithID(fmt.Sprintf("d-%03d", i)))
		require.NoError(t, err)
		m, err := q.Claim(ctx)
		require.NoError(t, err)
		require.NoError(t, m.Nack(ctx))
	}
	hook := &replyBytes{}
	c.AddHook(hook)
	_, h := newTestDash(t, c, dashConfig{})
	hook.n.Store(0)
	w := get(h, fmt.Sprintf("/queue?name=many&after=d-%03d", deadOnPage-1))
	require.Equal(t, http.StatusOK, w.Code)
	require.Less(t, hook.n.Load(), int64(20*size), "page 2 (10 dead letters) read %d bytes of dead letters", hook.n.Load())
}

// The queue page and its buttons take the shard count from the sampler's
// scan, which a truncated scan (any keyspace past --scan-limit) can
// under-count: here shards 2 and 3 went unseen. "Delete all" then leaves
// their dead letters, and the page's stats and lists leave them out.
func TestDashShardCountFromTruncatedScan(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	q := redlease.NewQueue(c, "wide", redlease.WithShards(4), redlease.WithMaxAttempts(1))
	for i := range 40 {
		_, err := q.Enqueue(ctx, []byte("x"), redlease.WithID(fmt.Sprintf("id-%02d", i)))
		require.NoError(t, err)
	}
	for range 40 {
		m, err := q.Claim(ctx)
		require.NoError(t, err)
		require.NoError(t, m.Nack(ctx))
	}
	d, h := newTestDash(t, c, dashConfig{})
	d.sampler.mu.Lock()
	d.sampler.snap.Inventory = inventory{Queues: []queueRef{{Name: "wide", Shards: 2}}, Truncated: true} // as a truncated scan may see it
	d.sampler.mu.Unlock()

	form := url.Values{csrfField: {d.csrf}, "name": {"wide"}, "all": {"yes"}, "confirm": {"yes"}}
	w := post(h, "/queue/delete", form)
	require.Equal(t, http.StatusSeeOther, w.Code)
	st, err := q.Stats(ctx)
	require.NoError(t, err)
	require.Zero(t, st.Dead, "Delete all left %d dead letters (%s)", st.Dead, w.Header().Get("Location"))
}

// A plain queue may be called "orders/billing" (only braces are refused),
// the name of topic orders' subscription billing too: /metrics then has
// two series with one label set, and Prometheus refuses the whole scrape.
func TestMetricsNoDuplicateSeries(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	topic := redlease.NewTopic(c, "orders")
	_, err := topic.Subscribe(ctx, "billing")
	require.NoError(t, err)
	_, err = topic.Publish(ctx, []byte("p"))
	require.NoError(t, err)
	_, err = redlease.NewQueue(c, "orders/billing").Enqueue(ctx, []byte("p"))
	require.NoError(t, err)
	_, h := newTestDash(t, c, dashConfig{})
	seen := map[string]bool{}
	for _, line := range strings.Split(get(h, "/metrics").Body.String(), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		series, _, _ := strings.Cut(line, " ")
		require.False(t, seen[series], "duplicate series %s", series)
		seen[series] = true
	}
}
