package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/redis/go-redis/v9"

	"github.com/redlease/redlease"
)

// maxShownPayload bounds the bytes of a payload that text output shows.
const maxShownPayload = 60

func (a *app) scanner() scanner {
	return scanner{limit: int64(a.opts.scanLimit), timeout: a.opts.scanTimeout}
}

// writeJSON writes v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table returns a writer for aligned columns; flush it.
func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

// truncatedNote is printed under a listing the scan did not finish.
const truncatedNote = "(truncated: the scan stopped at --scan-limit or --scan-timeout; raise them to see more)"

// inspectLocks inspects the locks named, in order.
func inspectLocks(ctx context.Context, c redis.UniversalClient, prefix string, names []string) ([]lockView, error) {
	l := redlease.NewLocker(c, redlease.WithPrefix(prefix))
	defer l.Close()
	out := make([]lockView, 0, len(names))
	for _, n := range names {
		info, err := l.Inspect(ctx, n)
		if err != nil {
			return nil, err
		}
		out = append(out, viewLock(info))
	}
	return out, nil
}

func runLocks(ctx context.Context, a *app, _ []string) error {
	inv, err := discover(ctx, a.client, a.opts.prefix, a.scanner())
	if err != nil {
		return err
	}
	var names []string
	for _, n := range inv.Locks {
		if globMatch(a.f.match, n) {
			names = append(names, n)
		}
	}
	locks, err := inspectLocks(ctx, a.client, a.opts.prefix, names)
	if err != nil {
		return err
	}
	if a.opts.json {
		return writeJSON(a.out, locksView{Locks: locks, Truncated: inv.Truncated})
	}
	w := table(a.out)
	fmt.Fprintln(w, "LOCK\tSTATE\tHOLDER\tTTL\tFENCE\tWAITERS\tSHARED")
	for _, l := range locks {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%d\n", safe(l.Name), l.State, orDash(safe(l.Holder)), ttlText(l.TTLMs, l.State), l.Fence, l.WaiterCount, l.SharedCount)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if len(locks) == 0 {
		fmt.Fprintf(a.out, "no locks under prefix %q on %s\n", a.opts.prefix, a.target)
	}
	if inv.Truncated {
		fmt.Fprintln(a.out, truncatedNote)
	}
	return nil
}

func runLock(ctx context.Context, a *app, args []string) error {
	locks, err := inspectLocks(ctx, a.client, a.opts.prefix, args[:1])
	if err != nil {
		return err
	}
	l := locks[0]
	if a.opts.json {
		return writeJSON(a.out, l)
	}
	w := table(a.out)
	fmt.Fprintf(w, "lock\t%s\n", safe(l.Name))
	fmt.Fprintf(w, "state\t%s\n", l.State)
	fmt.Fprintf(w, "holder\t%s\n", orDash(safe(l.Holder)))
	fmt.Fprintf(w, "ttl\t%s\n", ttlText(l.TTLMs, l.State))
	fmt.Fprintf(w, "fence counter\t%d\t(last fence or ticket handed out in the lock's slot)\n", l.Fence)
	fmt.Fprintf(w, "waiters\t%d\n", l.WaiterCount)
	for i, wt := range l.Waiters {
		kind := "exclusive"
		if wt.Shared {
			kind = "shared"
			if wt.Limit > 0 {
				kind += " limit " + strconv.Itoa(wt.Limit)
			}
		}
		fmt.Fprintf(w, "  %d.\tticket %d\t%s\t%s\n", i+1, wt.Ticket, safe(wt.Token), kind)
	}
	fmt.Fprintf(w, "shared holders\t%d\n", l.SharedCount)
	for _, s := range l.SharedHolders {
		fmt.Fprintf(w, "  -\t%s\tttl %s\n", safe(s.Token), time.Duration(s.TTLMs)*time.Millisecond)
	}
	return w.Flush()
}

