-- Ends a lease if it is ours: the lock passes to the oldest waiter still
-- listening (grant, lock.lua), or is deleted when none waits, without a
-- PUBLISH. A waiter that gives up calls it too, with its entry: it leaves
-- the queue, and a lease granted to it meanwhile passes on.
--
-- KEYS as in lock.lua
-- ARGV[1] token
-- ARGV[2] the lease's fence
-- ARGV[3] PUBLISH, or SPUBLISH on a Redis Cluster
-- ARGV[4] the caller's queue entry to remove, or ""
-- returns 1 released, 0 no lease (expired or deleted), -1 held by another
--
-- A resend after a lost reply finds the lease gone or passed on, and says
-- so: the caller cannot tell that from a lease it lost.
if ARGV[4] ~= '' then redis.call('ZREM', WAITERS, ARGV[4]) end
local holder = redis.call('GET', LOCK)
if holder ~= ARGV[1] then
  if holder then return -1 end
  return 0
end
-- A fence of 0 is a lease whose fence its holder never learned (a waiter
-- that gives up just as the lock reaches it): count one.
local floor = tonumber(ARGV[2])
if floor == 0 then floor = nil end
if not grant(floor, ARGV[3]) then
  redis.call('DEL', LOCK)
end
return 1
