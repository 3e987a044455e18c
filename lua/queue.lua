-- The prelude of every queue script: the shard's keys by name, and the
-- steps the scripts share. scripts.go puts `local DONE_MEMORY = <ms>`
-- before it and a script's own body after it.
--
-- KEYS are one shard's keys, in the order of shard.keys (shard.go); they
-- share one {hash tag}. A message's state is "attempts" while it waits and
-- "attempts:deadline:token" while it is claimed; the deadline is also its
-- score in INFLIGHT. Times come from Redis TIME, never the client's clock.
--
-- A dead letter is id in DEAD, scored by when it died (ms), and its body
-- in MESSAGES's "d"..id: "attempts:died-at-ms:len(err):" err payload
-- (decodeDeadLetter). Its id is free: a live message may share it.
--
-- UNIQUE holds the ids WithUniqueFor keeps taken, scored by when they
-- become free (ms).
--
-- A topic's subscription has a tenth key, PAYLOADS, the topic's hash of
-- payloads stored once for all its subscriptions: there MESSAGES's "p"..id
-- holds a reference r, PAYLOADS's "p"..r the payload and "n"..r how many
-- "p" fields refer to it. Whatever deletes a "p" field calls unref.
local READY, DELAYED, INFLIGHT, MESSAGES = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local DEAD, MARKER, RECLAIMER, DONE = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local UNIQUE, PAYLOADS = KEYS[9], KEYS[10]

-- MESSAGES's fields that count, for Stats, what the shard has done since
-- its first message; no message field starts with '#'.
local ENQUEUED, ACKED_N, NACKED_N, DEAD_N = '#enqueued', '#acked', '#nacked', '#dead'

-- Claim codes, as in scripts.go.
local OK, GONE, TAKEN, BURIED = 1, 0, -1, 2

-- Bounds on one call's work: stale INFLIGHT entries dropped while looking
-- for an expired claim, ids without a payload skipped by a claim, and
-- the oldest dead letters dropped past the limit by one new one (a lowered
-- limit is reached over the next few).
local MAX_STALE, MAX_SKIPPED, MAX_TRIM = 10, 100, 100

-- Lua's unpack takes at most about 8,000 values: longer lists go in parts.
local UNPACK_MAX = 1000

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

-- holder checks a claim: OK, attempts, now and (in a subscription) the
-- payload's reference when token holds a live claim on id; GONE when the
-- claim expired (or the message is gone); TAKEN when another consumer
-- holds it.
local function holder(id, token)
  local state, ref
  if PAYLOADS then
    local m = redis.call('HMGET', MESSAGES, 's' .. id, 'p' .. id)
    state, ref = m[1], m[2]
  else
    state = redis.call('HGET', MESSAGES, 's' .. id)
  end
  local attempts, deadline, tok = parse(state)
  if not tok then return GONE end
  if tok ~= token then return TAKEN end
  local now = nowms()
  if deadline <= now then return GONE end
  return OK, attempts, now, ref
end

-- Done requests ("e" .. enqueue token, "c" .. claim token) are scored by
-- when they were done, in ms, times 2, plus 1 for a nack: one member per
-- claim tells an ack from a nack.
local ACKED, NACKED = 0, 1

-- doneAs returns how an earlier run of this request ended (ACKED or
-- NACKED; ACKED for an enqueue), or nil: this run is not a resend.
local function doneAs(request)
  local s = redis.call('ZSCORE', DONE, request)
  if not s then return nil end
  return tonumber(s) % 2
end

-- remember records a request as done; the set lives while it is fed.
local function remember(request, now, kind)
  redis.call('ZADD', DONE, now * 2 + kind, request)
  redis.call('PEXPIRE', DONE, DONE_MEMORY)
end

-- forget drops requests done longer ago than DONE_MEMORY. It runs on every
-- enqueue, reclaim and empty claim rather than on every ack, which keeps
-- the busy path short.
local function forget(now)
  redis.call('ZREMRANGEBYSCORE', DONE, '-inf', (now - DONE_MEMORY) * 2)
end

-- payloadOf turns a "p" field's value into the payload (nil if missing).
local function payloadOf(v)
  if v and PAYLOADS then return redis.call('HGET', PAYLOADS, 'p' .. v) end
  return v
end

