-- A queued waiter's check, made when no grant notice came in time: it finds
-- a grant whose notice was lost, queues the waiter again if it was skipped
-- (its Locker was not listening), and lets waiters in that fit since a
-- lease ended (expired, or its holder crashed).
--
-- KEYS as in lock.lua
-- ARGV[1] token
-- ARGV[2] ttl in ms
-- ARGV[3] the waiter's queue entry
-- ARGV[4] PUBLISH, or SPUBLISH on a Redis Cluster
-- ARGV[5] "1" to take a lease found granted to us, "" to wait for its notice
-- returns {1, fence, missed} when the lease is ours; {2, pttl, 0} when it
--         was granted to us and its notice should be on its way;
--         {0, pttl, missed} while we wait: the lock's remaining ms (-1 if
--         no TTL; 0: check again soon). missed is 1 when a grant to us went
--         unheard, or we had been skipped as not listening and are queued
--         again (at the back).
--
-- The notice carries the grant's fence, most often an exclusive waiter's
-- ticket: taking the lease here counts a fence instead, valid as in
-- lock_acquire.lua, but above the tickets of the waiters queued behind, so
-- each of their grants counts one too until the queue empties. Hence a
-- first check leaves a grant it finds to the notice. A shared lease's
-- fence is the counter's value either way.
local token, ttl, entry = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local _, limit = parse(entry)
local holder = redis.call('GET', LOCK)
if holder == token then
  if ARGV[5] ~= '1' then return {2, redis.call('PTTL', LOCK), 0} end
  redis.call('PEXPIRE', LOCK, ttl)
  return {1, redis.call('INCR', FENCE), 1}
end
local state, count, t = 'held', 0, nil
if not holder then
  state = 'free'
elseif holder == '' then
  t = now()
  local ends = redis.call('ZSCORE', SHARED, token)
  if ends and tonumber(ends) > t then
    if ARGV[5] ~= '1' then return {2, tonumber(ends) - t, 0} end
    keep(token, ttl, t)
    return {1, current(), 1}
  end
  state, count = sharedState(t)
end
if state ~= 'held' then
  local fence, more
  fence, more, state, count = admit(state, count, nil, ARGV[4], entry, ttl, t)
  if fence then return {1, fence, 0} end
  if more then return {0, 0, 0} end -- waiters left to skip or let in: check again soon
end
local missed = 0
if not redis.call('ZSCORE', WAITERS, entry) then
  -- Skipped while our Locker was not listening: it missed the release.
  missed = 1
  if fits(limit, state, count) and redis.call('EXISTS', WAITERS) == 0 then
    if limit == '' then
      redis.call('SET', LOCK, token, 'PX', ttl)
      return {1, redis.call('INCR', FENCE), 1}
    end
    keep(token, ttl, t or now())
    return {1, current(), 1}
  end
  redis.call('ZADD', WAITERS, redis.call('INCR', FENCE), entry)
end
redis.call('PEXPIRE', WAITERS, QUEUE_IDLE)
if limit == '' then return {0, math.max(redis.call('PTTL', LOCK), -1), missed} end
return {0, wake(state, t), missed}
