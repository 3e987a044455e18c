-- Ends a lease if it is ours, exclusive or shared: the waiters it makes
-- room for get the lock (admit, lock.lua); a lock left free is deleted,
-- without a PUBLISH. A waiter that gives up calls it too, with its entry:
-- it leaves the queue, and a lease granted to it meanwhile passes on.
--
-- KEYS as in lock.lua
-- ARGV[1] token
-- ARGV[2] the lease's fence (exclusive leases; 0 when its holder never
--         learned it: a waiter that gives up just as the lock reaches it)
-- ARGV[3] PUBLISH, or SPUBLISH on a Redis Cluster
-- ARGV[4] the caller's queue entry to remove, or ""
-- returns 1 released, 0 no lease (expired or deleted), -1 held by another
--
-- A resend after a lost reply finds the lease gone or passed on, and says
-- so: the caller cannot tell that from a lease it lost.
if ARGV[4] ~= '' then redis.call('ZREM', WAITERS, ARGV[4]) end
local holder = redis.call('GET', LOCK)
if holder == ARGV[1] then
  local floor = tonumber(ARGV[2])
  if floor == 0 then floor = nil end
  local _, _, state = admit('free', 0, floor, ARGV[3])
  if state == 'free' then redis.call('DEL', LOCK) end
  return 1
elseif holder ~= '' then
  if holder then return -1 end
  return 0
end
local t = now()
local ends = redis.call('ZSCORE', SHARED, ARGV[1])
if not ends then return 0 end
redis.call('ZREM', SHARED, ARGV[1])
if tonumber(ends) <= t then return 0 end
local state, count = 'free', 0
local last = redis.call('ZRANGE', SHARED, -1, -1, 'WITHSCORES')
if #last > 0 and tonumber(last[2]) > t then
  state, count = 'shared', shares(t)
else
  redis.call('DEL', LOCK) -- that was the last live shared lease
end
admit(state, count, nil, ARGV[3], nil, nil, t)
return 1
