-- Extends every lease of the batch that is still ours. Running it twice
-- only moves the expiries a little later.
--
-- KEYS[i]    lock key i
-- ARGV[2i-1] token i
-- ARGV[2i]   new ttl i in ms
-- returns one code per key: 1 renewed, 0 no lease, -1 held by another
local codes = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder == ARGV[2*i-1] then
    redis.call('PEXPIRE', key, ARGV[2*i])
    codes[i] = 1
  elseif holder then
    codes[i] = -1
  else
    codes[i] = 0
  end
end
return codes
