package redlease

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// MaxInspectList bounds the waiters and the shared leases that
// [Locker.Inspect] lists, so that one read never blocks Redis for long.
const MaxInspectList = 100

// LockInfo is a lock's state as [Locker.Inspect] read it, at one instant.
type LockInfo struct {
	// Name is the lock's name.
	Name string
	// Held says whether a lease holds the lock: an exclusive one, or
	// shared ones ([LockInfo.Shared]).
	Held bool
	// Shared says whether shared leases hold the lock.
	Shared bool
	// Holder is the exclusive holder's token ([Lock.Token]): "" when the
	// lock is free or held by shared leases.
	Holder string
	// TTL is how long the lock stays held unless renewed: the exclusive
	// lease's remaining TTL, or, when shared, until the last shared lease
	// ends. It is 0 when the lock is free, and -1ns if its key has no
	// expiry (not written by redlease).
	TTL time.Duration
	// Fence is the fence counter of the lock's hash slot, shared by every
	// lock name in that slot: the last fencing token or waiter ticket
	// handed out there, 0 if none yet. The next exclusive lease on this
	// lock gets a fence above it; the next shared lease, at least it.
	Fence int64
	// WaiterCount is how many waiters are queued, counting any whose
	// process died that no release or check has skipped yet.
	WaiterCount int
	// Waiters are the first queued waiters, oldest first: at most
	// [MaxInspectList] of WaiterCount.
	Waiters []LockWaiter
	// SharedCount is how many shared leases hold the lock.
	SharedCount int
	// SharedHolders are the shared leases, the soonest to end first: at
	// most [MaxInspectList] of SharedCount.
	SharedHolders []SharedHolder
}

// LockWaiter is one waiter queued on a lock.
type LockWaiter struct {
	// Token is the token the waiter will hold the lease with.
	Token string
	// Ticket is the waiter's place in the queue: the fence counter's
	// value when it queued. Lower tickets are served first.
	Ticket int64
	// Shared says whether it waits for a shared lease.
	Shared bool
	// Limit is a shared waiter's [WithLimit] (0: none).
	Limit int
	// Grant is how long a lease handed to it lasts until its Locker
	// renews it ([WithGrantTTL]).
	Grant time.Duration
}

// SharedHolder is one shared lease on a lock.
type SharedHolder struct {
	// Token is the lease's token ([Lock.Token]).
	Token string
	// TTL is how long the lease has left, by Redis's clock.
	TTL time.Duration
}

// Inspect reads the state of lock key (see [LockInfo]) in one round trip:
// one script that reads the lock's keys, all in one hash slot, atomically
// and without writing. It takes no lease, joins no queue and changes
// nothing, so the state may have changed by the time it returns. An empty
// key returns an error that errors.Is [ErrInvalidArgument]; so does a
// quorum Locker, whose leases live on several Redis masters that no one
// read sees at one instant.
func (l *Locker) Inspect(ctx context.Context, key string) (LockInfo, error) {
	if err := l.check(key); err != nil {
		return LockInfo{}, err
	}
	if l.waits == nil {
		return LockInfo{}, fmt.Errorf("%w: Inspect reads one Redis; a quorum Locker's leases live on several", ErrInvalidArgument)
	}
	keys := l.lockKeys(key)
	res, err := run(ctx, l.client, inspectScript, keys[:], MaxInspectList).Slice()
	if err != nil {
		return LockInfo{}, fmt.Errorf("redlease: inspect %q: %w", key, err)
	}
	info, err := decodeLockInfo(key, res)
	if err != nil {
		return LockInfo{}, fmt.Errorf("redlease: inspect %q: %w", key, err)
	}
	return info, nil
}

// inspectReplyLen is the length of lua/lock_inspect.lua's reply.
const inspectReplyLen = 9

// decodeLockInfo reads lua/lock_inspect.lua's reply.
func decodeLockInfo(name string, res []any) (LockInfo, error) {
	if len(res) != inspectReplyLen {
		return LockInfo{}, errUnexpected(res)
	}
	held, ok1 := res[0].(int64)
	holder, ok2 := res[1].(string)
	pttl, ok3 := res[2].(int64)
	fence, ok4 := res[3].(string)
	waiting, ok5 := res[4].(int64)
	waiters, ok6 := res[5].([]any)
	live, ok7 := res[6].(int64)
	shares, ok8 := res[7].([]any)
	now, ok9 := res[8].(int64)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7 && ok8 && ok9) || len(waiters)%2 != 0 || len(shares)%2 != 0 {
		return LockInfo{}, errUnexpected(res)
	}
	info := LockInfo{Name: name, Held: held == 1, WaiterCount: int(waiting), SharedCount: int(live)}
	if info.Held {
		info.Shared = holder == ""
		if !info.Shared {
			info.Holder = holder
		}
		info.TTL = time.Duration(pttl) * time.Millisecond
		if pttl < 0 {
			info.TTL = -1
		}
	}
	if fence != "" {
		f, err := strconv.ParseInt(fence, 10, 64)
		if err != nil {
			return LockInfo{}, fmt.Errorf("malformed fence counter %q", fence)
		}
		info.Fence = f
	}
	for i := 0; i < len(waiters); i += 2 {
		w, err := parseWaiter(waiters[i], waiters[i+1])
		if err != nil {
			return LockInfo{}, err
		}
		info.Waiters = append(info.Waiters, w)
	}
	for i := 0; i < len(shares); i += 2 {
		token, ok := shares[i].(string)
		ends, err := scoreOf(shares[i+1])
		if !ok || err != nil {
			return LockInfo{}, errUnexpected(res)
		}
		info.SharedHolders = append(info.SharedHolders, SharedHolder{Token: token, TTL: time.Duration(ends-now) * time.Millisecond})
	}
	return info, nil
}

// parseWaiter reads a waiter queue entry, "<grant ms>[:<limit>] <channel>
// <token>" (lua/lock.lua), with its ticket.
func parseWaiter(entry, score any) (LockWaiter, error) {
	e, ok := entry.(string)
	ticket, err := scoreOf(score)
	if !ok || err != nil {
		return LockWaiter{}, fmt.Errorf("malformed waiter entry %v", entry)
	}
	grant, rest, ok1 := strings.Cut(e, " ")
	last := strings.LastIndexByte(rest, ' ')
	if !ok1 || last < 1 || last == len(rest)-1 {
		return LockWaiter{}, fmt.Errorf("malformed waiter entry %.80q", e)
	}
	w := LockWaiter{Token: rest[last+1:], Ticket: ticket}
	ms, limit, shared := strings.Cut(grant, ":")
	g, err := strconv.ParseInt(ms, 10, 64)
	if err != nil || g < 0 {
		return LockWaiter{}, fmt.Errorf("malformed waiter entry %.80q", e)
	}
	w.Grant = time.Duration(g) * time.Millisecond
	if shared {
		w.Shared = true
		if limit != "" {
			n, err := strconv.Atoi(limit)
			if err != nil || n < 0 {
				return LockWaiter{}, fmt.Errorf("malformed waiter entry %.80q", e)
			}
			w.Limit = n
		}
	}
	return w, nil
}

// scoreOf reads a sorted-set score a script returned as text: tickets and
// times are whole numbers.
func scoreOf(v any) (int64, error) {
	s, ok := v.(string)
	if !ok {
		return 0, errUnexpected(v)
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, err
	}
	return int64(f), nil
}
