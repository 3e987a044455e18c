-- Publishes messages to every subscription of a topic, all or none, and
-- to its live listeners.
--
-- KEYS[1] VERSION: a random value set anew by every change to SUBS (a
--         counter could repeat an old value after Redis lost writes)
-- KEYS[2] SUBS: set of subscription names
-- KEYS[3] PAYLOADS: hash of payloads stored once (see lua/queue.lua)
-- KEYS[4] DONE: sorted set of request tokens done (ms)
-- KEYS[5] UNIQUE: sorted set of ids WithUniqueFor keeps taken -> when
--         they become free (ms)
-- KEYS[6...] per subscription, in the caller's order: READY, DELAYED,
--         MESSAGES, MARKER
-- ARGV[1] the VERSION the caller's KEYS were built for
-- ARGV[2] request token
-- ARGV[3] delay in ms (0: ready now)
-- ARGV[4] how long each id stays taken, in ms (0: while live only; -1:
--         the ids are random, so none can be taken)
-- ARGV[5] "PUBLISH" or "SPUBLISH"
-- ARGV[6] listeners' channel
-- ARGV[7...] pairs id, payload
-- returns {1, n...}: n per message, how many subscriptions took it (-1: a
--         resend found the call done; -2: UNIQUE keeps its id taken);
--         {0, version, names...} when the caller's subscriptions are stale:
--         nothing was written
local VERSION, SUBS, PAYLOADS, DONE, UNIQUE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local FIRST = 7 -- the first message's ARGV
local reply = {1}
-- Before the version: a resend that arrives after the subscriptions
-- changed still finds its first run done. (A call refused as stale wrote
-- nothing, so the caller may send it again with a new token.)
if redis.call('ZSCORE', DONE, ARGV[2]) then
  for i = FIRST, #ARGV, 2 do reply[#reply + 1] = -1 end
  return reply
end
local version = redis.call('GET', VERSION) or '0'
if version ~= ARGV[1] then
  reply = redis.call('SMEMBERS', SUBS)
  table.insert(reply, 1, version)
  table.insert(reply, 1, 0)
  return reply
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local delay, unique = tonumber(ARGV[3]), tonumber(ARGV[4])
local nsubs = (#KEYS - 5) / 4
if unique > 0 then redis.call('ZREMRANGEBYSCORE', UNIQUE, '-inf', now) end
local ready, added, wrote = {}, {}, false
for s = 1, nsubs do ready[s], added[s] = {}, 0 end
for i = FIRST, #ARGV, 2 do
  local id, payload = ARGV[i], ARGV[i + 1]
  local took = 0
  local free = unique >= 0 and redis.call('ZSCORE', UNIQUE, id)
  if free and tonumber(free) > now then
    took = -2
  elseif nsubs > 0 then
    local ref = redis.call('HINCRBY', PAYLOADS, 'seq', 1)
    for s = 1, nsubs do
      local k = 5 + (s - 1) * 4
      if redis.call('HSETNX', KEYS[k + 3], 'p' .. id, ref) == 1 then
        took = took + 1
        added[s] = added[s] + 1
        if delay > 0 then
          redis.call('ZADD', KEYS[k + 2], now + delay, id)
        else
          local r = ready[s]
          r[#r + 1] = id
        end
      end
    end
    if took > 0 then redis.call('HSET', PAYLOADS, 'p' .. ref, payload, 'n' .. ref, took) end
  end
  -- Sent whether or not anyone listens: PUBSUB NUMSUB counts only this
  -- node's listeners, not those on its replicas.
  if took > 0 or (nsubs == 0 and took == 0) then
    wrote = true
    if unique > 0 then redis.call('ZADD', UNIQUE, now + unique, id) end
    redis.call(ARGV[5], ARGV[6], string.format('%d:', #id) .. id .. payload)
  end
  reply[#reply + 1] = took
end
for s = 1, nsubs do
  local k = 5 + (s - 1) * 4
  if #ready[s] > 0 then
    redis.call('RPUSH', KEYS[k + 1], unpack(ready[s]))
    redis.call('ZADD', KEYS[k + 4], 0, 'm')
  end
  -- The subscription's total, as lua/queue.lua's ENQUEUED.
  if added[s] > 0 then redis.call('HINCRBY', KEYS[k + 3], '#enqueued', added[s]) end
end
-- Only a call that did something is remembered: a resend of one that
-- found every id live must report the duplicates again.
if wrote and unique > 0 and redis.call('PTTL', UNIQUE) < unique then
  redis.call('PEXPIRE', UNIQUE, unique)
end
if wrote then
  redis.call('ZREMRANGEBYSCORE', DONE, '-inf', now - DONE_MEMORY)
  redis.call('ZADD', DONE, now, ARGV[2])
  redis.call('PEXPIRE', DONE, DONE_MEMORY)
end
return reply
