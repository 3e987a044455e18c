package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

//go:embed templates/*.html static/*
var assets embed.FS

// Dashboard defaults and bounds.
const (
	defaultDashAddr   = "127.0.0.1:7380"
	dashTokenEnv      = "REDLEASE_DASH_TOKEN"
	sessionCookie     = "redlease_dash_session"
	csrfField         = "csrf"
	secretBytes       = 32
	peekOnPage        = 20
	deadOnPage        = 50
	maxLocksOnPage    = 500
	maxFormBytes      = 64 << 10
	requestTimeout    = 10 * time.Second
	shutdownTimeout   = 5 * time.Second
	readHeaderTimeout = 10 * time.Second
	writeTimeout      = 60 * time.Second
	idleTimeout       = 2 * time.Minute
	overviewRefresh   = 10 // seconds between an overview page's reloads
)

// contentSecurityPolicy allows the dashboard's own stylesheet and nothing
// else: no script at all, no framing, forms posting only to itself.
const contentSecurityPolicy = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// dashConfig are dash's flags.
type dashConfig struct {
	addr     string
	readOnly bool
	token    string
	interval time.Duration
	window   time.Duration
}

func (d *dashConfig) flags(fs *flag.FlagSet) {
	fs.StringVar(&d.addr, "addr", defaultDashAddr, "listen `address` (host:port); keep it on loopback unless --token is set")
	fs.BoolVar(&d.readOnly, "read-only", false, "hide the Retry and Delete buttons and refuse every POST (403)")
	fs.StringVar(&d.token, "token", "", "require this `token` on every request: ?token= once (sets a cookie) or Authorization: Bearer (default $"+dashTokenEnv+")")
	fs.DurationVar(&d.interval, "interval", defaultInterval, "how often to sample every queue's stats")
	fs.DurationVar(&d.window, "window", defaultWindow, "how much sample history to keep for throughput")
}

// dash is the dashboard's HTTP server.
type dash struct {
	client   redis.UniversalClient
	prefix   string
	target   string
	readOnly bool
	token    string
	secret   []byte // per process: CSRF token and session cookies
	csrf     string
	sampler  *sampler
	scan     scanner
	pages    map[string]*template.Template
	log      *slog.Logger
}

// newDash builds the dashboard; it does not listen yet.
func newDash(a *app, cfg dashConfig) (*dash, error) {
	secret := make([]byte, secretBytes)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	d := &dash{client: a.client, prefix: a.opts.prefix, target: a.target, readOnly: cfg.readOnly, token: cfg.token,
		secret: secret, scan: a.scanner(), pages: pages, log: slog.New(slog.NewTextHandler(a.errOut, nil))}
	d.csrf = d.mac("csrf")
	d.sampler = newSampler(a.client, a.opts.prefix, a.scanner(), cfg.interval, cfg.window)
	return d, nil
}

// mac is an HMAC of what under the process's secret, in hex.
func (d *dash) mac(what string) string {
	m := hmac.New(sha256.New, d.secret)
	m.Write([]byte(what))
	return hex.EncodeToString(m.Sum(nil))
}

func runDash(ctx context.Context, a *app, _ []string) error {
	cfg := a.f.dash
	if cfg.token == "" && a.getenv != nil {
		cfg.token = a.getenv(dashTokenEnv)
	}
	if cfg.interval <= 0 || cfg.window < cfg.interval {
		return fmt.Errorf("%w: --interval must be positive and at most --window", errUsage)
	}
	d, err := newDash(a, cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.addr, err)
	}
	if host, _, _ := net.SplitHostPort(ln.Addr().String()); cfg.token == "" && !net.ParseIP(host).IsLoopback() {
		fmt.Fprintf(a.errOut, "redlease dash: warning: %s is reachable from other hosts and no --token is set\n", ln.Addr())
	}
	return d.serve(ctx, ln, a)
}

