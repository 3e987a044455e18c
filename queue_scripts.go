package redlease

import (
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The keys of one queue shard, in the order every queue script takes them
// (KEYS[i+1] is shardKeys[i]); they share one {hash tag}.
const (
	keyReady    = iota // list of ids, claimed from the head
	keyDelayed         // sorted set: id -> due time (ms, Redis clock)
	keyInflight        // sorted set: id -> claim deadline (ms, Redis clock)
	keyMessages        // hash: "p"..id -> payload, "s"..id -> state, "c"..token -> id of a live claim
	keyDead            // list of dead letters, oldest first (see encodeDead)
	keyMarker          // sorted set with at most one member: "there may be work"
	keyReaper          // string: held while one consumer reaps
	keyDone            // sorted set: request token -> when it was done (ms)
	shardKeyCount
)

// shardKeyNames are the key suffixes, indexed as above.
var shardKeyNames = [shardKeyCount]string{"ready", "delayed", "inflight", "messages", "dead", "marker", "reaper", "done"}

// doneMemory is how long a shard remembers the tokens of the enqueues and
// settled claims it has done, so that a request go-redis sends again after
// a lost reply finds its work done instead of doing it twice or reporting
// a false error. It outlasts go-redis's retries with default timeouts.
const doneMemory = 30 * time.Second

// Script codes shared by the queue scripts and their Go callers.
const (
	codeGone    = 0  // the claim expired, or the message is gone
	codeOK      = 1  // done (acked, retried, renewed, added)
	codeTaken   = -1 // another consumer holds the claim
	codeBuried  = 2  // nack: attempts used up, dead-lettered
	codeReaping = -1 // reclaim: another consumer holds the reaper guard
)

// queueLua is the prelude of every queue script. A message's state is
// "attempts" while it waits and "attempts:deadline:token" while it is
// claimed; the deadline is also its score in inflight. Times come from
// Redis TIME, never the client's clock.
var queueLua = `
local DONE_MEMORY = ` + strconv.FormatInt(doneMemory.Milliseconds(), 10) + `

local function nowms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- parse splits a claimed state into attempts, deadline, token.
local function parse(s)
  local attempts, deadline, tok = string.match(s or '', '^(%d+):(%d+):(.+)$')
  if not tok then return nil end
  return tonumber(attempts), tonumber(deadline), tok
end

-- holder checks a claim: 1, attempts, now when token holds a live claim on
-- id; 0 when the claim expired (or the message is gone); -1 when another
-- consumer holds it.
local function holder(id, token)
  local attempts, deadline, tok = parse(redis.call('HGET', KEYS[4], 's' .. id))
  if not tok then return 0 end
  if tok ~= token then return -1 end
  local now = nowms()
  if deadline <= now then return 0 end
  return 1, attempts, now
end

-- Done requests ("e" .. enqueue token, "c" .. claim token) are scored by
-- when they were done, in ms, times 2, plus 1 for a nack: one member per
-- claim tells an ack from a nack.
local ACKED, NACKED = 0, 1

-- doneAs returns how an earlier run of this request ended (ACKED or
-- NACKED; ACKED for an enqueue), or nil: this run is not a resend.
local function doneAs(request)
  local s = redis.call('ZSCORE', KEYS[8], request)
  if not s then return nil end
  return tonumber(s) % 2
end

-- remember records a request as done; the set lives while it is fed.
local function remember(request, now, kind)
  redis.call('ZADD', KEYS[8], now * 2 + kind, request)
  redis.call('PEXPIRE', KEYS[8], DONE_MEMORY)
end

-- forget drops requests done longer ago than DONE_MEMORY. It runs on every
-- enqueue, reclaim and empty claim rather than on every ack, which keeps
-- the busy path short.
local function forget(now)
  redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', (now - DONE_MEMORY) * 2)
end

-- release ends the claim of token on id (the message stays).
local function release(id, token)
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], 'c' .. token)
end

-- bury moves a message to the dead-letter list and frees its id.
local function bury(id, attempts, now)
  local p = redis.call('HGET', KEYS[4], 'p' .. id) or ''
  redis.call('RPUSH', KEYS[5], string.format('%d:%d:%d:', attempts, now, #id) .. id .. p)
  redis.call('HDEL', KEYS[4], 'p' .. id, 's' .. id)
end

-- expired returns the id of a claim whose lease has ended, if any, and
-- drops inflight entries that no longer match a claim.
local function expired(now)
  for _ = 1, 10 do
    local e = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1)
    if #e == 0 then return nil end
    local attempts, deadline, tok = parse(redis.call('HGET', KEYS[4], 's' .. e[1]))
    if not tok then
      redis.call('ZREM', KEYS[3], e[1])
    elseif deadline <= now then
      return e[1], attempts, tok
    else
      redis.call('ZADD', KEYS[3], deadline, e[1]) -- renewed: resync its score
    end
  end
  return nil
end

-- reclaimOne gives an expired claim back: to ready, or dead when its
-- attempts are used up. Returns 1 given back, 2 dead-lettered.
local function reclaimOne(id, attempts, tok, now, max)
  release(id, tok)
  if attempts >= max then
    bury(id, attempts, now)
    return 2
  end
  redis.call('HSET', KEYS[4], 's' .. id, attempts)
  redis.call('RPUSH', KEYS[1], id)
  return 1
end

-- due returns the id of a delayed message that is due, if any.
local function due(now)
  local d = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1)
  if #d == 0 then return nil end
  redis.call('ZREM', KEYS[2], d[1])
  return d[1]
end

-- workNow reports whether a claim could find ready or due work now.
local function workNow(now)
  return redis.call('LLEN', KEYS[1]) > 0
    or #redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1) > 0
end

-- claim claims the next message for lease ms with token: a due delayed
-- message first (due retries are served before the ready backlog), then
-- the head of ready, then an expired claim; see claimScript for the reply.
local function claim(now, lease, token, max)
  local prev = redis.call('HGET', KEYS[4], 'c' .. token)
  if prev then
    -- A resend: answer with the claim the first run made.
    local attempts, deadline, tok = parse(redis.call('HGET', KEYS[4], 's' .. prev))
    if tok == token then
      return {1, prev, redis.call('HGET', KEYS[4], 'p' .. prev), attempts, deadline}
    end
    redis.call('HDEL', KEYS[4], 'c' .. token)
  elseif doneAs('c' .. token) then
    -- The first run arriving after its resend's claim was settled: its
    -- reply reaches nobody, so it must claim nothing.
    return {0, -1}
  end
  for _ = 1, 100 do
    local id = due(now)
    local tookDue = id ~= nil
    id = id or redis.call('LPOP', KEYS[1])
    local attempts = nil
    if not id then
      local e, a, tok = expired(now)
      if not e then
        redis.call('DEL', KEYS[6]) -- no work: a stale marker would wake a consumer for nothing
        forget(now)
        local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
        if #nxt == 0 then return {0, -1} end
        return {0, math.max(tonumber(nxt[2]) - now, 1)}
      end
      release(e, tok)
      if a >= max then bury(e, a, now) else id, attempts = e, a end
    end
    if id then
      local m = redis.call('HMGET', KEYS[4], 'p' .. id, 's' .. id)
      if m[1] then
        local attempt = (attempts or tonumber(m[2]) or 0) + 1
        local deadline = now + tonumber(lease)
        redis.call('HSET', KEYS[4], 's' .. id, string.format('%d:%d:', attempt, deadline) .. token, 'c' .. token, id)
        redis.call('ZADD', KEYS[3], deadline, id)
        -- While work remains, wake another blocked consumer; else none.
        -- (Nothing was due if this claim did not take a due message.)
        if tookDue or redis.call('LLEN', KEYS[1]) > 0 then
          redis.call('ZADD', KEYS[6], 0, 'm')
        else
          redis.call('DEL', KEYS[6])
        end
        return {1, id, m[1], attempt, deadline}
      end
      redis.call('HDEL', KEYS[4], 's' .. id) -- an id without a payload: drop it
    end
  end
  return {0, 1}
end
`

// enqueueScript adds messages whose id is not live.
//
//	ARGV[1] delay in ms (0: ready now), ARGV[2] request token,
//	then pairs id, payload (at most enqueueChunk)
//	returns one code per message: 1 added, 0 duplicate id (nothing added).
//	A resend of a call that added messages finds its token and answers 1s.
var enqueueScript = redis.NewScript(queueLua + `
local n = (#ARGV - 2) / 2
local codes = {}
if doneAs('e' .. ARGV[2]) then
  for i = 1, n do codes[i] = 1 end
  return codes
end
local now = nowms()
local delay = tonumber(ARGV[1])
local ready, added = {}, 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HSETNX', KEYS[4], 'p' .. id, ARGV[i + 1]) == 1 then
    if delay > 0 then redis.call('ZADD', KEYS[2], now + delay, id) else ready[#ready + 1] = id end
    codes[#codes + 1] = 1
    added = added + 1
  else
    codes[#codes + 1] = 0
  end
end
if #ready > 0 then
  redis.call('RPUSH', KEYS[1], unpack(ready))
  redis.call('ZADD', KEYS[6], 0, 'm')
end
forget(now)
if added > 0 then remember('e' .. ARGV[2], now, ACKED) end
return codes
`)

// claimScript claims the next message under a new lease: a due delayed
// message, else the head of ready, else a claim whose lease has ended.
//
//	ARGV[1] lease in ms, ARGV[2] claim token, ARGV[3] max attempts
//	returns {1, id, payload, attempt, lease deadline in ms};
//	        a resend returns the first run's claim.
//	        {0, ms until the next delayed message is due, or -1} when empty
var claimScript = redis.NewScript(queueLua + `
return claim(nowms(), ARGV[1], ARGV[2], tonumber(ARGV[3]))
`)

// ackLua acks ARGV[1] claimed with token ARGV[2]: 1 acked (also when a
// resend finds it acked), 0 lease expired, -1 claimed by another.
const ackLua = `
local function ack(id, token)
  local code, _, now = holder(id, token)
  if code ~= 1 then
    if doneAs('c' .. token) == ACKED then return 1, nowms() end
    return code, nowms()
  end
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], 'p' .. id, 's' .. id, 'c' .. token)
  remember('c' .. token, now, ACKED)
  return 1, now
end
`

// ackScript ends a claim by deleting the message.
//
//	ARGV[1] id, ARGV[2] claim token
//	returns 1 acked, 0 lease expired, -1 claimed by another
var ackScript = redis.NewScript(queueLua + ackLua + `
local code = ack(ARGV[1], ARGV[2])
return code
`)

// ackClaimScript acks one claim and claims the next message in one round
// trip, as a busy consumer wants.
//
//	ARGV[1] id, ARGV[2] claim token: as ackScript
//	ARGV[3] lease in ms, ARGV[4] new claim token, ARGV[5] max attempts: as claimScript
//	returns ackScript's code followed by claimScript's reply
var ackClaimScript = redis.NewScript(queueLua + ackLua + `
local code, now = ack(ARGV[1], ARGV[2])
local reply = claim(now, ARGV[3], ARGV[4], tonumber(ARGV[5]))
table.insert(reply, 1, code)
return reply
`)

// nackScript ends a claim by scheduling a retry, or dead-lettering the
// message when its attempts are used up.
//
//	ARGV[1] id, ARGV[2] claim token, ARGV[3] retry delay in ms, ARGV[4] max attempts
//	returns 1 retried (also when a resend finds it done), 2 dead-lettered,
//	        0 lease expired, -1 claimed by another
var nackScript = redis.NewScript(queueLua + `
local code, attempts, now = holder(ARGV[1], ARGV[2])
if code ~= 1 then
  if doneAs('c' .. ARGV[2]) == NACKED then return 1 end
  return code
end
release(ARGV[1], ARGV[2])
remember('c' .. ARGV[2], now, NACKED)
if attempts >= tonumber(ARGV[4]) then
  bury(ARGV[1], attempts, now)
  return 2
end
redis.call('HSET', KEYS[4], 's' .. ARGV[1], attempts)
local delay = tonumber(ARGV[3])
if delay > 0 then
  redis.call('ZADD', KEYS[2], now + delay, ARGV[1])
else
  redis.call('RPUSH', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[6], 0, 'm')
end
return 1
`)

// extendScript renews claims that are still live. Running it twice only
// moves the deadlines a little later.
//
//	ARGV: triples id, claim token, new lease in ms (at most scriptBatch)
//	returns one code per claim: 1 renewed, 0 lease expired, -1 claimed by another
var extendScript = redis.NewScript(queueLua + `
local codes = {}
for i = 1, #ARGV, 3 do
  local id = ARGV[i]
  local code, attempts, now = holder(id, ARGV[i + 1])
  if code == 1 then
    local deadline = now + tonumber(ARGV[i + 2])
    redis.call('HSET', KEYS[4], 's' .. id, string.format('%d:%d:', attempts, deadline) .. ARGV[i + 1])
    redis.call('ZADD', KEYS[3], deadline, id)
  end
  codes[#codes + 1] = code
end
return codes
`)

// reclaimScript gives expired claims back: to ready, or to the dead-letter
// list when their attempts are used up. It handles at most ARGV[2] claims,
// oldest deadline first.
//
//	ARGV[1] max attempts, ARGV[2] batch size,
//	ARGV[3] guard in ms (0: none), ARGV[4] guard token
//	returns {returned to ready, dead-lettered},
//	        or {-1} when another consumer holds the guard
var reclaimScript = redis.NewScript(queueLua + `
local guard = tonumber(ARGV[3])
if guard > 0 and not redis.call('SET', KEYS[7], ARGV[4], 'NX', 'PX', guard) then
  return {-1}
end
local now = nowms()
forget(now)
local max = tonumber(ARGV[1])
local back, dead = 0, 0
for _ = 1, tonumber(ARGV[2]) do
  local id, attempts, tok = expired(now)
  if not id then break end
  if reclaimOne(id, attempts, tok, now, max) == 1 then back = back + 1 else dead = dead + 1 end
end
if back > 0 then redis.call('ZADD', KEYS[6], 0, 'm') end
return {back, dead}
`)

// peekScript tells, without changing anything, whether a claim would find
// work in the shard now, so that a sharded queue's empty poll costs one
// round trip however many shards it has.
//
//	returns {1 if work now else 0, ms until the next delayed message, or -1}
var peekScript = redis.NewScript(queueLua + `
local now = nowms()
if workNow(now) or #redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1) > 0 then
  return {1, 0}
end
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #nxt == 0 then return {0, -1} end
return {0, math.max(tonumber(nxt[2]) - now, 1)}
`)