// ttlText shows a TTL in ms for a lock in state.
func ttlText(ms int64, state string) string {
	switch {
	case state == stateFree:
		return "-"
	case ms < 0:
		return "none"
	}
	return (time.Duration(ms) * time.Millisecond).String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// loadQueues reads the stats of every queue and subscription in inv. A
// topic's subscriptions are the ones it lists (its subs set).
func loadQueues(ctx context.Context, c redis.UniversalClient, prefix string, inv inventory) (queuesView, error) {
	out := queuesView{Queues: []queueView{}, Topics: []topicView{}, Truncated: inv.Truncated}
	for _, ref := range inv.Queues {
		q := redlease.NewQueue(c, ref.Name, redlease.WithPrefix(prefix), redlease.WithShards(ref.Shards))
		st, err := q.Stats(ctx)
		if err != nil {
			return out, err
		}
		out.Queues = append(out.Queues, queueView{Name: ref.Name, Shards: ref.Shards, Stats: viewStats(st)})
	}
	for _, ref := range inv.Topics {
		t := redlease.NewTopic(c, ref.Name, redlease.WithPrefix(prefix))
		subs, err := t.Subscriptions(ctx)
		if err != nil {
			return out, err
		}
		tv := topicView{Name: ref.Name, Subscriptions: []queueView{}}
		for _, s := range subs {
			q, err := t.Subscription(s)
			if err != nil {
				return out, err
			}
			st, err := q.Stats(ctx)
			if err != nil {
				return out, err
			}
			tv.Subscriptions = append(tv.Subscriptions, queueView{Name: q.Name(), Topic: ref.Name, Subscription: s, Shards: 1, Stats: viewStats(st)})
		}
		out.Topics = append(out.Topics, tv)
	}
	return out, nil
}

func runQueues(ctx context.Context, a *app, _ []string) error {
	inv, err := discover(ctx, a.client, a.opts.prefix, a.scanner())
	if err != nil {
		return err
	}
	v, err := loadQueues(ctx, a.client, a.opts.prefix, inv)
	if err != nil {
		return err
	}
	if a.opts.json {
		return writeJSON(a.out, v)
	}
	w := table(a.out)
	fmt.Fprintln(w, "QUEUE\tSHARDS\tREADY\tDELAYED\tIN FLIGHT\tDEAD\tENQUEUED\tACKED\tNACKED\tDEAD-LETTERED")
	row := func(q queueView) {
		s := q.Stats
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", safe(q.Name), q.Shards, s.Ready, s.Delayed, s.InFlight, s.Dead, s.Enqueued, s.Acked, s.Nacked, s.DeadLettered)
	}
	for _, q := range v.Queues {
		row(q)
	}
	for _, t := range v.Topics {
		for _, q := range t.Subscriptions {
			row(q)
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if len(v.Topics) > 0 {
		fmt.Fprintln(a.out)
		w = table(a.out)
		fmt.Fprintln(w, "TOPIC\tSUBSCRIPTIONS")
		for _, t := range v.Topics {
			var names []string
			for _, q := range t.Subscriptions {
				names = append(names, q.Subscription)
			}
			fmt.Fprintf(w, "%s\t%s\n", safe(t.Name), orDash(safe(strings.Join(names, ", "))))
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	if len(v.Queues) == 0 && len(v.Topics) == 0 {
		fmt.Fprintf(a.out, "no queues or topics under prefix %q on %s\n", a.opts.prefix, a.target)
	}
	if v.Truncated {
		fmt.Fprintln(a.out, truncatedNote)
	}
	return nil
}

func (a *app) resolve(ctx context.Context, name string) (target, error) {
	return resolveQueue(ctx, a.client, a.opts.prefix, name, a.f.shards)
}

func runQueue(ctx context.Context, a *app, args []string) error {
	t, err := a.resolve(ctx, args[0])
	if err != nil {
		return err
	}
	st, err := t.queue.Stats(ctx)
	if err != nil {
		return err
	}
	v := queueView{Name: t.queue.Name(), Topic: t.topic, Subscription: t.sub, Shards: t.shards, Stats: viewStats(st)}
	if a.opts.json {
		return writeJSON(a.out, v)
	}
	w := table(a.out)
	fmt.Fprintf(w, "queue\t%s\n", safe(v.Name))
	if v.Topic != "" {
		fmt.Fprintf(w, "topic\t%s (subscription %s)\n", safe(v.Topic), safe(v.Subscription))
	}
	s := v.Stats
	fmt.Fprintf(w, "shards\t%d\nready\t%d\ndelayed\t%d\nin flight\t%d\ndead\t%d\n", v.Shards, s.Ready, s.Delayed, s.InFlight, s.Dead)
	fmt.Fprintf(w, "enqueued (total)\t%d\nacked (total)\t%d\nnacked (total)\t%d\ndead-lettered (total)\t%d\n", s.Enqueued, s.Acked, s.Nacked, s.DeadLettered)
	if err := w.Flush(); err != nil {
		return err
	}
	if s == (statsView{}) {
		fmt.Fprintf(a.out, "(no such queue under prefix %q on %s, or it never had a message)\n", a.opts.prefix, a.target)
	}
	return nil
}

// shownPayload is a payload for a text column: quoted, cut short.
func shownPayload(p []byte) string {
	if len(p) > maxShownPayload {
		return strconv.Quote(string(p[:maxShownPayload])) + "…"
	}
	return strconv.Quote(string(p))
}

// shownHeaders is headers for a text column.
func shownHeaders(h map[string]string) string {
	if len(h) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(h))
	for k, v := range h {
		parts = append(parts, k+"="+v)
	}
	slices.Sort(parts)
	return safe(strings.Join(parts, ","))
}

// safe is s for a terminal: as it is when every rune is printable, else
// quoted with Go's escapes, so that a value from Redis cannot move the
// cursor, retitle the window, or break a table's columns.
func safe(s string) string {
	for _, r := range s {
		if r == '\t' || !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// shellWord is s as one word bash reads back as s: as it is when it has
// only safe characters, in single quotes when it is printable, else in
// $'...' with \xHH for every other byte (no raw control byte reaches the
// terminal).
func shellWord(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r < unicode.MaxASCII && (unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune("-_.:/@%+=,", r)))
	}) < 0 {
		return s
	}
	if safe(s) == s {
		return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
	}
	var b strings.Builder
	b.WriteString("$'")
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' || c == '\'':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c >= ' ' && c < unicode.MaxASCII:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "\\x%02x", c)
		}
	}
	b.WriteByte('\'')
	return b.String()
}

