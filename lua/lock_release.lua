-- Deletes a lease only if it is ours, and wakes the lock's waiters.
--
-- KEYS[1] lock key
-- ARGV[1] token
-- ARGV[2] release channel (the message is the lock key)
-- returns 1 released, 0 no lease (expired or deleted), -1 held by another
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], KEYS[1])
  return 1
end
if holder then return -1 end
return 0
