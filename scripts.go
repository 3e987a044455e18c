package redlease

import (
	"context"
	"embed"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Every script lives in lua/, opening with its KEYS, ARGV and reply. Each
// touches only the keys passed in KEYS, and callers pass keys that share
// one {hash tag}, so it runs on one Redis Cluster slot. Each is safe to
// run twice (go-redis resends a command whose reply was lost): the second
// run neither repeats the effect nor reports a false error.
//
//go:embed lua/*.lua
var luaFiles embed.FS

// Lock scripts.
var (
	acquireScript = newHotScript("lock_acquire.lua", "")
	sharedScript  = newHotScript("lock_shared.lua", lockPrelude)
	releaseScript = newHotScript("lock_release.lua", lockPrelude)
	waitScript    = newHotScript("lock_wait.lua", lockPrelude)
	renewScript   = lockScript("lock_renew.lua")
	pttlScript    = lockScript("lock_pttl.lua")
	fenceScript   = lockScript("lock_fence.lua")
	everyScript   = lockScript("every.lua")
	inspectScript = lockScript("lock_inspect.lua")
)

// Queue scripts: each is lua/queue.lua's prelude followed by its body.
var (
	enqueueScript    = queueScript("queue_enqueue.lua")
	claimScript      = queueScript("queue_claim.lua")
	ackScript        = queueScript("queue_ack.lua")
	ackClaimScript   = queueScript("queue_ack_claim.lua")
	nackScript       = queueScript("queue_nack.lua")
	extendScript     = queueScript("queue_extend.lua")
	reclaimScript    = queueScript("queue_reclaim.lua")
	peekScript       = queueScript("queue_peek.lua")
	deadScript       = queueScript("queue_dead.lua")
	retryDeadScript  = queueScript("queue_dead_retry.lua")
	deleteDeadScript = queueScript("queue_dead_delete.lua")
	readyScript      = queueScript("queue_ready.lua")
)

// Topic scripts.
var (
	publishScript     = newHotScript("topic_publish.lua", doneMemoryLua)
	subscribeScript   = topicScript("topic_subscribe.lua")
	unsubscribeScript = topicScript("topic_unsubscribe.lua")
	drainScript       = topicScript("topic_drain.lua")
)

// Codes the scripts answer with, for a lease (lock) or a claim (message).
const (
	codeOK          = 1  // done: obtained, released, renewed, acked, retried, added
	codeGone        = 0  // no lease: it expired or was deleted, or the message is gone
	codeTaken       = -1 // another holder has the lease, or another consumer the claim
	codeBuried      = 2  // nack: the message used up its attempts and is dead-lettered
	codeReclaiming  = -1 // reclaim: another consumer holds the shard's reclaim guard
	codeNotOurs     = -3 // pttl: the lease is not ours
	codeUniqueTaken = -2 // enqueue, publish: WithUniqueFor keeps the message's id taken
)

func lua(name string) string {
	b, err := luaFiles.ReadFile("lua/" + name)
	if err != nil {
		panic(err) // a missing embedded file is a build mistake; tests catch it
	}
	return string(b)
}

func lockScript(name string) *redis.Script { return redis.NewScript(lua(name)) }

// maxSkippedWaiters bounds the waiters one script call skips because their
// Locker no longer listens, and maxGrantedWaiters the shared waiters it
// lets in, so no call is O(waiters): waiters' checks go on from there.
const (
	maxSkippedWaiters = 16
	maxGrantedWaiters = 256
)

// lockPrelude opens the scripts that may hand a lock to a waiter:
// MAX_SKIPPED, MAX_GRANTS, then lua/lock.lua.
var lockPrelude = "local MAX_SKIPPED = " + strconv.Itoa(maxSkippedWaiters) + "\n" +
	"local MAX_GRANTS = " + strconv.Itoa(maxGrantedWaiters) + "\n" + lua("lock.lua")

// queuePrelude opens every queue script: DONE_MEMORY, then lua/queue.lua.
var queuePrelude = doneMemoryLua + lua("queue.lua")

func queueScript(name string) *redis.Script { return redis.NewScript(queuePrelude + lua(name)) }

// doneMemoryLua opens the scripts that remember requests for doneMemory.
var doneMemoryLua = "local DONE_MEMORY = " + strconv.FormatInt(doneMemory.Milliseconds(), 10) + "\n"

func topicScript(name string) *redis.Script { return redis.NewScript(doneMemoryLua + lua(name)) }

// scriptCall is one call of a script: its keys and arguments.
type scriptCall struct {
	keys []string
	args []any
}

// isNoScript reports whether Redis refused a call because it does not have
// the script (a fresh server, SCRIPT FLUSH, a cluster node that has not
// seen it): such a call did not run.
func isNoScript(err error) bool { return redis.HasErrorPrefix(err, "NOSCRIPT") }

// runAll sends calls of one script, and any extra commands after them, in
// one round trip (a pipeline unless it is one call alone). Calls refused with
// NOSCRIPT did not run: after loading the script, only those are sent
// again, with the extras (a wake-up must follow the work it announces; a
// WAIT, the write it waits for), so no call runs twice.
func runAll(ctx context.Context, c redis.UniversalClient, s *redis.Script, calls []scriptCall, extra ...func(redis.Pipeliner)) []*redis.Cmd {
	if len(calls) == 1 && len(extra) == 0 {
		return []*redis.Cmd{s.Run(ctx, c, calls[0].keys, calls[0].args...)}
	}
	cmds := make([]*redis.Cmd, len(calls))
	send := func(idx []int) {
		_, _ = c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, i := range idx {
				cmds[i] = s.EvalSha(ctx, p, calls[i].keys, calls[i].args...)
			}
			for _, f := range extra {
				f(p)
			}
			return nil
		})
	}
	all := make([]int, len(calls))
	for i := range all {
		all[i] = i
	}
	send(all)
	var refused []int
	for i, cmd := range cmds {
		if isNoScript(cmd.Err()) {
			refused = append(refused, i)
		}
	}
	if len(refused) == 0 {
		return cmds
	}
	if err := s.Load(ctx, c).Err(); err != nil {
		for _, i := range refused {
			cmds[i].SetErr(fmt.Errorf("load script after NOSCRIPT: %w", err))
		}
		return cmds
	}
	send(refused)
	return cmds
}

