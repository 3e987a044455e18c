package main

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// quantile returns the q-quantile of sorted values (nearest rank).
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// spread returns the median, minimum and maximum of per-round values,
// ignoring NaN (a failed run).
func spread(vals []float64) (med, lo, hi float64) {
	v := make([]float64, 0, len(vals))
	for _, x := range vals {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return math.NaN(), math.NaN(), math.NaN()
	}
	slices.Sort(v)
	n := len(v)
	med = v[n/2]
	if n%2 == 0 {
		med = (v[n/2-1] + v[n/2]) / 2
	}
	return med, v[0], v[n-1]
}

// durationsToMicros converts latencies to sorted microseconds.
func durationsToMicros(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d) / float64(time.Microsecond)
	}
	slices.Sort(out)
	return out
}

// perOp divides, giving NaN rather than Inf when nothing happened.
func perOp(n, ops int64) float64 {
	if ops <= 0 {
		return math.NaN()
	}
	return float64(n) / float64(ops)
}

// unit says how a metric's values are printed.
type unit int

const (
	unitRate   unit = iota // per second, with k/M suffixes
	unitMicros             // a latency given in µs, printed in µs, ms or s
	unitCount              // a per-operation or plain count, 2–3 significant digits
	unitInt                // a whole number
	unitPct                // a percentage
)

func format(v float64, u unit) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	switch u {
	case unitRate:
		switch a := math.Abs(v); {
		case a >= 1e6:
			return sig(v/1e6) + "M"
		case a >= 1e3:
			return sig(v/1e3) + "k"
		default:
			return sig(v)
		}
	case unitMicros:
		switch a := math.Abs(v); {
		case a >= 1e6:
			return sig(v/1e6) + " s"
		case a >= 1e3:
			return sig(v/1e3) + " ms"
		default:
			return sig(v) + " µs"
		}
	case unitInt:
		return fmt.Sprintf("%.0f", v)
	case unitPct:
		return fmt.Sprintf("%.0f%%", v)
	default:
		return sig(v)
	}
}

// sig prints three significant digits without exponent notation.
func sig(v float64) string {
	switch a := math.Abs(v); {
	case a == 0:
		return "0"
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	case a >= 0.01:
		return fmt.Sprintf("%.3f", v)
	default:
		return fmt.Sprintf("%.2g", v)
	}
}

func formatRatio(r float64) string {
	if math.IsNaN(r) || math.IsInf(r, 0) {
		return "n/a"
	}
	switch {
	case r >= 100:
		return fmt.Sprintf("×%.0f", r)
	case r >= 10:
		return fmt.Sprintf("×%.1f", r)
	default:
		return fmt.Sprintf("×%.2f", r)
	}
}
