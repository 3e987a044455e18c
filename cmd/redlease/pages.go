package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redlease/redlease"
)

// Sparkline size, in SVG user units.
const (
	sparkWidth  = 120
	sparkHeight = 24
)

// pageNames are the templates under templates/, each with layout.html.
var pageNames = []string{"overview", "queue", "locks", "lock"}

var pageFuncs = template.FuncMap{
	"payload": func(s string) string { return shownPayload([]byte(s)) },
	"headers": shownHeaders,
	"ttl":     ttlText,
	"rate":    func(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) },
	"utc":     func(t time.Time) string { return t.UTC().Format(time.DateTime) },
	"ms":      func(ms int64) string { return (time.Duration(ms) * time.Millisecond).String() },
	"oneLine": oneLine,
	"sparks":  sparksOf,
	"inc":     func(i int) int { return i + 1 },
	"dec":     func(i int) int { return i - 1 },
	"deref":   func(s *string) string { return *s },
}

func parsePages() (map[string]*template.Template, error) {
	pages := map[string]*template.Template{}
	for _, name := range pageNames {
		t, err := template.New(name).Funcs(pageFuncs).ParseFS(assets, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("template %s: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}

// page is what every template gets.
type page struct {
	Title    string
	Target   string
	Prefix   string
	ReadOnly bool
	CSRF     string
	Refresh  int // seconds; 0: none
	Flash    string
	Data     any
}

// render writes a page; a template error is a 500.
func (d *dash) render(w http.ResponseWriter, r *http.Request, name string, p page) {
	p.Target, p.Prefix, p.ReadOnly, p.CSRF = d.target, d.prefix, d.readOnly, d.csrf
	p.Flash = r.URL.Query().Get("done")
	var buf bytes.Buffer
	if err := d.pages[name].ExecuteTemplate(&buf, "layout", p); err != nil {
		d.log.Error("render", "page", name, "err", err)
		http.Error(w, "500 internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(buf.Bytes())
}

// fail reports a Redis or input error on a page.
func (d *dash) fail(w http.ResponseWriter, err error) {
	code := http.StatusBadGateway
	if isBadInput(err) {
		code = http.StatusBadRequest
	}
	http.Error(w, fmt.Sprintf("%d: %v", code, err), code)
}

// row is a queue on the overview, with its throughput.
type row struct {
	queueView
	Rates throughput
}

type overviewData struct {
	At        time.Time
	Err       error
	Interval  time.Duration
	Truncated bool
	Queues    []row
	Topics    []topicRows
}

type topicRows struct {
	Name string
	Subs []row
}

func (d *dash) overview(w http.ResponseWriter, r *http.Request) {
	snap := d.sampler.latest()
	data := overviewData{At: snap.At, Err: snap.Err, Interval: d.sampler.interval, Truncated: snap.Queues.Truncated}
	for _, q := range snap.Queues.Queues {
		data.Queues = append(data.Queues, row{q, d.sampler.rates(q.Name)})
	}
	for _, t := range snap.Queues.Topics {
		tr := topicRows{Name: t.Name}
		for _, q := range t.Subscriptions {
			tr.Subs = append(tr.Subs, row{q, d.sampler.rates(q.Name)})
		}
		data.Topics = append(data.Topics, tr)
	}
	d.render(w, r, "overview", page{Title: "Queues", Refresh: overviewRefresh, Data: data})
}

type queueData struct {
	queueView
	Ready     []messageView
	Dead      []deadView
	After     string
	More      bool // a next page of dead letters may exist
	DeadShown int
}

func (d *dash) queuePage(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	name, after := r.URL.Query().Get("name"), r.URL.Query().Get("after")
	if name == "" {
		http.Error(w, "400: missing ?name=", http.StatusBadRequest)
		return
	}
	t, err := resolveQueue(ctx, d.client, d.prefix, name, 0)
	if err != nil {
		d.fail(w, err)
		return
	}
	st, err := t.queue.Stats(ctx)
	if err != nil {
		d.fail(w, err)
		return
	}
	ready, err := t.queue.Peek(ctx, peekOnPage)
	if err != nil {
		d.fail(w, err)
		return
	}
	dead, err := deadAfter(ctx, d.client, d.prefix, t, after, deadOnPage)
	if err != nil {
		d.fail(w, err)
		return
	}
	data := queueData{queueView: queueView{Name: t.queue.Name(), Topic: t.topic, Subscription: t.sub, Shards: t.shards, Stats: viewStats(st)},
		After: after, More: len(dead) == deadOnPage, DeadShown: len(dead)}
	for _, m := range ready {
		data.Ready = append(data.Ready, viewMessage(m))
	}
	for _, dl := range dead {
		data.Dead = append(data.Dead, viewDead(dl))
	}
	d.render(w, r, "queue", page{Title: data.Name, Data: data})
}

// settle handles the Retry and Delete buttons: the ids given, or every
// dead letter with all=yes and confirm=yes.
func (d *dash) settle(action string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !d.allowPost(w, r) {
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		name, ids := r.PostForm.Get("name"), r.PostForm["id"]
		all := r.PostForm.Get("all") == "yes"
		switch {
		case name == "":
			http.Error(w, "400: missing queue name", http.StatusBadRequest)
			return
		case all && r.PostForm.Get("confirm") != "yes":
			http.Error(w, "400: tick the box to confirm", http.StatusBadRequest)
			return
		case all == (len(ids) > 0):
			http.Error(w, "400: give dead letter ids or all, not both or neither", http.StatusBadRequest)
			return
		}
		t, err := resolveQueue(ctx, d.client, d.prefix, name, 0)
		if err != nil {
			d.fail(w, err)
			return
		}
		var n int
		if action == "retry" {
			n, err = t.queue.RetryDead(ctx, ids...)
		} else {
			n, err = t.queue.DeleteDead(ctx, ids...)
		}
		if err != nil {
			d.fail(w, err)
			return
		}
		d.log.Info("dead letters settled", "action", action, "queue", name, "ids", len(ids), "all", all, "count", n)
		done := fmt.Sprintf("%s %d dead letter(s)", map[string]string{"retry": "Retried", "delete": "Deleted"}[action], n)
		q := url.Values{"name": {name}, "done": {done}}
		http.Redirect(w, r, "/queue?"+q.Encode(), http.StatusSeeOther)
	}
}

type locksData struct {
	Match     string
	Locks     []lockView
	Truncated bool
	Capped    bool
}

func (d *dash) locksPage(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	match := r.URL.Query().Get("match")
	if match == "" {
		match = "*"
	}
	inv, err := discover(ctx, d.client, d.prefix, d.scan)
	if err != nil {
		d.fail(w, err)
		return
	}
	var names []string
	for _, n := range inv.Locks {
		if globMatch(match, n) {
			names = append(names, n)
		}
	}
	data := locksData{Match: match, Truncated: inv.Truncated, Capped: len(names) > maxLocksOnPage}
	locks, err := inspectLocks(ctx, d.client, d.prefix, names[:min(len(names), maxLocksOnPage)])
	if err != nil {
		d.fail(w, err)
		return
	}
	data.Locks = locks
	d.render(w, r, "locks", page{Title: "Locks", Refresh: overviewRefresh, Data: data})
}

func (d *dash) lockPage(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	name := r.URL.Query().Get("name")
	if name == "" {
		http.Error(w, "400: missing ?name=", http.StatusBadRequest)
		return
	}
	locks, err := inspectLocks(ctx, d.client, d.prefix, []string{name})
	if err != nil {
		d.fail(w, err)
		return
	}
	d.render(w, r, "lock", page{Title: "Lock " + name, Refresh: overviewRefresh, Data: locks[0]})
}

// sparkline is the points of an SVG polyline drawing values, scaled to
// sparkWidth by sparkHeight with top as the highest value; "" with fewer
// than two values.
func sparkline(values []int64, top int64) string {
	if len(values) < 2 {
		return ""
	}
	top = max(top, 1)
	var b strings.Builder
	step := float64(sparkWidth) / float64(len(values)-1)
	for i, v := range values {
		y := sparkHeight - float64(v)*float64(sparkHeight-2)/float64(top) - 1
		fmt.Fprintf(&b, "%.1f,%.1f ", float64(i)*step, y)
	}
	return strings.TrimSpace(b.String())
}

// sparks are a queue's two sparklines on one scale.
type sparks struct{ Acked, Enqueued string }

// sparksOf draws r's acked and enqueued counts per sample on one scale.
func sparksOf(r throughput) sparks {
	var top int64
	for _, v := range append(slices.Clip(r.Acked), r.Enqueued...) {
		top = max(top, v)
	}
	return sparks{Acked: sparkline(r.Acked, top), Enqueued: sparkline(r.Enqueued, top)}
}

// isBadInput says whether err is the user's: a bad name or id.
func isBadInput(err error) bool {
	return errors.Is(err, redlease.ErrInvalidArgument) || errors.Is(err, errNoSuchDeadLetter)
}
