package redleaseotel

import (
	"maps"
	"sync"
	"sync/atomic"
)

// A cache maps keys to values computed once, for lookups on the hot path
// that neither lock nor allocate: readers load an immutable map through an
// atomic pointer; a writer copies it, adds one entry and swaps it in. It
// holds at most maxCached entries; past that, get computes the value each
// time and keeps nothing, so memory stays bounded. Copying makes filling
// it quadratic in its size, which maxCached keeps small.
type cache[K comparable, V any] struct {
	m  atomic.Pointer[map[K]V]
	mu sync.Mutex // serializes writers; held only while adding an entry
}

// get returns the value for k, computing it with compute if k is not
// cached. compute must not call get on the same cache.
func (c *cache[K, V]) get(k K, compute func(K) V) V {
	if m := c.m.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m.Load()
	if old != nil {
		if v, ok := (*old)[k]; ok {
			return v
		}
		if len(*old) >= maxCached {
			return compute(k)
		}
	}
	v := compute(k)
	n := map[K]V{}
	if old != nil {
		n = maps.Clone(*old)
	}
	n[k] = v
	c.m.Store(&n)
	return v
}
