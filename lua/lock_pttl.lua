-- Reads how long a lease has left, if it is ours.
--
-- KEYS[1] lock key (LOCK in lock.lua)
-- KEYS[2] its shared leases (SHARED in lock.lua)
-- ARGV[1] token
-- returns the remaining ms, or -3 when the lease is not ours
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PTTL', KEYS[1])
elseif holder == '' then
  local ends = redis.call('ZSCORE', KEYS[2], ARGV[1])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if ends and tonumber(ends) > now then return tonumber(ends) - now end
end
return -3