-- store adds payload under id unless the id is live: true if added.
local function store(id, payload)
  if not PAYLOADS then return redis.call('HSETNX', MESSAGES, 'p' .. id, payload) == 1 end
  if redis.call('HEXISTS', MESSAGES, 'p' .. id) == 1 then return false end
  local ref = redis.call('HINCRBY', PAYLOADS, 'seq', 1)
  redis.call('HSET', PAYLOADS, 'p' .. ref, payload, 'n' .. ref, 1)
  redis.call('HSET', MESSAGES, 'p' .. id, ref)
  return true
end

-- taken says whether WithUniqueFor keeps id taken at now.
local function taken(id, now)
  local free = redis.call('ZSCORE', UNIQUE, id)
  return free ~= false and tonumber(free) > now
end

-- unref drops one reference to a stored payload, given the value of the
-- "p" field being deleted, and deletes the payload with its last one.
local function unref(v)
  if v and PAYLOADS and redis.call('HINCRBY', PAYLOADS, 'n' .. v, -1) <= 0 then
    redis.call('HDEL', PAYLOADS, 'p' .. v, 'n' .. v)
  end
end

-- drop deletes id's payload and state.
local function drop(id)
  if PAYLOADS then unref(redis.call('HGET', MESSAGES, 'p' .. id)) end
  redis.call('HDEL', MESSAGES, 'p' .. id, 's' .. id)
end

-- release ends the claim of token on id (the message stays).
local function release(id, token)
  redis.call('ZREM', INFLIGHT, id)
  redis.call('HDEL', MESSAGES, 'c' .. token)
end

