package redlease

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/redis/go-redis/v9"
)

// Histories that mix shared and exclusive leases on one lock, checked for
// linearizability against a model of a read-write lock (a semaphore with
// WithLimit) that hands out fencing tokens. The history type, its lost
// helper and fencedResource come from history_test.go: exclusive
// acquisitions, releases, losses and writes are lockInputs as there, and a
// shared acquisition is a sharedAcquire.

// sharedAcquire is a shared acquisition by client with WithLimit(limit)
// (0: none). Output: the fence, 0 when not obtained.
type sharedAcquire struct {
	client int
	limit  int
}

// rwState is the lock: an exclusive holder or a set of shared holders.
type rwState struct {
	excl   int    // exclusive holder, -1: none
	shared uint64 // shared holders, a bit per client (clients < 64)
	last   int64  // fence of the last exclusive lease
	max    int64  // highest fence handed out, shared or exclusive
	wrote  int64  // highest fence the resource accepted
}

func clientBit(c int) uint64 { return 1 << uint(c) }

// rwModel: an exclusive lease only on a free lock, with a fence above every
// fence handed out before (so a shared lease's fence is below every later
// exclusive fence); a shared lease only while no exclusive lease holds and
// fewer than its limit share the lock, with a fence at least every fence
// before (shared fences may repeat, and may skip: a failed attempt or a
// waiter's ticket counts one). A release succeeds only for a holder and is
// refused only to a non-holder; a loss drops the holder, whatever its kind.
var rwModel = porcupine.Model{
	Init: func() any { return rwState{excl: -1} },
	Step: func(st, in, out any) (bool, any) {
		s := st.(rwState)
		switch i := in.(type) {
		case sharedAcquire:
			f := out.(int64)
			if f == 0 {
				return true, s
			}
			if s.excl != -1 || s.shared&clientBit(i.client) != 0 ||
				(i.limit > 0 && bits.OnesCount64(s.shared) >= i.limit) ||
				f < s.last || f < s.max {
				return false, s
			}
			s.shared |= clientBit(i.client)
			s.max = f
			return true, s
		case lockInput:
			holds := s.excl == i.client || s.shared&clientBit(i.client) != 0
			drop := func() {
				if s.excl == i.client {
					s.excl = -1
				}
				s.shared &^= clientBit(i.client)
			}
			switch i.kind {
			case opAcquire:
				f := out.(int64)
				if f == 0 {
					return true, s
				}
				if s.excl != -1 || s.shared != 0 || f <= s.max {
					return false, s
				}
				s.excl, s.last, s.max = i.client, f, f
				return true, s
			case opRelease:
				if out.(bool) {
					if !holds {
						return false, s
					}
					drop()
					return true, s
				}
				return !holds, s
			case opLost:
				drop()
				return true, s
			case opWrite:
				var legal bool
				legal, s.wrote = fencedWrite(s.wrote, i.fence, out.(bool))
				return legal, s
			}
		}
		return false, s
	},
	DescribeOperation: func(in, out any) string {
		if i, ok := in.(sharedAcquire); ok {
			return fmt.Sprintf("acquire shared (limit %d) by %d -> %v", i.limit, i.client, out)
		}
		return lockModel.DescribeOperation(in, out)
	},
	DescribeState: func(st any) string {
		s := st.(rwState)
		return fmt.Sprintf("excl %d shared %b last %d max %d wrote %d", s.excl, s.shared, s.last, s.max, s.wrote)
	},
}

// addOp records an operation of any of rwModel's inputs.
func (h *history) addOp(client int, in, out any, call, ret time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, porcupine.Operation{
		ClientId: client, Input: in, Output: out,
		Call: call.Sub(h.start).Nanoseconds(), Return: ret.Sub(h.start).Nanoseconds(),
	})
}

// believedUntil is when the holder of lk stops believing it holds it: when
// Lost closed, or the lease's deadline by the client's clock (Redis keeps
// the lease at least that long), whichever came first. The watchdog may
// close Lost a little after the deadline on a loaded machine; the holder
// must not count on the lease past it.
func believedUntil(lk *Lock) time.Time {
	lk.l.wd.mu.Lock()
	defer lk.l.wd.mu.Unlock()
	until := lk.deadline
	if lk.cause != nil && lk.endedAt.Before(until) {
		until = lk.endedAt
	}
	return until
}

