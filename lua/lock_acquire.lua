-- Takes a lock's lease if it is free and counts a fencing token; if another
-- holds it, a waiter joins the lock's queue in the same call.
--
-- KEYS as in lock.lua: lock key, fence counter of the lock's slot (shared
-- by the names in that slot; it never expires, so fences only grow), and
-- the queue, which only a waiter's call passes and touches
-- ARGV[1] token
-- ARGV[2] ttl in ms
-- ARGV[3] the waiter's queue entry (see lock.lua), or "" not to queue
-- returns the fence (at least 1) when the lease is ours. A call resent
--         after a lost reply, or after a grant to us whose notice is late,
--         finds our own token, sets the ttl from now and returns the
--         counter's value: at least our lease's count, so above every
--         earlier lease's fence on this name, and every later lease counts
--         after it or is handed a ticket above it (lock.lua's floor).
--         Otherwise -3 - pttl, one integer being cheaper to read than two:
--         pttl is -2 when we are queued (now, or by an earlier run of this
--         call: ZADD NX keeps our place), else the holder's remaining ms,
--         -1 if it has no TTL.
--
-- A waiter counts first: if the lease is taken the count is its fence
-- (above every earlier lease's on this name, and every later one counts
-- after it), and if it queues, its ticket. Otherwise only a taken lease
-- counts. A holder's lease that
-- expires with waiters queued leaves the lock free until a waiter's next
-- check (lock_wait.lua) hands it on: a newcomer can take it meanwhile.
-- SET NX GET needs Redis 7.0 or later; it saves a command on every call.
local queue = ARGV[3] ~= ''
local n
if queue then n = redis.call('INCR', KEYS[2]) end
local holder = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2], 'GET')
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]))
elseif holder then
  if not queue then return -3 - redis.call('PTTL', KEYS[1]) end
  redis.call('ZADD', KEYS[3], 'NX', n, ARGV[3])
  return -1
end
return n or redis.call('INCR', KEYS[2])