// serve samples once, serves on ln until ctx ends, then shuts down: it
// returns once the server and the sampler have stopped.
func (d *dash) serve(ctx context.Context, ln net.Listener, a *app) error {
	d.sampler.sample(ctx)
	srv := &http.Server{Handler: d.handler(), ReadHeaderTimeout: readHeaderTimeout, ReadTimeout: readHeaderTimeout,
		WriteTimeout: writeTimeout, IdleTimeout: idleTimeout,
		// Not cancelled by the signal: a Retry or Delete in flight finishes
		// on every shard; Shutdown waits for it.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) }}
	fmt.Fprintf(a.out, "redlease dash: serving http://%s/ (redis %s, prefix %q)\n", ln.Addr(), d.target, d.prefix)

	var wg sync.WaitGroup
	sampleCtx, stopSampling := context.WithCancel(ctx)
	wg.Go(func() { d.sampler.run(sampleCtx) })
	served := make(chan error, 1)
	wg.Go(func() { served <- srv.Serve(ln) })

	var err error
	select {
	case <-ctx.Done():
	case err = <-served:
	}
	stopSampling()
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if e := srv.Shutdown(shutCtx); e != nil {
		err = errors.Join(err, e, srv.Close())
	}
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// handler is every route behind the security layers.
func (d *dash) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", d.overview)
	mux.HandleFunc("GET /queue", d.queuePage)
	mux.HandleFunc("POST /queue/retry", d.settle("retry"))
	mux.HandleFunc("POST /queue/delete", d.settle("delete"))
	mux.HandleFunc("GET /locks", d.locksPage)
	mux.HandleFunc("GET /lock", d.lockPage)
	mux.HandleFunc("GET /metrics", d.metrics)
	static, _ := fs.Sub(assets, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	return securityHeaders(d.checkHost(d.authenticate(mux)))
}

// checkHost refuses, when no token is set, a request whose Host is a name
// other than localhost: a page from elsewhere whose name an attacker
// points at 127.0.0.1 (DNS rebinding) would otherwise be same-origin with
// the dashboard. An IP address cannot be rebound. With a token, the token
// (which the rebound page lacks) guards every request.
func (d *dash) checkHost(next http.Handler) http.Handler {
	if d.token != "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.Trim(host, "[]")
		if host != "localhost" && net.ParseIP(host) == nil {
			http.Error(w, "403 forbidden: without --token, open the dashboard by IP address or localhost", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// securityHeaders sets headers every response carries.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin") // not no-referrer: browsers then send "Origin: null" on our own forms
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// authenticate lets a request through when no token is set, or when it
// carries the token: as "Authorization: Bearer <token>", as the session
// cookie that a first visit with ?token= sets, or as that ?token= (a GET
// is then redirected to the same URL without it, so the token leaves the
// address bar and the history).
func (d *dash) authenticate(next http.Handler) http.Handler {
	if d.token == "" {
		return next
	}
	session := d.mac("session:" + d.token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && equal(bearer, d.token) {
			next.ServeHTTP(w, r)
			return
		}
		if c, err := r.Cookie(sessionCookie); err == nil && equal(c.Value, session) {
			next.ServeHTTP(w, r)
			return
		}
		q := r.URL.Query()
		if t := q.Get("token"); t != "" && equal(t, d.token) && r.Method == http.MethodGet {
			http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: session, Path: "/", HttpOnly: true,
				SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
			q.Del("token")
			// One leading slash: "//host/..." would leave the site.
			u := url.URL{Path: "/" + strings.TrimLeft(r.URL.Path, "/"), RawQuery: q.Encode()}
			http.Redirect(w, r, u.String(), http.StatusSeeOther)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="redlease dash"`)
		http.Error(w, "401 unauthorized: open the dashboard with ?token=<token>, or send Authorization: Bearer <token>", http.StatusUnauthorized)
	})
}

// equal compares secrets in constant time.
func equal(a, b string) bool { return hmac.Equal([]byte(a), []byte(b)) }

// allowPost checks a state-changing request: refused (403) on a read-only
// dashboard, from another site (Sec-Fetch-Site, Origin), or without the
// page's CSRF token.
func (d *dash) allowPost(w http.ResponseWriter, r *http.Request) bool {
	refuse := func(why string) bool {
		http.Error(w, "403 forbidden: "+why, http.StatusForbidden)
		return false
	}
	if d.readOnly {
		return refuse("the dashboard is read-only")
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return refuse("cross-site request")
	}
	if origin := r.Header.Get("Origin"); origin != "" {
		u, err := url.Parse(origin)
		if err != nil || u.Host != r.Host {
			return refuse("cross-origin request")
		}
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		return refuse("bad form")
	}
	if !equal(r.PostForm.Get(csrfField), d.csrf) {
		return refuse("missing or wrong CSRF token; reload the page")
	}
	return true
}