// runInOrder sends calls of one script that must run in the order given
// (a batch's chunks into one list), and any extra commands after them, in
// one round trip. A call alone goes as runAll sends it; several go as
// EVAL with the script's text, so none can be refused with NOSCRIPT and
// sent again after later ones ran.
func runInOrder(ctx context.Context, c redis.UniversalClient, s *redis.Script, calls []scriptCall, extra ...func(redis.Pipeliner)) []*redis.Cmd {
	if len(calls) == 1 {
		return runAll(ctx, c, s, calls, extra...)
	}
	cmds := make([]*redis.Cmd, len(calls))
	_, _ = c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, call := range calls {
			cmds[i] = s.Eval(ctx, p, call.keys, call.args...)
		}
		for _, f := range extra {
			f(p)
		}
		return nil
	})
	return cmds
}

// hotScript is a lock script called on every acquisition or release:
// through Do, with its SHA1 boxed once and its keys passed as pointers,
// which go-redis writes without boxing them again (callers pass their other
// arguments so too where they can), so a call allocates only what go-redis
// itself must.
type hotScript struct {
	*redis.Script
	sha, src any
}

// A hot script's body may open with a fast path that needs no prelude: the
// prelude goes after the line preludeHere, or first if there is none, so
// the fast path does not pay for defining the prelude's functions.
const preludeHere = "-- prelude\n"

func newHotScript(name string, prelude string) hotScript {
	body := lua(name)
	fast, rest, ok := strings.Cut(body, preludeHere)
	if !ok {
		fast, rest = "", body
	}
	src := fast + prelude + rest
	s := redis.NewScript(src)
	return hotScript{s, s.Hash(), src}
}

// numKeys are EVALSHA's key counts, boxed once.
var numKeys = [...]any{"0", "1", "2", "3", "4"}

// call makes one call of s in a round trip of its own. A call Redis refused
// with NOSCRIPT did not run: it is sent again as EVAL with the script's
// text, to the same node, which then keeps the script.
func (s hotScript) call(ctx context.Context, c redis.UniversalClient, keys []string, args ...any) *redis.Cmd {
	full := make([]any, 0, 3+len(keys)+len(args))
	var n any
	if len(keys) < len(numKeys) {
		n = numKeys[len(keys)]
	} else {
		n = strconv.Itoa(len(keys))
	}
	full = append(full, "evalsha", s.sha, n)
	for i := range keys {
		full = append(full, &keys[i])
	}
	full = append(full, args...)
	cmd := c.Do(ctx, full...)
	if err := cmd.Err(); err != nil && isNoScript(err) {
		full[0], full[1] = "eval", s.src
		cmd = c.Do(ctx, full...)
	}
	return cmd
}

// run makes one script call, in a round trip of its own (and a load, then
// a second one, if Redis lacks the script).
func run(ctx context.Context, c redis.UniversalClient, s *redis.Script, keys []string, args ...any) *redis.Cmd {
	return s.Run(ctx, c, keys, args...)
}

// ints reads a script's reply of n integers (any number if n < 0).
func ints(cmd *redis.Cmd, n int) ([]int64, error) {
	res, err := cmd.Int64Slice()
	if err == nil && n >= 0 && len(res) != n {
		err = errUnexpected(res)
	}
	return res, err
}

func errUnexpected(reply any) error { return fmt.Errorf("unexpected reply %v", reply) }
