// Package cmpstat holds what compare.sh's programs (cyclecmp, queuecmp)
// share: where the redlease module they were built with came from, and the
// median and range of a set of per-round figures.
package cmpstat

import (
	"math"
	"runtime/debug"
	"slices"
)

// LibPath is the module whose replace compare.sh points at the old
// commit's export.
const LibPath = "github.com/redlease/redlease"

// LibSource names the redlease module this binary was built with,
// including its replacement directory.
func LibSource() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, d := range bi.Deps {
		if d.Path == LibPath {
			if d.Replace != nil {
				return d.Path + " => " + d.Replace.Path
			}
			return d.Path + " " + d.Version
		}
	}
	return "unknown"
}

// Spread returns the median, minimum and maximum of vals (NaN for none).
func Spread(vals []float64) (med, lo, hi float64) {
	if len(vals) == 0 {
		return math.NaN(), math.NaN(), math.NaN()
	}
	v := slices.Sorted(slices.Values(vals))
	n := len(v)
	med = v[n/2]
	if n%2 == 0 {
		med = (v[n/2-1] + v[n/2]) / 2
	}
	return med, v[0], v[n-1]
}
