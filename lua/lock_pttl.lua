-- Reads how long a lease has left, if it is ours.
--
-- KEYS[1] lock key
-- ARGV[1] token
-- returns the remaining ms, or -3 when the lease is not ours
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PTTL', KEYS[1])
end
return -3
