-- Adds messages whose id is not live.
--
-- ARGV[1] delay in ms (0: ready now)
-- ARGV[2] request token
-- ARGV[3...] pairs id, payload (at most enqueueChunk)
-- returns one code per message: 1 added, 0 duplicate id (nothing added).
--         A resend of a call that added messages finds its token: all 1.
local n = (#ARGV - 2) / 2
local codes = {}
if doneAs('e' .. ARGV[2]) then
  for i = 1, n do codes[i] = OK end
  return codes
end
local now = nowms()
local delay = tonumber(ARGV[1])
local ready, added = {}, 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if store(id, ARGV[i + 1]) then
    if delay > 0 then redis.call('ZADD', DELAYED, now + delay, id) else ready[#ready + 1] = id end
    codes[#codes + 1] = OK
    added = added + 1
  else
    codes[#codes + 1] = 0
  end
end
if #ready > 0 then
  redis.call('RPUSH', READY, unpack(ready))
  redis.call('ZADD', MARKER, 0, 'm')
end
forget(now)
if added > 0 then remember('e' .. ARGV[2], now, ACKED) end
return codes
