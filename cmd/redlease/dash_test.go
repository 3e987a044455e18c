package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease"
)

// newTestDash returns a dashboard on c, sampled once, and its handler.
func newTestDash(t *testing.T, c redis.UniversalClient, cfg dashConfig) (*dash, http.Handler) {
	t.Helper()
	if cfg.interval == 0 {
		cfg.interval, cfg.window = time.Second, time.Minute
	}
	a := &app{opts: options{prefix: redlease.DefaultPrefix, scanLimit: defaultScanLimit, scanTimeout: defaultScanTimeout},
		client: c, target: "test", out: io.Discard, errOut: io.Discard}
	d, err := newDash(a, cfg)
	require.NoError(t, err)
	d.sampler.sample(context.Background())
	return d, d.handler()
}

// testSite is where the tests' requests say the dashboard is: an IP
// address, which a dashboard without a token requires of Host.
const testSite = "http://127.0.0.1:7380"

// onSite is target on testSite, unless it names a site of its own.
func onSite(target string) string {
	if strings.HasPrefix(target, "/") {
		return testSite + target
	}
	return target
}

// get serves a GET of target with the headers given as pairs.
func get(h http.Handler, target string, headers ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, onSite(target), nil)
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Set(headers[i], headers[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// post serves a form POST of target.
func post(h http.Handler, target string, form url.Values, headers ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, onSite(target), strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Set(headers[i], headers[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestDashPages(t *testing.T) {
	_, c := newMini(t)
	s := seed(t, c, redlease.DefaultPrefix)
	_, h := newTestDash(t, c, dashConfig{})

	w := get(h, "/")
	require.Equal(t, http.StatusOK, w.Code)
	contains(t, w.Body.String(), "emails", "orders", "billing", "/queue?name=orders%2fbilling")
	require.Equal(t, "DENY", w.Header().Get("X-Frame-Options"))
	require.Equal(t, "nosniff", w.Header().Get("X-Content-Type-Options"))
	require.Equal(t, contentSecurityPolicy, w.Header().Get("Content-Security-Policy"))
	require.NotContains(t, w.Body.String(), "<script")

	w = get(h, "/queue?name=emails")
	require.Equal(t, http.StatusOK, w.Code)
	contains(t, w.Body.String(), "mail-ann", "bad-1", "parse bad-1", "Retry", "Delete all", `name="csrf"`)
	w = get(h, "/queue?name=orders/billing")
	require.Equal(t, http.StatusOK, w.Code)
	contains(t, w.Body.String(), "order-7")
	require.Equal(t, http.StatusBadRequest, get(h, "/queue?name=a{b").Code)
	require.Equal(t, http.StatusBadRequest, get(h, "/queue").Code)

	w = get(h, "/locks")
	require.Equal(t, http.StatusOK, w.Code)
	contains(t, w.Body.String(), "invoice:42", "catalog", s.holder.Token())
	w = get(h, "/lock?name=invoice:42")
	require.Equal(t, http.StatusOK, w.Code)
	contains(t, w.Body.String(), s.holder.Token(), "exclusive")
	require.Equal(t, http.StatusOK, get(h, "/static/style.css").Code)
	require.Equal(t, http.StatusNotFound, get(h, "/nothing").Code)
}

func TestDashRetryNeedsCSRF(t *testing.T) {
	_, c := newMini(t)
	seed(t, c, redlease.DefaultPrefix)
	d, h := newTestDash(t, c, dashConfig{})
	q := redlease.NewQueue(c, "emails")
	form := url.Values{"name": {"emails"}, "id": {"bad-1"}}

	require.Equal(t, http.StatusForbidden, post(h, "/queue/retry", form).Code) // no token
	form.Set(csrfField, "wrong")
	require.Equal(t, http.StatusForbidden, post(h, "/queue/retry", form).Code)
	form.Set(csrfField, d.csrf)
	require.Equal(t, http.StatusForbidden, post(h, "/queue/retry", form, "Sec-Fetch-Site", "cross-site").Code)
	require.Equal(t, http.StatusForbidden, post(h, "/queue/retry", form, "Origin", "https://evil.example").Code)
	require.Equal(t, http.StatusMethodNotAllowed, get(h, "/queue/retry?name=emails&id=bad-1").Code)
	st, err := q.Stats(context.Background())
	require.NoError(t, err)
	require.Equal(t, int64(2), st.Dead, "a refused request changed Redis")

	w := post(h, "/queue/retry", form, "Origin", testSite, "Sec-Fetch-Site", "same-origin")
	require.Equal(t, http.StatusSeeOther, w.Code, w.Body.String())
	require.Contains(t, w.Header().Get("Location"), "Retried+1+dead+letter")
	st, err = q.Stats(context.Background())
	require.NoError(t, err)
	require.Equal(t, int64(1), st.Dead)

	// All needs the confirmation box.
	all := url.Values{csrfField: {d.csrf}, "name": {"emails"}, "all": {"yes"}}
	require.Equal(t, http.StatusBadRequest, post(h, "/queue/delete", all).Code)
	all.Set("confirm", "yes")
	require.Equal(t, http.StatusSeeOther, post(h, "/queue/delete", all).Code)
	st, err = q.Stats(context.Background())
	require.NoError(t, err)
	require.Zero(t, st.Dead)
}

func TestDashReadOnly(t *testing.T) {
	_, c := newMini(t)
	seed(t, c, redlease.DefaultPrefix)
	d, h := newTestDash(t, c, dashConfig{readOnly: true})
	w := get(h, "/queue?name=emails")
	require.Equal(t, http.StatusOK, w.Code)
	contains(t, w.Body.String(), "bad-1", "read-only")
	require.NotContains(t, w.Body.String(), "<button")
	form := url.Values{csrfField: {d.csrf}, "name": {"emails"}, "id": {"bad-1"}}
	require.Equal(t, http.StatusForbidden, post(h, "/queue/retry", form).Code)
	require.Equal(t, http.StatusForbidden, post(h, "/queue/delete", form).Code)
	st, err := redlease.NewQueue(c, "emails").Stats(context.Background())
	require.NoError(t, err)
	require.Equal(t, int64(2), st.Dead)
}

func TestDashToken(t *testing.T) {
	_, c := newMini(t)
	seed(t, c, redlease.DefaultPrefix)
	_, h := newTestDash(t, c, dashConfig{token: "s3cret"})

	for _, target := range []string{"/", "/metrics", "/locks", "/static/style.css", "/?token=wrong"} {
		w := get(h, target)
		require.Equal(t, http.StatusUnauthorized, w.Code, target)
		require.Equal(t, "DENY", w.Header().Get("X-Frame-Options"))
	}
	require.Equal(t, http.StatusUnauthorized, get(h, "/", "Authorization", "Bearer nope").Code)
	require.Equal(t, http.StatusOK, get(h, "/metrics", "Authorization", "Bearer s3cret").Code)

	w := get(h, "/queue?name=emails&token=s3cret")
	require.Equal(t, http.StatusSeeOther, w.Code)
	require.Equal(t, "/queue?name=emails", w.Header().Get("Location"))
	cookies := w.Result().Cookies()
	require.Len(t, cookies, 1)
	require.True(t, cookies[0].HttpOnly)
	require.Equal(t, http.SameSiteStrictMode, cookies[0].SameSite)
	require.NotContains(t, cookies[0].Value, "s3cret")
	w = get(h, "/queue?name=emails", "Cookie", cookies[0].Name+"="+cookies[0].Value)
	require.Equal(t, http.StatusOK, w.Code)
	contains(t, w.Body.String(), "mail-ann")
	require.Equal(t, http.StatusUnauthorized, get(h, "/", "Cookie", cookies[0].Name+"=forged").Code)
}

func TestDashMetrics(t *testing.T) {
	_, c := newMini(t)
	seed(t, c, redlease.DefaultPrefix)
	_, h := newTestDash(t, c, dashConfig{})
	w := get(h, "/metrics")
	require.Equal(t, http.StatusOK, w.Code)
	require.Contains(t, w.Header().Get("Content-Type"), "version=0.0.4")
	body := w.Body.String()
	contains(t, body,
		"# TYPE redlease_queue_messages gauge\n",
		`redlease_queue_messages{queue="emails",state="ready"} 3`+"\n",
		`redlease_queue_messages{queue="emails",state="dead"} 2`+"\n",
		`redlease_queue_messages{queue="orders/billing",state="ready"} 1`+"\n",
		`redlease_queue_dead_letters{queue="emails"} 2`+"\n",
		"# TYPE redlease_queue_enqueued_total counter\n",
		`redlease_queue_enqueued_total{queue="emails"} 5`+"\n",
		`redlease_queue_dead_lettered_total{queue="emails"} 2`+"\n",
		`redlease_queue_acked_total{queue="emails"} 0`+"\n",
		"redlease_dash_scan_truncated 0\n")
	// Every sample line is "name{labels} value" or "name value".
	for _, line := range strings.Split(strings.TrimSpace(body), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		require.Len(t, f, 2, line)
	}
}

func TestMetricLabelsEscaped(t *testing.T) {
	var b bytes.Buffer
	writeMetrics(&b, snapshot{Queues: queuesView{Queues: []queueView{{Name: "a\"b\\c\nd"}}}})
	require.Contains(t, b.String(), `queue="a\"b\\c\nd"`)
}

func TestSparklineAndRates(t *testing.T) {
	require.Empty(t, sparkline([]int64{5}, 5))
	require.Equal(t, "0.0,23.0 120.0,1.0", sparkline([]int64{0, 4}, 4))
	sp := sparksOf(throughput{Acked: []int64{0, 2}, Enqueued: []int64{4, 4}})
	require.Equal(t, sparks{Acked: "0.0,23.0 120.0,12.0", Enqueued: "0.0,1.0 120.0,1.0"}, sp)
	s := &sampler{interval: time.Second, keep: 100, history: map[string][]totals{}}
	t0 := time.Unix(1000, 0)
	for i := range 5 {
		s.history["q"] = append(s.history["q"], totals{at: t0.Add(time.Duration(i) * 30 * time.Second), enqueued: int64(i * 60), acked: int64(i * 30)})
	}
	r := s.rates("q")
	require.True(t, r.Known)
	require.InDelta(t, 120, r.EnqueuedPerMin, 0.01) // 60 per 30s
	require.InDelta(t, 60, r.AckedPerMin, 0.01)
	require.Equal(t, []int64{60, 60, 60, 60}, r.Enqueued)
	require.False(t, s.rates("other").Known)
}

func TestDashServesAndStops(t *testing.T) {
	_, c := newMini(t)
	seed(t, c, redlease.DefaultPrefix)
	host, port, _ := strings.Cut(c.Options().Addr, ":")
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"dash", "-h", host, "-p", port, "--addr", "127.0.0.1:0", "--interval", "50ms"}, &out, &errOut, noEnv)
	}()
	var addr string
	require.Eventually(t, func() bool {
		_, rest, ok := strings.Cut(out.String(), "serving http://")
		addr, _, _ = strings.Cut(rest, "/")
		return ok
	}, 10*time.Second, 10*time.Millisecond)
	resp, err := http.Get("http://" + addr + "/")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	contains(t, string(body), "emails")
	cancel()
	select {
	case code := <-done:
		require.Equal(t, exitOK, code, errOut.String())
	case <-time.After(10 * time.Second):
		t.Fatal("dash did not stop")
	}
}

func TestDashPagesDeadLetters(t *testing.T) {
	_, c := newMini(t)
	ctx := context.Background()
	q := redlease.NewQueue(c, "many", redlease.WithMaxAttempts(1))
	for i := range deadOnPage + 10 {
		_, err := q.Enqueue(ctx, []byte("x"), redlease.WithID(fmt.Sprintf("d-%03d", i)))
		require.NoError(t, err)
		m, err := q.Claim(ctx)
		require.NoError(t, err)
		require.NoError(t, m.Nack(ctx))
	}
	_, h := newTestDash(t, c, dashConfig{})
	w := get(h, "/queue?name=many")
	require.Equal(t, http.StatusOK, w.Code)
	body := w.Body.String()
	require.Equal(t, deadOnPage, strings.Count(body, `<tr data-id="d-`))
	next := fmt.Sprintf("/queue?name=many&amp;after=d-%03d", deadOnPage-1)
	contains(t, body, next)
	w = get(h, strings.ReplaceAll(next, "&amp;", "&"))
	require.Equal(t, http.StatusOK, w.Code)
	require.Equal(t, 10, strings.Count(w.Body.String(), `<tr data-id="d-`))
	contains(t, w.Body.String(), "d-059")
	require.Equal(t, http.StatusBadRequest, get(h, "/queue?name=many&after=nobody").Code)
}
