package redlease

import (
	"time"

	"github.com/redis/go-redis/v9"
)

// renewal is one lease in a batch the watchdog renews, with the TTL the
// batch asks for.
type renewal struct {
	ls  *lease
	ttl time.Duration
}

// groupBatch splits a batch into groups of at most size leases that one
// script call may touch together, those with the same key, in the order
// the keys first appear. It returns each group's batch indexes.
func groupBatch[K comparable](batch []renewal, key func(*lease) K, size int) [][]int {
	byKey := map[K][]int{}
	var order []K
	for i, r := range batch {
		k := key(r.ls)
		if _, ok := byKey[k]; !ok {
			order = append(order, k)
		}
		byKey[k] = append(byKey[k], i)
	}
	var groups [][]int
	for _, k := range order {
		for idx := byKey[k]; len(idx) > 0; {
			n := min(len(idx), size)
			groups = append(groups, idx[:n])
			idx = idx[n:]
		}
	}
	return groups
}

// spreadReplies gives each of a batch's n leases its code from its group's
// reply, one integer per lease in group order, or the group's error.
func spreadReplies(cmds []*redis.Cmd, groups [][]int, n int) ([]int64, []error) {
	codes := make([]int64, n)
	errs := make([]error, n)
	for g, idx := range groups {
		res, err := ints(cmds[g], len(idx))
		for j, i := range idx {
			if err != nil {
				errs[i] = err
			} else {
				codes[i] = res[j]
			}
		}
	}
	return codes, errs
}