// releaseRecorded releases lk and records it: a lease believed held
// until its release is released (true) or refused (false: illegal for a
// holder) by a call answered before its deadline; one whose belief ended
// before is lost then, and so is one whose release failed past its
// deadline (it may have ended by TTL meanwhile).
func releaseRecorded(ctx context.Context, h *history, client int, lk *Lock) {
	until := believedUntil(lk)
	call := time.Now()
	if !until.After(call) {
		h.addOp(client, lockInput{kind: opLost, client: client}, nil, until, until)
		_ = lk.Release(ctx)
		return
	}
	err := lk.Release(ctx)
	ret := time.Now()
	switch {
	case err == nil:
		h.addOp(client, lockInput{kind: opRelease, client: client}, true, call, ret)
	case errors.Is(err, ErrNotHeld) && ret.Before(until):
		h.addOp(client, lockInput{kind: opRelease, client: client}, false, call, ret)
	default:
		h.addOp(client, lockInput{kind: opLost, client: client}, nil, call, ret)
	}
}

// rwWorkload runs clients on lock key for about dur, each on a Locker of
// ls: the first nExcl take exclusive leases (TryObtain and Obtain by
// turns) and write to res with their fence; the others take shared leases
// (TryObtainShared and ObtainShared by turns) with WithLimit(limit) if
// limit > 0. Leases last ttl, renewed by the watchdog, but for one
// client of each kind whose leases expire under it. The run goes on
// past dur, up to 3*dur, until each kind of lease was obtained
// rwMinLeases times, for a machine so loaded that few calls get through;
// every loop is bounded in count and time.
func rwWorkload(t *testing.T, ls []*Locker, key string, clients, nExcl, limit int, ttl, dur time.Duration) *history {
	ctx := context.Background()
	h := newHistory()
	var res fencedResource
	var got [2]atomic.Int64 // leases obtained: exclusive, shared
	start := time.Now()
	more := func() bool {
		switch elapsed := time.Since(start); {
		case elapsed < dur:
			return true
		case elapsed < 3*dur:
			return got[0].Load() < rwMinLeases || got[1].Load() < rwMinLeases
		}
		return false
	}
	var wg sync.WaitGroup
	for client := range clients {
		l := ls[client%len(ls)]
		exclusive := client < nExcl
		opts := []LockOption{WithTTL(ttl), WithRetry(ExponentialBackoff(10*time.Millisecond, 100*time.Millisecond))}
		// The last client of each kind renews nothing, and every third
		// hold of its outlasts the lease: leases end by TTL under their
		// holders, who must stop counting on them by their deadline.
		expiring := client == nExcl-1 || client == clients-1
		if expiring {
			opts = append(opts, WithTTL(ttl/2), WithoutWatchdog())
		}
		if !exclusive && limit > 0 {
			opts = append(opts, WithLimit(limit))
		}
		wg.Go(func() {
			for i := 0; i < 2000 && more(); i++ {
				var in any = sharedAcquire{client: client, limit: limit}
				if exclusive {
					in = lockInput{kind: opAcquire, client: client}
				}
				call := time.Now()
				// Obtain waits 300ms at most; a single attempt is not cut
				// short (its outcome would be unknown).
				wait := 300 * time.Millisecond
				if i%2 == 0 {
					wait = 10 * time.Second
				}
				octx, cancel := context.WithTimeout(ctx, wait)
				var lk *Lock
				var err error
				switch {
				case exclusive && i%2 == 0:
					lk, err = l.TryObtain(octx, key, opts...)
				case exclusive:
					lk, err = l.Obtain(octx, key, opts...)
				case i%2 == 0:
					lk, err = l.TryObtainShared(octx, key, opts...)
				default:
					lk, err = l.ObtainShared(octx, key, opts...)
				}
				cancel()
				ret := time.Now()
				if err != nil {
					if !errors.Is(err, ErrNotObtained) {
						t.Errorf("client %d: %v", client, err)
						return
					}
					h.addOp(client, in, int64(0), call, ret)
					continue
				}
				if lk.Shared() == exclusive {
					t.Errorf("client %d: Shared() %v", client, lk.Shared())
				}
				h.addOp(client, in, lk.Fence(), call, ret)
				if exclusive {
					got[0].Add(1)
				} else {
					got[1].Add(1)
				}
				if exclusive {
					// Refused only if a later lease wrote: ours must have
					// ended in Redis, so past its deadline.
					until := believedUntil(lk)
					if !res.write(h, client, lk.Fence()) && time.Now().Before(until) {
						t.Errorf("client %d: write with fence %d refused while the lease was surely held", client, lk.Fence())
					}
				}
				if expiring && i%3 == 1 {
					time.Sleep(ttl)
				} else {
					time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
				}
				releaseRecorded(ctx, h, client, lk)
			}
		})
	}
	wg.Wait()
	return h
}

