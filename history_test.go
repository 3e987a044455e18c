package redlease

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// A history of lock operations, checked for linearizability against a
// model of a lock that hands out fencing tokens, with a fenced register
// (the resource) beside it.

type opKind int

const (
	opAcquire opKind = iota // Output: fence (0: not obtained)
	opRelease               // Output: released (false: ErrNotHeld)
	opLost                  // the holder stopped believing it holds the lock: Lost closed, or a release of unknown outcome
	opWrite                 // a fenced write: Output: accepted
)

type lockInput struct {
	kind   opKind
	client int
	fence  int64 // for writes
}

type lockState struct {
	holder int   // -1: free
	fence  int64 // last fence handed out
	wrote  int64 // highest fence the resource accepted
}

var lockModel = porcupine.Model{
	Init: func() any { return lockState{holder: -1} },
	Step: func(st, in, out any) (bool, any) {
		s, i := st.(lockState), in.(lockInput)
		switch i.kind {
		case opAcquire:
			f := out.(int64)
			if f == 0 {
				return true, s // someone held it at some point: always possible
			}
			// Only a free lock is obtained, and fences only grow. (They
			// may skip: an attempt whose reply was lost counted one.)
			if s.holder != -1 || f <= s.fence {
				return false, s
			}
			return true, lockState{holder: i.client, fence: f, wrote: s.wrote}
		case opRelease:
			if out.(bool) {
				if s.holder != i.client {
					return false, s
				}
				s.holder = -1
				return true, s
			}
			return s.holder != i.client, s // refused only if not ours
		case opLost:
			if s.holder == i.client {
				s.holder = -1
			}
			return true, s
		case opWrite:
			var legal bool
			legal, s.wrote = fencedWrite(s.wrote, i.fence, out.(bool))
			return legal, s
		}
		return false, s
	},
	DescribeOperation: func(in, out any) string {
		i := in.(lockInput)
		return fmt.Sprintf("%v by %d (fence %d) -> %v", [...]string{"acquire", "release", "lost", "write"}[i.kind], i.client, i.fence, out)
	},
}

// fencedWrite steps the fenced register: a write is accepted exactly when
// its fence is at least the highest accepted before. It returns whether
// the outcome is legal and the highest accepted fence after it.
func fencedWrite(wrote, fence int64, accepted bool) (bool, int64) {
	if accepted != (fence >= wrote) {
		return false, wrote
	}
	if accepted {
		wrote = fence
	}
	return true, wrote
}

// history records operations from many goroutines.
type history struct {
	mu    sync.Mutex
	start time.Time
	ops   []porcupine.Operation
}

func newHistory() *history { return &history{start: time.Now()} }

func (h *history) add(in lockInput, out any, call, ret time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, porcupine.Operation{
		ClientId: in.client, Input: in, Output: out,
		Call: call.Sub(h.start).Nanoseconds(), Return: ret.Sub(h.start).Nanoseconds(),
	})
}

// lost records when a lease's Lost closed, if it did before its release.
func (h *history) lost(client int, lk *Lock) {
	lk.l.wd.mu.Lock()
	at, lost := lk.endedAt, lk.cause != nil
	lk.l.wd.mu.Unlock()
	if lost {
		h.add(lockInput{kind: opLost, client: client}, nil, at, at)
	}
}

// check fails the test, printing the history, if it is not linearizable.
func (h *history) check(t *testing.T) { h.checkModel(t, lockModel) }

// checkModel fails the test, printing the history, if it is not
// linearizable against model.
func (h *history) checkModel(t *testing.T, model porcupine.Model) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	res := porcupine.CheckOperationsTimeout(model, h.ops, 30*time.Second)
	t.Logf("linearizability: %d operations: %v", len(h.ops), res)
	if res == porcupine.Illegal {
		ops := append([]porcupine.Operation(nil), h.ops...)
		sort.Slice(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
		var b strings.Builder
		for _, op := range ops {
			fmt.Fprintf(&b, "[%9d, %9d] %s\n", op.Call/1000, op.Return/1000, model.DescribeOperation(op.Input, op.Output))
		}
		t.Fatalf("history is not linearizable (times in µs):\n%s", b.String())
	}
	if res == porcupine.Unknown {
		t.Fatal("linearizability check timed out")
	}
}

// fencedResource accepts a write only with a fence at least as high as any
// it accepted before: what a store that checks fencing tokens does.
type fencedResource struct {
	mu      sync.Mutex
	highest int64
}

func (r *fencedResource) write(h *history, client int, fence int64) bool {
	call := time.Now()
	r.mu.Lock()
	ok := fence >= r.highest
	if ok {
		r.highest = fence
	}
	r.mu.Unlock()
	h.add(lockInput{kind: opWrite, client: client, fence: fence}, ok, call, time.Now())
	return ok
}

// The checker is not vacuous: a double hold, a shrinking fence, a refused
// release of a lease still held, and a stale write accepted are all caught.
func TestLockModelRejectsViolations(t *testing.T) {
	at := func(us int) time.Time { return time.Unix(0, int64(us)*1000) }
	cases := map[string]func(h *history){
		"double hold": func(h *history) {
			h.add(lockInput{kind: opAcquire, client: 0}, int64(1), at(0), at(1))
			h.add(lockInput{kind: opAcquire, client: 1}, int64(2), at(2), at(3))
		},
		"fence goes back": func(h *history) {
			h.add(lockInput{kind: opAcquire, client: 0}, int64(2), at(0), at(1))
			h.add(lockInput{kind: opRelease, client: 0}, true, at(2), at(3))
			h.add(lockInput{kind: opAcquire, client: 1}, int64(1), at(4), at(5))
		},
		"own lease refused": func(h *history) {
			h.add(lockInput{kind: opAcquire, client: 0}, int64(1), at(0), at(1))
			h.add(lockInput{kind: opRelease, client: 0}, false, at(2), at(3))
		},
		"stale write accepted": func(h *history) {
			h.add(lockInput{kind: opWrite, client: 1, fence: 2}, true, at(0), at(1))
			h.add(lockInput{kind: opWrite, client: 0, fence: 1}, true, at(2), at(3))
		},
	}
	for name, build := range cases {
		h := &history{start: time.Unix(0, 0)}
		build(h)
		if res := porcupine.CheckOperationsTimeout(lockModel, h.ops, 5*time.Second); res != porcupine.Illegal {
			t.Errorf("%s: checker said %v", name, res)
		}
	}
}
