package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
)

// metrics serves the last sample in the Prometheus text exposition
// format (version 0.0.4), written by hand: queue depths by state as
// gauges, the totals as counters, labelled by queue.
func (d *dash) metrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	writeMetrics(w, d.sampler.latest())
}

// metricFamily is one metric's name, type and help.
type metricFamily struct{ name, kind, help string }

var (
	depthMetric   = metricFamily{"redlease_queue_messages", "gauge", "Messages in the queue by state (ready, delayed, in_flight, dead)."}
	deadMetric    = metricFamily{"redlease_queue_dead_letters", "gauge", "Dead letters the queue keeps."}
	counterFamily = []struct {
		metricFamily
		value func(statsView) int64
	}{
		{metricFamily{"redlease_queue_enqueued_total", "counter", "Messages added to the queue."}, func(s statsView) int64 { return s.Enqueued }},
		{metricFamily{"redlease_queue_acked_total", "counter", "Messages acked."}, func(s statsView) int64 { return s.Acked }},
		{metricFamily{"redlease_queue_nacked_total", "counter", "Nacks that sent a message back to be retried."}, func(s statsView) int64 { return s.Nacked }},
		{metricFamily{"redlease_queue_dead_lettered_total", "counter", "Messages moved to the dead letters."}, func(s statsView) int64 { return s.DeadLettered }},
	}
	sampleMetric    = metricFamily{"redlease_dash_sample_timestamp_seconds", "gauge", "When the dashboard last read the queues' stats (Unix time)."}
	truncatedMetric = metricFamily{"redlease_dash_scan_truncated", "gauge", "1 if the last discovery scan stopped at its limit, else 0."}
)

func (m metricFamily) header(w io.Writer) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", m.name, m.help, m.name, m.kind)
}

// labelEscapes escapes a label value: backslash, double quote and newline.
var labelEscapes = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// label is s as a label value: valid UTF-8 (the format's), escaped.
func label(s string) string { return labelEscapes.Replace(strings.ToValidUTF8(s, "\uFFFD")) }

// distinct drops a queue whose name an earlier one has (a plain queue
// named "t/s" and topic t's subscription s): Prometheus refuses a scrape
// with a series twice. The first listed (the plain queue) is kept.
func distinct(queues []queueView) []queueView {
	seen := make(map[string]bool, len(queues))
	out := queues[:0:0]
	for _, q := range queues {
		if l := label(q.Name); !seen[l] {
			seen[l] = true
			out = append(out, q)
		}
	}
	return out
}

func writeMetrics(w io.Writer, snap snapshot) {
	queues := distinct(allQueues(snap.Queues))
	depthMetric.header(w)
	for _, q := range queues {
		l := label(q.Name)
		s := q.Stats
		for _, st := range []struct {
			state string
			n     int64
		}{{"ready", s.Ready}, {"delayed", s.Delayed}, {"in_flight", s.InFlight}, {"dead", s.Dead}} {
			fmt.Fprintf(w, "%s{queue=\"%s\",state=\"%s\"} %d\n", depthMetric.name, l, st.state, st.n)
		}
	}
	deadMetric.header(w)
	for _, q := range queues {
		fmt.Fprintf(w, "%s{queue=\"%s\"} %d\n", deadMetric.name, label(q.Name), q.Stats.Dead)
	}
	for _, c := range counterFamily {
		c.header(w)
		for _, q := range queues {
			fmt.Fprintf(w, "%s{queue=\"%s\"} %d\n", c.name, label(q.Name), c.value(q.Stats))
		}
	}
	if !snap.At.IsZero() {
		sampleMetric.header(w)
		fmt.Fprintf(w, "%s %d\n", sampleMetric.name, snap.At.Unix())
	}
	truncatedMetric.header(w)
	truncated := 0
	if snap.Queues.Truncated {
		truncated = 1
	}
	fmt.Fprintf(w, "%s %d\n", truncatedMetric.name, truncated)
}
