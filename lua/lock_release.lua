-- Ends a lease if it is ours, exclusive or shared: the waiters it makes
-- room for get the lock (admit, lock.lua); a lock left free is deleted,
-- without a PUBLISH. A waiter that gives up calls it too, with its entry:
-- it leaves the queue, a lease granted to it meanwhile passes on, and the
-- shared waiters it held back (an exclusive waiter) are let in.
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
--
-- The common case comes first, before lock.lua's prelude, whose functions
-- it does not need: our exclusive lease, nobody waiting.
local holder, head = redis.call('GET', KEYS[1]), nil
if holder == ARGV[1] and ARGV[4] == '' then
  head = redis.call('ZPOPMIN', KEYS[3])
  if #head == 0 then
    redis.call('DEL', KEYS[1])
    return 1
  end
end
-- prelude
local left = ARGV[4] ~= '' and redis.call('ZREM', WAITERS, ARGV[4]) == 1
if holder == ARGV[1] then
  local floor = tonumber(ARGV[2])
  if floor == 0 then floor = nil end
  local _, _, state = admit('free', 0, floor, ARGV[3], nil, nil, nil, head)
  if state == 'free' then redis.call('DEL', LOCK) end
  return 1
elseif holder and holder ~= '' then
  return -1
elseif not holder then
  if left then admit('free', 0, nil, ARGV[3]) end -- waiters left after an expiry
  return 0
end
local t = now()
local ends = redis.call('ZSCORE', SHARED, ARGV[1])
if ends then redis.call('ZREM', SHARED, ARGV[1]) end
local ours = ends and tonumber(ends) > t
if not ours and not left then return 0 end
local state, count = 'free', 0
local last = redis.call('ZRANGE', SHARED, -1, -1, 'WITHSCORES')
if #last > 0 and tonumber(last[2]) > t then
  state, count = 'shared', shares(t)
else
  -- No live shared lease is left: only ended ones, which go too.
  redis.call('DEL', LOCK)
  if #last > 0 then redis.call('DEL', SHARED) end
end
admit(state, count, nil, ARGV[3], nil, nil, t)
if ours then return 1 end
return 0
