package redlease

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// Every script touches only the keys passed in KEYS, and callers pass keys
// that share one {hash tag}, so each script runs on one Redis Cluster slot.
// redis.Script sends EVALSHA and falls back to EVAL on NOSCRIPT, so a
// SCRIPT FLUSH or a restarted server is survived.

// acquireScript takes the lease if the lock is free and counts a fencing token.
//
//	KEYS[1] lock key, KEYS[2] fence counter of the lock's slot (shared by
//	        the names in that slot; never expires, so fences only grow)
//	ARGV[1] token, ARGV[2] ttl in milliseconds
//	returns {1, fence} when the lease is ours. A call retried after a lost
//	        reply (or after a hand-off to us went unanswered) finds our own
//	        token, sets the ttl from now and returns the counter's value.
//	        {0, pttl} when another holds it: its remaining ms, -1 if it has no TTL.
//
// The counter's value is a valid fence for our lease even if other names of
// the slot counted on since we were granted: it is at least what our grant
// counted, so above every earlier lease's fence on this name, and every
// later lease on the name counts after it, so gets more. Resetting the ttl
// keeps Redis's expiry no earlier than the one the client computes from
// the call's start.
//
// SET NX GET needs Redis 7.0 or later; it saves a command on every attempt.
var acquireScript = redis.NewScript(`
local holder = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2], 'GET')
if not holder then
  return {1, redis.call('INCR', KEYS[2])}
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, tonumber(redis.call('GET', KEYS[2]))}
end
return {0, redis.call('PTTL', KEYS[1])}
`)

// releaseScript deletes the lease only if it is ours, and wakes waiters.
//
//	KEYS[1] lock key
//	ARGV[1] token, ARGV[2] wake-up channel (the key is the message)
//	returns 1 released, 0 no lease (expired or deleted), -1 held by another
var releaseScript = redis.NewScript(`
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], KEYS[1])
  return 1
end
if holder then return -1 end
return 0
`)

// handoffScript passes a lease from its holder straight to the next one.
//
//	KEYS[1] lock key, KEYS[2] fence counter of the lock's slot
//	ARGV[1] holder's token, ARGV[2] next holder's token, ARGV[3] its ttl in ms
//	returns {1, next holder's fence} (also when a resent call finds the
//	        hand-off done), {0, 0} no lease, {0, -1} held by another
//
// The holder == ARGV[2] branch is only ever a resend of this same call: a
// releaser never hands to a waiter whose token may already be in Redis (see
// Lock.handOff). The counter's value it returns is a valid fence, as in
// acquireScript's resend branch.
var handoffScript = redis.NewScript(`
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return {1, redis.call('INCR', KEYS[2])}
end
if holder == ARGV[2] then
  return {1, tonumber(redis.call('GET', KEYS[2]))}
end
if holder then return {0, -1} end
return {0, 0}
`)

// renewScript extends every lease in the batch that is still ours.
//
//	KEYS[i] lock key i
//	ARGV[2i-1] token i, ARGV[2i] new ttl i in milliseconds
//	returns one code per key: 1 renewed, 0 no lease, -1 held by another
var renewScript = redis.NewScript(`
local codes = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder == ARGV[2*i-1] then
    redis.call('PEXPIRE', key, ARGV[2*i])
    codes[i] = 1
  elseif holder then
    codes[i] = -1
  else
    codes[i] = 0
  end
end
return codes
`)

// pttlScript reads the remaining lease time if the lease is ours.
//
//	KEYS[1] lock key
//	ARGV[1] token
//	returns remaining milliseconds, or -3 when the lease is not ours
var pttlScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PTTL', KEYS[1])
end
return -3
`)

// scriptCall is one call of a script: its keys and arguments.
type scriptCall struct {
	keys []string
	args []any
}

// runAll sends calls of one script, and any extra commands, in one round
// trip (a pipeline when there are several). Calls that Redis refused with
// NOSCRIPT (a fresh server, SCRIPT FLUSH, a node of a cluster that has not
// seen the script) did not run: after loading the script, only those are
// sent again, so no call runs twice.
func runAll(ctx context.Context, c redis.UniversalClient, s *redis.Script, calls []scriptCall, extra ...func(redis.Pipeliner)) []*redis.Cmd {
	if len(calls) == 1 && len(extra) == 0 {
		return []*redis.Cmd{s.Run(ctx, c, calls[0].keys, calls[0].args...)}
	}
	cmds := make([]*redis.Cmd, len(calls))
	_, _ = c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, call := range calls {
			cmds[i] = s.EvalSha(ctx, p, call.keys, call.args...)
		}
		for _, f := range extra {
			f(p)
		}
		return nil
	})
	var refused []int
	for i, cmd := range cmds {
		if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
			refused = append(refused, i)
		}
	}
	if len(refused) == 0 || s.Load(ctx, c).Err() != nil {
		return cmds
	}
	_, _ = c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, i := range refused {
			cmds[i] = s.EvalSha(ctx, p, calls[i].keys, calls[i].args...)
		}
		for _, f := range extra { // a wake-up must follow the work it announces
			f(p)
		}
		return nil
	})
	return cmds
}

// fenceScript raises a fence counter to a value a quorum lock handed out,
// so that every later quorum, which shares a node with this one, counts on
// from above it.
//
//	KEYS[1] fence counter
//	ARGV[1] fence
//	returns the counter afterwards
var fenceScript = redis.NewScript(`
local f = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') < f then
  redis.call('SET', KEYS[1], ARGV[1])
  return f
end
return tonumber(redis.call('GET', KEYS[1]))
`)
