-- Extends every lease of the batch that is still ours, exclusive or
-- shared. Running it twice only moves the expiries a little later.
--
-- KEYS[2i-1] lock key i (LOCK in lock.lua)
-- KEYS[2i]   its shared leases (SHARED in lock.lua)
-- ARGV[2i-1] token i
-- ARGV[2i]   new ttl i in ms
-- returns one code per lease: 1 renewed, 0 no lease, -1 held by another
local codes, t = {}, nil
for i = 1, #KEYS / 2 do
  local lock, shared, token, ttl = KEYS[2*i-1], KEYS[2*i], ARGV[2*i-1], tonumber(ARGV[2*i])
  local holder = redis.call('GET', lock)
  if holder == token then
    redis.call('PEXPIRE', lock, ttl)
    codes[i] = 1
  elseif holder == '' then
    if not t then
      local now = redis.call('TIME')
      t = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
    end
    codes[i] = -1 -- shared leases hold the lock, unless one is ours
    local ends = redis.call('ZSCORE', shared, token)
    if ends and tonumber(ends) > t then
      redis.call('ZADD', shared, t + ttl, token)
      local last = redis.call('ZRANGE', shared, -1, -1, 'WITHSCORES')
      redis.call('SET', lock, '', 'PX', tonumber(last[2]) - t)
      redis.call('PEXPIRE', shared, tonumber(last[2]) - t)
      codes[i] = 1
    end
  elseif holder then
    codes[i] = -1
  else
    codes[i] = 0
  end
end
return codes