-- bury dead-letters a message, with the handler's error err (or ''),
-- and frees its id; an older dead letter with the same id is replaced.
-- Past limit dead letters, the oldest go.
local function bury(id, attempts, now, err, limit)
  -- First the write that fails if DEAD is not a sorted set (a script
  -- that fails keeps what it wrote).
  redis.call('ZADD', DEAD, now, id)
  redis.call('HINCRBY', MESSAGES, DEAD_N, 1)
  local p = payloadOf(redis.call('HGET', MESSAGES, 'p' .. id)) or ''
  redis.call('HSET', MESSAGES, 'd' .. id, string.format('%d:%d:%d:', attempts, now, #err) .. err .. p)
  drop(id)
  local over = redis.call('ZCARD', DEAD) - limit
  if over > 0 then
    local old = redis.call('ZPOPMIN', DEAD, math.min(over, MAX_TRIM))
    for i = 1, #old, 2 do redis.call('HDEL', MESSAGES, 'd' .. old[i]) end
  end
end

-- expired returns the id of a claim whose lease has ended, if any, and
-- drops INFLIGHT entries that no longer match a claim.
local function expired(now)
  for _ = 1, MAX_STALE do
    local e = redis.call('ZRANGEBYSCORE', INFLIGHT, '-inf', now, 'LIMIT', 0, 1)
    if #e == 0 then return nil end
    local attempts, deadline, tok = parse(redis.call('HGET', MESSAGES, 's' .. e[1]))
    if not tok then
      redis.call('ZREM', INFLIGHT, e[1])
    elseif deadline <= now then
      return e[1], attempts, tok
    else
      redis.call('ZADD', INFLIGHT, deadline, e[1]) -- renewed: resync its score
    end
  end
  return nil
end

-- reclaimOne gives an expired claim back: to READY, or dead when its
-- attempts are used up. Returns OK given back, BURIED dead-lettered.
local function reclaimOne(id, attempts, tok, now, max, limit)
  release(id, tok)
  if attempts >= max then
    bury(id, attempts, now, '', limit)
    return BURIED
  end
  redis.call('HSET', MESSAGES, 's' .. id, attempts)
  redis.call('RPUSH', READY, id)
  return OK
end

-- due returns the id of a delayed message that is due, if any.
local function due(now)
  local d = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, 1)
  if #d == 0 then return nil end
  redis.call('ZREM', DELAYED, d[1])
  return d[1]
end

-- nextDue is {0, ms until the next delayed message is due, or -1}: the
-- reply of a claim or peek that found no work now.
local function nextDue(now)
  local nxt = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
  if #nxt == 0 then return {0, -1} end
  return {0, math.max(tonumber(nxt[2]) - now, 1)}
end

-- claim claims the next message for lease ms with token: a due delayed
-- message first (due retries are served before the ready backlog), then
-- the head of READY, then an expired claim; see queue_claim.lua for the
-- reply, which ends with how many expired claims on their last attempt
-- it dead-lettered on the way. max and limit are the queue's attempts and
-- dead letters.
local function claim(now, lease, token, max, limit)
  local buried = 0
  local function reply(r)
    r[#r + 1] = buried
    return r
  end
  local prev = redis.call('HGET', MESSAGES, 'c' .. token)
  if prev then
    -- A resend: answer with the claim the first run made.
    local attempts, deadline, tok = parse(redis.call('HGET', MESSAGES, 's' .. prev))
    if tok == token then
      return reply({1, prev, payloadOf(redis.call('HGET', MESSAGES, 'p' .. prev)), attempts, deadline})
    end
    redis.call('HDEL', MESSAGES, 'c' .. token)
  elseif doneAs('c' .. token) then
    -- The first run arriving after its resend's claim was settled: its
    -- reply reaches nobody, so it must claim nothing.
    return reply({0, -1})
  end
  for _ = 1, MAX_SKIPPED do
    local id = due(now)
    local tookDue = id ~= nil
    id = id or redis.call('LPOP', READY)
    local attempts = nil
    if not id then
      local e, a, tok = expired(now)
      if not e then
        redis.call('DEL', MARKER) -- no work: a stale marker would wake a consumer for nothing
        forget(now)
        return reply(nextDue(now))
      end
      release(e, tok)
      if a >= max then
        bury(e, a, now, '', limit)
        buried = buried + 1
      else
        id, attempts = e, a
      end
    end
    if id then
      local m = redis.call('HMGET', MESSAGES, 'p' .. id, 's' .. id)
      local payload = payloadOf(m[1])
      if payload then
        local attempt = (attempts or tonumber(m[2]) or 0) + 1
        local deadline = now + tonumber(lease)
        redis.call('HSET', MESSAGES, 's' .. id, string.format('%d:%d:', attempt, deadline) .. token, 'c' .. token, id)
        redis.call('ZADD', INFLIGHT, deadline, id)
        -- While work remains, wake another blocked consumer; else none.
        -- (Nothing was due if this claim did not take a due message.)
        if tookDue or redis.call('LLEN', READY) > 0 then
          redis.call('ZADD', MARKER, 0, 'm')
        else
          redis.call('DEL', MARKER)
        end
        return reply({1, id, payload, attempt, deadline})
      end
      drop(id) -- an id without a payload: drop it
    end
  end
  return reply({0, 1})
end

-- ack deletes id claimed with token: OK (also when a resend finds it
-- acked), GONE or TAKEN; and the time it used.
local function ack(id, token)
  local code, _, now, ref = holder(id, token)
  if code ~= OK then
    if doneAs('c' .. token) == ACKED then return OK, nowms() end
    return code, nowms()
  end
  redis.call('ZREM', INFLIGHT, id)
  unref(ref)
  redis.call('HDEL', MESSAGES, 'p' .. id, 's' .. id, 'c' .. token)
  redis.call('HINCRBY', MESSAGES, ACKED_N, 1)
  remember('c' .. token, now, ACKED)
  return OK, now
end

-- A dead-letter request answers how many dead letters it moved: a resend
-- must answer the same. Its token "r"..token is remembered as any done
-- request, with "n"..token..":"..count at the same score.

-- doneCount returns what an earlier run of a dead-letter request
-- answered, or nil: this run is not a resend.
local function doneCount(token)
  local s = redis.call('ZSCORE', DONE, 'r' .. token)
  if not s then return nil end
  local prefix = 'n' .. token .. ':'
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', DONE, s, s)) do
    if string.sub(m, 1, #prefix) == prefix then return tonumber(string.sub(m, #prefix + 1)) end
  end
  return 0
end

-- rememberCount records a dead-letter request's answer.
local function rememberCount(token, now, count)
  remember('r' .. token, now, ACKED)
  remember('n' .. token .. ':' .. count, now, ACKED)
end

-- deadIDs is a dead-letter request's ids from ARGV[first] on, or, when
-- there are none, every dead letter's, oldest first.
local function deadIDs(first)
  if #ARGV < first then return redis.call('ZRANGE', DEAD, 0, -1) end
  local ids = {}
  for i = first, #ARGV do ids[#ids + 1] = ARGV[i] end
  return ids
end