func runPeek(ctx context.Context, a *app, args []string) error {
	t, err := a.resolve(ctx, args[0])
	if err != nil {
		return err
	}
	msgs, err := t.queue.Peek(ctx, a.f.n)
	if err != nil {
		return err
	}
	views := make([]messageView, 0, len(msgs))
	for _, m := range msgs {
		views = append(views, viewMessage(m))
	}
	if a.opts.json {
		return writeJSON(a.out, views)
	}
	w := table(a.out)
	fmt.Fprintln(w, "ID\tATTEMPTS\tBYTES\tHEADERS\tPAYLOAD")
	for _, m := range msgs {
		fmt.Fprintf(w, "%s\t%d\t%d\t%s\t%s\n", safe(m.ID), m.Attempts, len(m.Payload), shownHeaders(m.Headers), shownPayload(m.Payload))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if len(msgs) == 0 {
		fmt.Fprintf(a.out, "no ready messages in %q\n", t.queue.Name())
	}
	return nil
}

// errNoSuchDeadLetter is --after naming no dead letter.
var errNoSuchDeadLetter = errors.New("no such dead letter")

// deadAfter is the page of n dead letters after the one with id after
// (the first page when after is ""). It reads when that one died from the
// shards' deadletters sets, one ZSCORE each in one round trip, rather
// than paging the dead letters up to it.
func deadAfter(ctx context.Context, c redis.UniversalClient, prefix string, t target, after string, n int) ([]redlease.DeadLetter, error) {
	if after == "" {
		return t.queue.DeadLetters(ctx, n)
	}
	keys := deadLetterKeys(prefix, t)
	cmds := make([]*redis.FloatCmd, len(keys))
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.ZScore(ctx, k, after)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("find dead letter %q: %w", after, err)
	}
	for _, cmd := range cmds {
		if ms, err := cmd.Result(); err == nil {
			return t.queue.DeadLettersAfter(ctx, redlease.DeadLetter{ID: after, DiedAt: time.UnixMilli(int64(ms))}, n)
		}
	}
	return nil, fmt.Errorf("%w: %q in %q (retried or deleted since?)", errNoSuchDeadLetter, after, t.queue.Name())
}

