-- A queued waiter's check, made when no grant notice came in time: it finds
-- a grant whose notice was lost, queues the waiter again if it was skipped
-- (its Locker was not listening), and hands on a lock whose holder's lease
-- expired.
--
-- KEYS as in lock.lua
-- ARGV[1] token
-- ARGV[2] ttl in ms
-- ARGV[3] the waiter's queue entry
-- ARGV[4] PUBLISH, or SPUBLISH on a Redis Cluster
-- ARGV[5] "1" to take a lease found granted to us, "" to wait for its notice
-- returns {1, fence, missed} when the lease is ours; {2, pttl, 0} when it
--         was granted to us and its notice should be on its way;
--         {0, pttl, missed} while we wait: the holder's remaining ms (-1 if
--         no TTL). missed is 1 when a grant to us went unheard, or we had
--         been skipped as not listening and are queued again (at the back).
--
-- The notice carries the grant's fence, most often the waiter's ticket:
-- taking the lease here counts a fence instead, valid as in
-- lock_acquire.lua, but above the tickets of the waiters queued behind, so
-- each of their grants counts one too until the queue empties. Hence a
-- first check leaves a grant it finds to the notice.
local holder = redis.call('GET', LOCK)
if holder == ARGV[1] then
  if ARGV[5] ~= '1' then return {2, redis.call('PTTL', LOCK), 0} end
  redis.call('PEXPIRE', LOCK, ARGV[2])
  return {1, redis.call('INCR', FENCE), 1}
end
if holder then
  local missed = 0
  if not redis.call('ZSCORE', WAITERS, ARGV[3]) then
    redis.call('ZADD', WAITERS, redis.call('INCR', FENCE), ARGV[3])
    missed = 1
  end
  redis.call('PEXPIRE', WAITERS, QUEUE_IDLE)
  return {0, redis.call('PTTL', LOCK), missed}
end
-- Free: the holder's lease expired (or was deleted) with waiters queued.
local fence, ours = grant(nil, ARGV[4], ARGV[3], ARGV[2])
if fence then
  if ours then return {1, fence, 0} end
  return {0, redis.call('PTTL', LOCK), 0}
end
local exhausted = ours
if exhausted then return {0, 0, 0} end -- dead waiters left to skip: check again soon
-- Nobody listening is queued ahead of us: we had been skipped, so our
-- Locker missed the release.
local missed = 1 - redis.call('ZREM', WAITERS, ARGV[3])
redis.call('SET', LOCK, ARGV[1], 'PX', ARGV[2])
return {1, redis.call('INCR', FENCE), missed}
