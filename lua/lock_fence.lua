-- Raises a fence counter to the fence a quorum lock handed out, so that
-- every later quorum, which shares a node with this one, counts on from
-- above it. Running it twice changes nothing more.
--
-- KEYS[1] fence counter
-- ARGV[1] fence
-- returns the counter afterwards
local f = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') < f then
  redis.call('SET', KEYS[1], ARGV[1])
  return f
end
return tonumber(redis.call('GET', KEYS[1]))
