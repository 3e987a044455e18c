package main

import (
	"fmt"
	"math"
)

// metric is one column of a scenario's table.
type metric struct {
	key    string
	label  string
	unit   unit
	higher bool // higher is better (for ratios and "best peer")
	ratio  bool // show a "× redlease" column next to it
	sum    bool // show the total over rounds (e.g. lost locks), not a median
	// against, if set, adds a "× <against>" column: the figure over that
	// contender's, e.g. how close each lock comes to the raw floor.
	against string
}

// cellKey names one (variant, contender) pair of a table.
type cellKey struct{ variant, contender string }

// table collects one scenario's per-round figures.
type table struct {
	id, title string
	intro     string // what was measured, built from the run's parameters
	// ref is the contender the "× ref" columns divide by: "redlease"
	// unless a scenario compares variants of redlease with one of them.
	ref          string
	variantLabel string   // header of the variant column; "" when there is one variant
	variants     []string // e.g. goroutine counts; [""] when there is one
	contenders   []string
	metrics      []metric
	cells        map[cellKey]map[string][]float64 // metric -> one value per round
	samples      map[cellKey][]float64            // latency samples (µs) pooled over rounds
	failures     []string
	notes        []string
	// more are further tables of the same scenario, written after it.
	more []*table
}

func newTable(id, title string, variantLabel string, variants, contenders []string, metrics []metric) *table {
	if len(variants) == 0 {
		variants = []string{""}
	}
	return &table{
		id: id, title: title, ref: "redlease", variantLabel: variantLabel, variants: variants,
		contenders: contenders, metrics: metrics,
		cells: map[cellKey]map[string][]float64{}, samples: map[cellKey][]float64{},
	}
}

func (t *table) cell(variant, contender string) map[string][]float64 {
	k := cellKey{variant, contender}
	c := t.cells[k]
	if c == nil {
		c = map[string][]float64{}
		t.cells[k] = c
	}
	return c
}

// record stores one round's figures; a metric missing from vals counts as
// a failed measurement (NaN) for that round.
func (t *table) record(variant, contender string, vals map[string]float64) {
	c := t.cell(variant, contender)
	for _, m := range t.metrics {
		v, ok := vals[m.key]
		if !ok {
			v = math.NaN()
		}
		c[m.key] = append(c[m.key], v)
	}
}

// addSamples pools a round's latency samples (µs) for the plots.
func (t *table) addSamples(variant, contender string, us []float64) {
	k := cellKey{variant, contender}
	t.samples[k] = append(t.samples[k], us...)
}

// fail records a round that produced no figures.
func (t *table) fail(variant, contender string, round int, err error) {
	t.record(variant, contender, nil)
	where := contender
	if variant != "" {
		where += ", " + t.variantLabel + " " + variant
	}
	t.failures = append(t.failures, fmt.Sprintf("round %d, %s: %v", round+1, where, err))
}

// stat returns a metric's median over rounds and its min and max (or, for
// a summed metric, the total three times).
func (t *table) stat(variant, contender, key string) (med, lo, hi float64) {
	vals := t.cells[cellKey{variant, contender}][key]
	for _, m := range t.metrics {
		if m.key == key && m.sum {
			s := 0.0
			for _, v := range vals {
				if !math.IsNaN(v) {
					s += v
				}
			}
			if len(vals) == 0 {
				s = math.NaN()
			}
			return s, s, s
		}
	}
	return spread(vals)
}

func (t *table) metric(key string) metric {
	for _, m := range t.metrics {
		if m.key == key {
			return m
		}
	}
	panic("unknown metric " + key)
}

// ratio compares contender with t.ref in the same variant: the median
// over rounds of the per-round ratio. A round's runs are adjacent in time,
// so pairing them cancels much of the machine's drift between rounds.
// Summed metrics compare their totals.
func (t *table) ratio(variant, contender, key string) float64 {
	return t.ratioTo(variant, contender, key, t.ref)
}

// ratioTo is ratio against another reference contender than t.ref.
func (t *table) ratioTo(variant, contender, key, refName string) float64 {
	if t.metric(key).sum {
		ref, _, _ := t.stat(variant, refName, key)
		v, _, _ := t.stat(variant, contender, key)
		return v / ref
	}
	ref := t.cells[cellKey{variant, refName}][key]
	vals := t.cells[cellKey{variant, contender}][key]
	var rs []float64
	for i := range min(len(ref), len(vals)) {
		if ref[i] != 0 && !math.IsNaN(ref[i]) && !math.IsNaN(vals[i]) {
			rs = append(rs, vals[i]/ref[i])
		}
	}
	med, _, _ := spread(rs)
	return med
}

// contenderNames lists contenders' names in order, for a table's rows.
func contenderNames[C any](cs []C, name func(C) string) []string {
	names := make([]string, len(cs))
	for i, c := range cs {
		names[i] = name(c)
	}
	return names
}
