package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/redis/go-redis/v9"

	"github.com/redlease/redlease"
	"github.com/redlease/redlease/internal/redistest"
)

// Bounds of the test.
const (
	testTimeout    = 3 * time.Minute
	startTimeout   = 30 * time.Second
	stopTimeout    = 10 * time.Second
	viewportWidth  = 1280
	viewportHeight = 720
	pngQuality     = 100 // chromedp: 100 means PNG
	dashToken      = "e2e-token-7f3a"
	chromiumPath   = "/usr/bin/chromium"
	screenshotEnv  = "REDLEASE_SCREENSHOT_DIR"
	stepTimeout    = 15 * time.Second
	sampleInterval = time.Second
	// samplesBeforeOverview is how many samples the dashboard takes
	// before the overview is shown: a sparkline needs three.
	samplesBeforeOverview = 3
	pollInterval          = 100 * time.Millisecond
)

// chromium finds the browser: /usr/bin/chromium, or chromium on PATH.
func chromium() (string, error) {
	if _, err := os.Stat(chromiumPath); err == nil {
		return chromiumPath, nil
	}
	return redistest.LookPath("chromium")
}

func TestDashboardInBrowser(t *testing.T) {
	browser, err := chromium()
	redistest.Need(t, "browser", err)
	srv := redistest.Own(t)
	c := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	s := seed(t, ctx, c)
	traffic(t, ctx, c)
	base := startDash(t, srv.Port)
	shots := os.Getenv(screenshotEnv)
	if shots == "" {
		shots = t.TempDir()
	}
	require(t, os.MkdirAll(shots, 0o755))

	// Without the token, nothing is served.
	resp, err := http.Get(base + "/")
	require(t, err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET / without the token: %d, want 401", resp.StatusCode)
	}

	allocOpts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(browser),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(viewportWidth, viewportHeight),
	}
	allocCtx, stopAlloc := chromedp.NewExecAllocator(ctx, allocOpts...)
	defer stopAlloc()
	browserCtx, stopBrowser := chromedp.NewContext(allocCtx)
	defer stopBrowser()

	// A few samples first, so that the overview draws throughput.
	time.Sleep(samplesBeforeOverview * sampleInterval)

	// The first visit carries the token and gets a session cookie.
	do(t, browserCtx,
		chromedp.EmulateViewport(viewportWidth, viewportHeight),
		chromedp.Navigate(base+"/?token="+dashToken))
	waitFor(t, browserCtx, "#queues")
	has(t, "overview", text(t, browserCtx, "main"), "emails", "orders", "orders/billing", "thumbnails", "Sampled every")
	sparks, err := chromedp.Run(browserCtx, chromedp.Evaluate[int](`document.querySelectorAll("svg.spark polyline").length`))
	require(t, err)
	if sparks == 0 {
		t.Fatal("the overview draws no sparkline")
	}
	save(t, shots, "dash-overview.png", screenshot(t, browserCtx))
	location, err := chromedp.Run(browserCtx, chromedp.Location())
	require(t, err)
	if strings.Contains(location, "token=") {
		t.Fatalf("the token stayed in the address bar: %s", location)
	}

	// The queue page: ready messages and dead letters with buttons.
	do(t, browserCtx, chromedp.Navigate(base+"/queue?name=emails"))
	waitFor(t, browserCtx, "#dead")
	has(t, "queue page", text(t, browserCtx, "main"), "mail-ann", "mail-cyd", "to=bob", "bad-1", "bad-2", "parse bad-1", "Retry all")
	save(t, shots, "dash-queue.png", screenshot(t, browserCtx))

	// Retry one dead letter: the page and Redis both change.
	do(t, browserCtx, chromedp.Click(chromedp.CSS(`tr[data-id="bad-1"] button.retry`)))
	waitFor(t, browserCtx, "#flash")
	has(t, "flash", text(t, browserCtx, "#flash"), "Retried 1 dead letter")
	gone, err := chromedp.Run(browserCtx, chromedp.Evaluate[bool](`document.querySelector('tr[data-id="bad-1"]') === null`))
	require(t, err)
	if dead := strings.TrimSpace(text(t, browserCtx, "#stat-dead")); dead != "1" || !gone {
		t.Fatalf("after Retry: dead count %q, bad-1 row gone %v", dead, gone)
	}
	q := redlease.NewQueue(c, "emails")
	letters, err := q.DeadLetters(ctx, 10)
	require(t, err)
	if len(letters) != 1 || letters[0].ID != "bad-2" {
		t.Fatalf("dead letters in Redis after Retry: %+v", letters)
	}
	ready, err := q.Peek(ctx, 10)
	require(t, err)
	if len(ready) != 4 || ready[3].ID != "bad-1" {
		t.Fatalf("ready in Redis after Retry: %+v", ready)
	}

	// Locks: the list, an exclusive lock with its waiter, a shared one.
	do(t, browserCtx, chromedp.Navigate(base+"/locks"))
	waitFor(t, browserCtx, "#locks")
	has(t, "locks page", text(t, browserCtx, "#locks"), "invoice:42", "catalog", "held", "shared", s.holder.Token())
	do(t, browserCtx, chromedp.Navigate(base+"/lock?name=invoice:42"))
	waitFor(t, browserCtx, "#waiters")
	has(t, "lock page", text(t, browserCtx, "main"), s.holder.Token(), "exclusive", "Waiters")
	do(t, browserCtx, chromedp.Navigate(base+"/lock?name=catalog"))
	waitFor(t, browserCtx, "#shared")
	has(t, "shared lock page", text(t, browserCtx, "main"), "Shared holders", s.shares[0], s.shares[1])
}

