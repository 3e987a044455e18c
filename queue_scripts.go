package redlease

import "github.com/redis/go-redis/v9"

// Queue scripts all take the same keys, which share the {queue} hash tag:
//
//	KEYS[1] ready    list of ids, claimed from the head
//	KEYS[2] delayed  sorted set: id -> due time (ms, Redis clock)
//	KEYS[3] inflight sorted set: id -> claim deadline (ms, Redis clock)
//	KEYS[4] messages hash: "p"..id -> payload, "s"..id -> state
//	KEYS[5] dead     list of dead letters "attempts:len(id):" .. id .. payload
//	KEYS[6] marker   sorted set with at most one member: "there may be work"
//	KEYS[7] reaper   string: held while one consumer reaps
//
// A message's state is "attempts" while it waits and
// "attempts:deadline:token" while it is claimed; the deadline is also its
// score in inflight. Times come from Redis TIME, never the client's clock.
const queueLua = `
local function nowms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- holder checks a claim: 1, attempts, now when token holds a live claim on
-- id; 0 when the claim expired (or the message is gone); -1 when another
-- consumer holds it.
local function holder(id, token)
  local s = redis.call('HGET', KEYS[4], 's' .. id)
  if not s then return 0 end
  local attempts, deadline, tok = string.match(s, '^(%d+):(%d+):(.+)$')
  if not tok then return 0 end
  if tok ~= token then return -1 end
  local now = nowms()
  if tonumber(deadline) <= now then return 0 end
  return 1, tonumber(attempts), now
end

-- bury moves a message to the dead-letter list and frees its id.
local function bury(id, attempts)
  local p = redis.call('HGET', KEYS[4], 'p' .. id) or ''
  redis.call('RPUSH', KEYS[5], string.format('%d:%d:', attempts, #id) .. id .. p)
  redis.call('HDEL', KEYS[4], 'p' .. id, 's' .. id)
end

-- promote makes up to n due delayed messages ready; returns how many.
local function promote(now, n)
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, n)
  if #due > 0 then
    redis.call('ZREM', KEYS[2], unpack(due))
    redis.call('RPUSH', KEYS[1], unpack(due))
  end
  return #due
end

-- claim pops the next ready message and claims it for lease ms with token;
-- see claimScript for the reply.
local function claim(now, lease, token)
  for _ = 1, 100 do
    local id = redis.call('LPOP', KEYS[1])
    if not id then
      if promote(now, 100) == 0 then
        redis.call('DEL', KEYS[6]) -- no work: a stale marker would wake a consumer for nothing
        local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
        if #nxt == 0 then return {0, -1} end
        return {0, math.max(tonumber(nxt[2]) - now, 1)}
      end
      id = redis.call('LPOP', KEYS[1])
    end
    local m = redis.call('HMGET', KEYS[4], 'p' .. id, 's' .. id)
    if m[1] then
      local attempt = (tonumber(m[2]) or 0) + 1
      local deadline = now + tonumber(lease)
      redis.call('HSET', KEYS[4], 's' .. id, string.format('%d:%d:', attempt, deadline) .. token)
      redis.call('ZADD', KEYS[3], deadline, id)
      -- While work remains, wake another blocked consumer; else none.
      if redis.call('LLEN', KEYS[1]) > 0 then
        redis.call('ZADD', KEYS[6], 0, 'm')
      else
        redis.call('DEL', KEYS[6])
      end
      return {1, id, m[1], attempt, deadline}
    end
    redis.call('HDEL', KEYS[4], 's' .. id) -- an id without a payload: drop it
  end
  return {0, 1}
end
`

// enqueueScript adds messages whose id is not live.
//
//	ARGV[1] delay in ms (0: ready now), then pairs id, payload (at most 1000)
//	returns one code per message: 1 added, 0 duplicate id (nothing added)
var enqueueScript = redis.NewScript(queueLua + `
local delay = tonumber(ARGV[1])
local due = 0
if delay > 0 then due = nowms() + delay end
local codes, ready = {}, {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HSETNX', KEYS[4], 'p' .. id, ARGV[i + 1]) == 1 then
    if delay > 0 then redis.call('ZADD', KEYS[2], due, id) else ready[#ready + 1] = id end
    codes[#codes + 1] = 1
  else
    codes[#codes + 1] = 0
  end
end
if #ready > 0 then
  redis.call('RPUSH', KEYS[1], unpack(ready))
  redis.call('ZADD', KEYS[6], 0, 'm')
end
return codes
`)

