-- Passes a lease from its holder straight to the next holder.
--
-- KEYS[1] lock key
-- KEYS[2] fence counter of the lock's slot
-- ARGV[1] holder's token
-- ARGV[2] next holder's token
-- ARGV[3] next holder's ttl in ms
-- returns {1, next holder's fence} (also when a resent call finds the
--         hand-off done), {0, 0} no lease, {0, -1} held by another
--
-- The holder == ARGV[2] branch is only ever a resend of this same call: a
-- releaser never hands to a waiter whose token may already be in Redis (see
-- Lock.handOff). The counter's value it returns is a valid fence, as in
-- lock_acquire.lua's resend branch.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return {1, redis.call('INCR', KEYS[2])}
end
if holder == ARGV[2] then
  return {1, tonumber(redis.call('GET', KEYS[2]))}
end
if holder then return {0, -1} end
return {0, 0}