// rwMinLeases is how many leases of each kind a history has at least,
// unless no more came in 3 times its planned run.
const rwMinLeases = 5

// Several Lockers (separate clients), with goroutines mixing TryObtain,
// Obtain, TryObtainShared and ObtainShared on short TTLs, on a
// read-write lock and on a semaphore of 2: every history is linearizable
// for rwModel, and each kind of lease was obtained.
//
// On miniredis keys expire only by FastForward, which the test never
// calls: a lease lost by its holder's clock (a slow renewal) stays until
// a release or a waiter's check clears it, while shared leases end by
// TIME as on Redis. Safety is checked all the same.
func TestSharedHistoryLinearizable(t *testing.T) {
	backends(t, func(t *testing.T, c *redis.Client) {
		ls := lockers(t, c.Options().Addr, 4)
		var wg sync.WaitGroup
		hs := map[string]*history{}
		var mu sync.Mutex
		for _, run := range []struct {
			key   string
			limit int
		}{{"rw", 0}, {"sem", 2}} {
			wg.Go(func() {
				h := rwWorkload(t, ls, run.key, 7, 2, run.limit, 200*time.Millisecond, 1500*time.Millisecond)
				mu.Lock()
				hs[run.key] = h
				mu.Unlock()
			})
		}
		wg.Wait()
		for key, h := range hs {
			t.Run(key, func(t *testing.T) {
				var got [2]int // exclusive, shared acquisitions that succeeded
				overlap := 0   // shared acquisitions while another share was held
				losses := 0
				sharing := map[int]bool{}
				ops := append([]porcupine.Operation(nil), h.ops...)
				sort.Slice(ops, func(i, j int) bool { return ops[i].Return < ops[j].Return })
				for _, op := range ops {
					switch in := op.Input.(type) {
					case sharedAcquire:
						if op.Output.(int64) > 0 {
							got[1]++
							if len(sharing) > 0 {
								overlap++
							}
							sharing[in.client] = true
						}
					case lockInput:
						if in.kind == opAcquire && op.Output.(int64) > 0 {
							got[0]++
						}
						if in.kind == opRelease || in.kind == opLost {
							delete(sharing, in.client)
						}
						if in.kind == opLost {
							losses++
						}
					}
				}
				t.Logf("%d exclusive and %d shared leases, about %d shared while another was; %d lost; %d operations took over 250ms", got[0], got[1], overlap, losses, slow(ops))
				if got[0] == 0 || got[1] == 0 {
					t.Errorf("no exclusive (%d) or no shared (%d) lease obtained: the history checks little", got[0], got[1])
				}
				h.checkModel(t, rwModel)
			})
		}
	})
}

