-- Takes a shared lease on a lock if it fits: the lock is free or held by
-- shared leases, fewer than the limit, and no waiter is queued (an
-- exclusive waiter holds back new shared leases, so a stream of them cannot
-- starve it). Otherwise a waiter joins the queue in the same call.
--
-- KEYS as in lock.lua
-- ARGV[1] token
-- ARGV[2] ttl in ms
-- ARGV[3] the most shared leases the lock may have with this one, 0: any
-- ARGV[4] the waiter's queue entry (see lock.lua), or "" not to queue
-- ARGV[5] PUBLISH, or SPUBLISH on a Redis Cluster
-- returns the fence (at least 1) when the lease is ours: the counter's
--         value, at least every earlier lease's fence on this name, and
--         every later exclusive lease counts above it. A call resent after
--         a lost reply, or after a grant to us whose notice is late, finds
--         our lease, sets the ttl from now and answers so again.
--         Otherwise -3 - pttl as lock_acquire.lua: pttl is -2 when we are
--         queued (ZADD NX keeps a resent call's place), else how long until
--         the lock may change: the exclusive holder's remaining ms, or the
--         earliest shared lease's (-1: no TTL).
--
-- Waiters queued ahead are let in first (admit): they may fit now that
-- shared leases ended, or a dead exclusive waiter may hold them back.
local token, ttl, limit, entry = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local self = nil
if entry ~= '' then self = entry end
local t = now()
local holder = redis.call('GET', LOCK)
local state, count = 'held', 0
if not holder then
  state = 'free'
elseif holder == '' then
  local ends = redis.call('ZSCORE', SHARED, token)
  if ends and tonumber(ends) > t then
    keep(token, ttl, t)
    return current()
  end
  state, count = sharedState(t)
end
local queued = state ~= 'held' and redis.call('EXISTS', WAITERS) == 1
if queued then
  local fence, more
  fence, more, state, count = admit(state, count, nil, ARGV[5], self, ttl, t)
  if fence then return fence end
  queued = redis.call('EXISTS', WAITERS) == 1
end
if not queued and fits(limit, state, count) then
  redis.call('ZADD', SHARED, t + ttl, token)
  if state == 'free' then
    redis.call('SET', LOCK, '', 'PX', ttl) -- the only live one
    redis.call('PEXPIRE', SHARED, ttl)
  else
    cover(t)
  end
  return current()
end
if self then
  redis.call('ZADD', WAITERS, 'NX', redis.call('INCR', FENCE), self)
  return -1
end
return -3 - wake(state, t)