// claimScript claims the next ready message under a new lease. Due delayed
// messages are promoted when nothing is ready.
//
//	ARGV[1] lease in ms, ARGV[2] claim token
//	returns {1, id, payload, attempt, lease deadline in ms} on success,
//	        {0, ms until the next delayed message is due, or -1} when empty
var claimScript = redis.NewScript(queueLua + `
return claim(nowms(), ARGV[1], ARGV[2])
`)

// ackClaimScript acks one claim and claims the next message in one round
// trip, as a busy consumer wants.
//
//	ARGV[1] id, ARGV[2] claim token: as ackScript
//	ARGV[3] lease in ms, ARGV[4] new claim token: as claimScript
//	returns ackScript's code followed by claimScript's reply
var ackClaimScript = redis.NewScript(queueLua + `
local code, _, now = holder(ARGV[1], ARGV[2])
if code == 1 then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('HDEL', KEYS[4], 'p' .. ARGV[1], 's' .. ARGV[1])
end
local reply = claim(now or nowms(), ARGV[3], ARGV[4])
table.insert(reply, 1, code)
return reply
`)

// ackScript ends a claim by deleting the message.
//
//	ARGV[1] id, ARGV[2] claim token
//	returns 1 acked, 0 lease expired, -1 claimed by another
var ackScript = redis.NewScript(queueLua + ackLua)

const ackLua = `
local code = holder(ARGV[1], ARGV[2])
if code ~= 1 then return code end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], 'p' .. ARGV[1], 's' .. ARGV[1])
return 1
`

// nackScript ends a claim by scheduling a retry, or dead-lettering the
// message when its attempts are used up.
//
//	ARGV[1] id, ARGV[2] claim token, ARGV[3] retry delay in ms, ARGV[4] max attempts
//	returns 1 retried, 2 dead-lettered, 0 lease expired, -1 claimed by another
var nackScript = redis.NewScript(queueLua + `
local code, attempts, now = holder(ARGV[1], ARGV[2])
if code ~= 1 then return code end
redis.call('ZREM', KEYS[3], ARGV[1])
if attempts >= tonumber(ARGV[4]) then
  bury(ARGV[1], attempts)
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

// extendScript renews claims that are still live.
//
//	ARGV: triples id, claim token, new lease in ms (at most 100)
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
// list when their attempts are used up; it also promotes due delayed
// messages. It reads at most ARGV[2] claims, oldest deadline first.
//
//	ARGV[1] max attempts, ARGV[2] batch size,
//	ARGV[3] guard in ms (0: none), ARGV[4] guard token
//	returns {returned to ready, dead-lettered, promoted},
//	        or {-1} when another consumer holds the guard
var reclaimScript = redis.NewScript(queueLua + `
local guard = tonumber(ARGV[3])
if guard > 0 and not redis.call('SET', KEYS[7], ARGV[4], 'NX', 'PX', guard) then
  return {-1}
end
local now = nowms()
local max = tonumber(ARGV[1])
local back, dead = 0, 0
local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local s = redis.call('HGET', KEYS[4], 's' .. id)
  local attempts, deadline = string.match(s or '', '^(%d+):(%d+):')
  if not attempts then
    redis.call('ZREM', KEYS[3], id) -- no claim behind it
  elseif tonumber(deadline) <= now then -- the lease is gone
    redis.call('ZREM', KEYS[3], id)
    attempts = tonumber(attempts)
    if attempts >= max then
      bury(id, attempts)
      dead = dead + 1
    else
      redis.call('HSET', KEYS[4], 's' .. id, attempts)
      redis.call('RPUSH', KEYS[1], id)
      back = back + 1
    end
  else
    redis.call('ZADD', KEYS[3], deadline, id) -- renewed: resync its score
  end
end
local promoted = promote(now, tonumber(ARGV[2]))
if back + promoted > 0 then redis.call('ZADD', KEYS[6], 0, 'm') end
return {back, dead, promoted}
`)