// The checker is not vacuous: illegal mixed histories are caught, and a
// legal one with repeated shared fences, a loss and overlapping calls
// passes.
func TestRWModel(t *testing.T) {
	at := func(us int) time.Time { return time.Unix(0, int64(us)*1000) }
	ex := func(h *history, c int, f int64, call, ret int) {
		h.addOp(c, lockInput{kind: opAcquire, client: c}, f, at(call), at(ret))
	}
	sh := func(h *history, c, limit int, f int64, call, ret int) {
		h.addOp(c, sharedAcquire{client: c, limit: limit}, f, at(call), at(ret))
	}
	rel := func(h *history, c int, ok bool, call, ret int) {
		h.addOp(c, lockInput{kind: opRelease, client: c}, ok, at(call), at(ret))
	}
	lost := func(h *history, c int, when int) {
		h.addOp(c, lockInput{kind: opLost, client: c}, nil, at(when), at(when))
	}
	illegal := map[string]func(h *history){
		"two exclusive": func(h *history) {
			ex(h, 0, 1, 0, 1)
			ex(h, 1, 2, 2, 3)
		},
		"exclusive then shared": func(h *history) {
			ex(h, 0, 1, 0, 1)
			sh(h, 1, 0, 1, 2, 3)
		},
		"shared then exclusive": func(h *history) {
			sh(h, 0, 0, 1, 0, 1)
			ex(h, 1, 2, 2, 3)
		},
		"n+1 shared": func(h *history) {
			sh(h, 0, 2, 1, 0, 1)
			sh(h, 1, 2, 1, 2, 3)
			sh(h, 2, 2, 1, 4, 5)
		},
		"shared fence below an earlier fence": func(h *history) {
			ex(h, 0, 3, 0, 1)
			rel(h, 0, true, 2, 3)
			sh(h, 1, 0, 2, 4, 5)
		},
		"shared fence below an earlier shared fence": func(h *history) {
			sh(h, 0, 0, 3, 0, 1)
			sh(h, 1, 0, 2, 2, 3)
		},
		"exclusive fence not above a shared one": func(h *history) {
			sh(h, 0, 0, 3, 0, 1)
			rel(h, 0, true, 2, 3)
			ex(h, 1, 3, 4, 5)
		},
		"own share refused": func(h *history) {
			sh(h, 0, 0, 1, 0, 1)
			rel(h, 0, false, 2, 3)
		},
		"share released twice": func(h *history) {
			sh(h, 0, 0, 1, 0, 1)
			rel(h, 0, true, 2, 3)
			rel(h, 0, true, 4, 5)
		},
		"exclusive during overlapping shares": func(h *history) {
			sh(h, 0, 0, 1, 0, 10)
			sh(h, 1, 0, 1, 0, 10)
			rel(h, 0, true, 11, 12)
			ex(h, 2, 2, 13, 14) // client 1 still shares
		},
	}
	for name, build := range illegal {
		h := &history{start: time.Unix(0, 0)}
		build(h)
		if res := porcupine.CheckOperationsTimeout(rwModel, h.ops, 5*time.Second); res != porcupine.Illegal {
			t.Errorf("%s: checker said %v, want Illegal", name, res)
		}
	}

	h := &history{start: time.Unix(0, 0)}
	ex(h, 0, 1, 0, 1)
	rel(h, 0, true, 2, 3)
	sh(h, 1, 2, 1, 4, 5) // repeats the last fence
	sh(h, 2, 2, 1, 4, 6) // and again, concurrently
	sh(h, 3, 2, 0, 5, 7) // the limit is reached: not obtained
	sh(h, 3, 0, 2, 7, 8) // a lease without a limit fits; fences may skip
	rel(h, 1, true, 9, 10)
	lost(h, 2, 10)
	rel(h, 2, false, 11, 12)
	ex(h, 4, 3, 11, 20) // overlaps the last release: linearized after it
	rel(h, 3, true, 12, 13)
	h.addOp(4, lockInput{kind: opWrite, client: 4, fence: 3}, true, at(21), at(22))
	rel(h, 4, true, 23, 24)
	sh(h, 0, 0, 3, 25, 26) // the counter's value: the last exclusive fence
	rel(h, 0, true, 27, 28)
	ex(h, 1, 5, 29, 30)
	if res := porcupine.CheckOperationsTimeout(rwModel, h.ops, 5*time.Second); res != porcupine.Ok {
		t.Errorf("legal history: checker said %v, want Ok", res)
	}
}

func slow(ops []porcupine.Operation) int {
	n := 0
	for _, op := range ops {
		if op.Return-op.Call > int64(250*time.Millisecond) {
			n++
		}
	}
	return n
}
