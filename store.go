package redlease

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// store is where a Locker keeps its leases: one Redis (a node) or a
// majority of independent masters (a quorum). Codes are the scripts'
// codeOK, codeGone and codeTaken.
type store interface {
	// check refuses, before anything is sent, lock options the store
	// cannot honour.
	check(cfg lockConfig) error
	// acquire makes one attempt to take lk's lease, sent at start: ok and
	// the fence, or the holder's remaining ms (-1: no TTL), or pttlQueued
	// when the attempt queued the waiter whose entry it carries (nil not
	// to queue; only a node queues).
	acquire(ctx context.Context, lk *Lock, start time.Time, entry *string) (ok bool, n int64, err error)
	// release ends the lease if it is ours, handing it to the oldest
	// waiter still listening, if any; entry, if not nil, first leaves the
	// queue (a waiter that gives up).
	release(ctx context.Context, lk *Lock, entry *string) (int64, error)
	// renew sets the lease to end ttl from now if it is ours.
	renew(ctx context.Context, ls *lease, ttl time.Duration) (int64, error)
	// renewAll renews a watchdog batch: a code or an error per lease.
	renewAll(ctx context.Context, batch []renewal) ([]int64, []error)
	// pttl is the lease's remaining ms, or negative when it is not ours.
	pttl(ctx context.Context, ls *lease) (int64, error)
}

// renewBatchSize caps the leases one renewal script call extends.
const renewBatchSize = 100

// pttlQueued is what an attempt that queued its waiter answers instead of
// the holder's remaining ms.
const pttlQueued = -2

// node is one Redis that holds leases.
type node struct {
	client  redis.UniversalClient
	publish any                     // "PUBLISH", or "SPUBLISH" on a Cluster: how grants are announced (boxed once)
	slots   func(key string) string // groups keys that one script call may touch together
}

func newNode(c redis.UniversalClient) *node {
	n := &node{client: c, publish: any("PUBLISH"), slots: slotsOf(c)}
	if _, ok := c.(*redis.ClusterClient); ok {
		n.publish = any("SPUBLISH")
	}
	return n
}

func (n *node) check(lockConfig) error { return nil }

func (n *node) acquire(ctx context.Context, lk *Lock, _ time.Time, entry *string) (bool, int64, error) {
	if lk.replicas > 0 {
		return n.acquireAcked(ctx, lk)
	}
	var cmd *redis.Cmd
	if lk.shared {
		cmd = sharedScript.call(ctx, n.client, lk.keys(), &lk.token, &lk.ttlMs, &lk.limit, entryArg(entry), n.publish)
	} else {
		keys := lk.keys()[:3]
		if entry == nil {
			keys = keys[:2] // no queue
		}
		cmd = acquireScript.call(ctx, n.client, keys, &lk.token, &lk.ttlMs, entryArg(entry))
	}
	r, err := cmd.Int64()
	if err != nil {
		return false, 0, err
	}
	ok, v := acquireReply(r)
	return ok, v, nil
}

// entryArg passes a queue entry, or "" for none, without boxing a string.
func entryArg(entry *string) any {
	if entry == nil {
		return ""
	}
	return entry
}

// acquireReply decodes lua/lock_acquire.lua's reply: the fence, or the
// holder's remaining ms (pttlQueued when queued, -1 with no TTL).
func acquireReply(r int64) (ok bool, v int64) {
	if r > 0 {
		return true, r
	}
	return false, -3 - r
}

func (n *node) release(ctx context.Context, lk *Lock, entry *string) (int64, error) {
	return releaseScript.call(ctx, n.client, lk.keys(), &lk.token, &lk.fence, n.publish, entryArg(entry)).Int64()
}

// codeGranted: a waiter's check found the lease granted to it.
const codeGranted = 2

// wait is a queued waiter's check (lua/lock_wait.lua): codeOK and the
// fence, or codeGranted (left to its notice unless take) or 0 and the
// holder's remaining ms; missed says the waiter's Locker missed a grant or
// was taken for gone.
func (n *node) wait(ctx context.Context, w *waiter, take bool) (code, v int64, missed bool, err error) {
	lk := w.lk
	flag := ""
	if take {
		flag = "1"
	}
	res, err := ints(waitScript.call(ctx, n.client, lk.keys(), &lk.token, &lk.ttlMs, &w.entry, n.publish, flag), 3)
	if err != nil {
		return 0, 0, false, err
	}
	return res[0], res[1], res[2] == 1, nil
}

func (n *node) renew(ctx context.Context, ls *lease, ttl time.Duration) (int64, error) {
	codes, err := ints(run(ctx, n.client, renewScript, []string{ls.rkey, ls.skey}, ls.token, ttl.Milliseconds()), 1)
	if err != nil {
		return 0, err
	}
	return codes[0], nil
}

// renewAll renews a batch in as few script calls as the keys' cluster
// slots allow, sent together in one pipeline.
func (n *node) renewAll(ctx context.Context, batch []renewal) ([]int64, []error) {
	groups := groupBatch(batch, func(ls *lease) string { return n.slots(ls.rkey) }, renewBatchSize)
	calls := make([]scriptCall, len(groups))
	for g, idx := range groups {
		keys := make([]string, 0, 2*len(idx))
		args := make([]any, 0, 2*len(idx))
		for _, i := range idx {
			keys = append(keys, batch[i].ls.rkey, batch[i].ls.skey)
			args = append(args, batch[i].ls.token, batch[i].ttl.Milliseconds())
		}
		calls[g] = scriptCall{keys, args}
	}
	return spreadReplies(runAll(ctx, n.client, renewScript, calls), groups, len(batch))
}

func (n *node) pttl(ctx context.Context, ls *lease) (int64, error) {
	return run(ctx, n.client, pttlScript, []string{ls.rkey, ls.skey}, ls.token).Int64()
}