// waitFor waits until an element matching a CSS selector is on the page,
// and fails the test with the page's text if none is within stepTimeout.
func waitFor(t *testing.T, ctx context.Context, sel string) {
	t.Helper()
	deadline := time.Now().Add(stepTimeout)
	for time.Now().Before(deadline) {
		found, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.querySelector(`+strconv.Quote(sel)+`) !== null`))
		if err == nil && found {
			return
		}
		time.Sleep(pollInterval)
	}
	loc, _ := chromedp.Run(ctx, chromedp.Location())
	body, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
	t.Fatalf("no %s within %v at %s; the page says:\n%s", sel, stepTimeout, loc, body)
}

// do runs browser steps, failing the test on an error.
func do(t *testing.T, ctx context.Context, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	require(t, chromedp.Do(ctx, steps...))
}

// text is the visible text of the first element matching a CSS selector.
func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	require(t, err)
	return s
}

// screenshot is a PNG of the whole page.
func screenshot(t *testing.T, ctx context.Context) []byte {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(pngQuality))
	require(t, err)
	return png
}

// Background traffic: a message enqueued and one acked every trafficTick.
const trafficTick = 100 * time.Millisecond

// traffic enqueues and acks messages on queue "thumbnails" until t ends,
// so that the dashboard's samples see throughput.
func traffic(t *testing.T, ctx context.Context, c *redis.Client) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	q := redlease.NewQueue(c, "thumbnails")
	go func() {
		defer close(done)
		tick := time.NewTicker(trafficTick)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if _, err := q.Enqueue(ctx, []byte(fmt.Sprintf("img-%d.png", i))); err != nil {
				continue
			}
			if i%3 == 0 {
				continue // a backlog grows
			}
			if m, err := q.Claim(ctx); err == nil {
				_ = m.Ack(ctx)
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// seeded is what seed put in Redis.
type seeded struct {
	holder *redlease.Lock
	shares []string
}

// seed fills Redis through the library: queue "emails" with 3 ready
// messages and 2 dead letters, topic "orders" with subscription
// "billing", lock "invoice:42" held with a waiter, lock "catalog" held
// by two shared leases. Everything is released when t ends.
func seed(t *testing.T, ctx context.Context, c *redis.Client) seeded {
	q := redlease.NewQueue(c, "emails")
	for _, id := range []string{"bad-1", "bad-2"} {
		_, err := q.Enqueue(ctx, []byte("corrupt "+id), redlease.WithID(id))
		require(t, err)
		m, err := q.Claim(ctx)
		require(t, err)
		require(t, m.Nack(ctx, redlease.WithCause(fmt.Errorf("parse %s: %w", id, redlease.ErrSkipRetry))))
	}
	for _, to := range []string{"ann", "bob", "cyd"} {
		_, err := q.Enqueue(ctx, []byte("mail to "+to), redlease.WithID("mail-"+to), redlease.WithHeaders(map[string]string{"to": to}))
		require(t, err)
	}
	topic := redlease.NewTopic(c, "orders")
	_, err := topic.Subscribe(ctx, "billing")
	require(t, err)
	_, err = topic.Publish(ctx, []byte(`{"order":7}`))
	require(t, err)

	l := redlease.NewLocker(c)
	l2 := redlease.NewLocker(c)
	holder, err := l.TryObtain(ctx, "invoice:42", redlease.WithTTL(time.Minute))
	require(t, err)
	waitCtx, stopWait := context.WithCancel(ctx)
	waited := make(chan struct{})
	go func() {
		defer close(waited)
		if lk, err := l2.Obtain(waitCtx, "invoice:42"); err == nil {
			_ = lk.Release(context.Background())
		}
	}()
	r1, err := l.TryObtainShared(ctx, "catalog", redlease.WithTTL(time.Minute))
	require(t, err)
	r2, err := l2.TryObtainShared(ctx, "catalog", redlease.WithTTL(time.Minute))
	require(t, err)
	require(t, redistest.Poll(10*time.Second, func() error {
		info, err := l.Inspect(ctx, "invoice:42")
		if err == nil && info.WaiterCount != 1 {
			err = errors.New("the waiter has not queued yet")
		}
		return err
	}))
	t.Cleanup(func() {
		stopWait()
		<-waited
		bg := context.Background()
		_ = holder.Release(bg)
		_ = r1.Release(bg)
		_ = r2.Release(bg)
		l.Close()
		l2.Close()
	})
	return seeded{holder: holder, shares: []string{r1.Token(), r2.Token()}}
}

// startDash builds ../cmd/redlease and runs "redlease dash" against the
// server on port, with the token, on a free loopback port; it returns the
// dashboard's base URL and stops it with SIGTERM when t ends, checking
// that it exits cleanly.
func startDash(t *testing.T, redisPort int) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "redlease")
	build := exec.Command("go", "build", "-o", bin, "./cmd/redlease")
	build.Dir = ".." // the library's module
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ../cmd/redlease: %v\n%s", err, out)
	}
	port, err := redistest.FreePort()
	require(t, err)
	cmd := exec.Command(bin, "dash", "-p", strconv.Itoa(redisPort), "--addr", "127.0.0.1:"+strconv.Itoa(port),
		"--token", dashToken, "--interval", sampleInterval.String())
	stdout, err := cmd.StdoutPipe()
	require(t, err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require(t, cmd.Start())
	exited := make(chan error, 1)
	serving := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if _, rest, ok := strings.Cut(sc.Text(), "serving "); ok {
				url, _, _ := strings.Cut(rest, " ")
				serving <- strings.TrimSuffix(url, "/")
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("redlease dash exited with %v after SIGTERM; stderr:\n%s", err, stderr.String())
			}
		case <-time.After(stopTimeout):
			_ = cmd.Process.Kill()
			t.Errorf("redlease dash did not stop within %v of SIGTERM", stopTimeout)
		}
	})
	select {
	case url := <-serving:
		return url
	case err := <-exited:
		t.Fatalf("redlease dash exited early: %v\n%s", err, stderr.String())
	case <-time.After(startTimeout):
		t.Fatalf("redlease dash did not start within %v\n%s", startTimeout, stderr.String())
	}
	return ""
}

// save writes a screenshot.
func save(t *testing.T, dir, name string, png []byte) {
	t.Helper()
	path := filepath.Join(dir, name)
	require(t, os.WriteFile(path, png, 0o644))
	t.Logf("screenshot %s (%d KB)", path, len(png)>>10)
}

func require(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func has(t *testing.T, what, text string, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(text, p) {
			t.Fatalf("%s lacks %q:\n%s", what, p, text)
		}
	}
}