// deadLetterKeys are the deadletters sets of t's shards, as shard.go in
// the library names them.
func deadLetterKeys(prefix string, t target) []string {
	if t.topic != "" {
		return []string{prefix + ":topic:{" + t.topic + "}:sub:" + t.sub + ":deadletters"}
	}
	if t.shards <= 1 {
		return []string{prefix + ":queue:{" + t.queue.Name() + "}:deadletters"}
	}
	keys := make([]string, t.shards)
	for i := range keys {
		keys[i] = prefix + ":queue:{" + t.queue.Name() + ":" + strconv.Itoa(i) + "}:shard:deadletters"
	}
	return keys
}

func runDead(ctx context.Context, a *app, args []string) error {
	t, err := a.resolve(ctx, args[0])
	if err != nil {
		return err
	}
	dead, err := deadAfter(ctx, a.client, a.opts.prefix, t, a.f.after, a.f.n)
	if err != nil {
		return err
	}
	views := make([]deadView, 0, len(dead))
	for _, d := range dead {
		views = append(views, viewDead(d))
	}
	if a.opts.json {
		return writeJSON(a.out, views)
	}
	w := table(a.out)
	fmt.Fprintln(w, "ID\tDIED AT (UTC)\tATTEMPTS\tERROR\tPAYLOAD")
	for _, d := range dead {
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\n", safe(d.ID), d.DiedAt.UTC().Format(time.DateTime), d.Attempts, orDash(safe(oneLine(d.Err))), shownPayload(d.Payload))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	switch {
	case len(dead) == 0:
		fmt.Fprintf(a.out, "no dead letters in %q\n", t.queue.Name())
	case len(dead) == a.f.n:
		fmt.Fprintf(a.out, "more may follow: --after %s\n", shellWord(dead[len(dead)-1].ID))
	}
	return nil
}

// oneLine keeps an error's text on one line of a table.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// settleResult is retry's and delete's JSON output.
type settleResult struct {
	Queue   string `json:"queue"`
	Action  string `json:"action"`
	Count   int    `json:"count"`
	Request int    `json:"requested"` // ids given; 0 with --all
}

func runSettle(ctx context.Context, a *app, args []string, action string) error {
	ids := args[1:]
	switch {
	case len(ids) == 0 && !a.f.all:
		return fmt.Errorf("%w: give dead letter IDs, or --all to %s every dead letter", errUsage, action)
	case len(ids) > 0 && a.f.all:
		return fmt.Errorf("%w: give IDs or --all, not both", errUsage)
	}
	t, err := a.resolve(ctx, args[0])
	if err != nil {
		return err
	}
	var n int
	if action == "retry" {
		n, err = t.queue.RetryDead(ctx, ids...)
	} else {
		n, err = t.queue.DeleteDead(ctx, ids...)
	}
	if err != nil {
		return err
	}
	if a.opts.json {
		return writeJSON(a.out, settleResult{Queue: t.queue.Name(), Action: action, Count: n, Request: len(ids)})
	}
	verb := map[string]string{"retry": "retried", "delete": "deleted"}[action]
	fmt.Fprintf(a.out, "%s %d dead letter(s) of %q\n", verb, n, t.queue.Name())
	if len(ids) > n {
		fmt.Fprintf(a.out, "%d id(s) were not dead (or were live again)\n", len(ids)-n)
	}
	return nil
}
