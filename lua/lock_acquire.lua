-- Takes a lock's lease if it is free, and counts a fencing token.
--
-- KEYS[1] lock key
-- KEYS[2] fence counter of the lock's slot (shared by the names in that
--         slot; it never expires, so fences only grow)
-- ARGV[1] token
-- ARGV[2] ttl in ms
-- returns {1, fence} when the lease is ours. A call resent after a lost
--         reply (or after a hand-off to us went unanswered) finds our own
--         token, sets the ttl from now and returns the counter's value.
--         {0, pttl} when another holds it: its remaining ms, -1 if no TTL.
--
-- The counter's value is a valid fence for our lease even if other names of
-- the slot counted on since we were granted: it is at least what our grant
-- counted, so above every earlier lease's fence on this name, and every
-- later lease on the name counts after it. Resetting the ttl keeps Redis's
-- expiry no earlier than the one the client computes from the call's start.
-- SET NX GET needs Redis 7.0 or later; it saves a command on every call.
local holder = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2], 'GET')
if not holder then
  return {1, redis.call('INCR', KEYS[2])}
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, tonumber(redis.call('GET', KEYS[2]))}
end
return {0, redis.call('PTTL', KEYS[1])}
