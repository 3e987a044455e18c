-- Adds messages whose id is neither live nor kept taken by WithUniqueFor.
--
-- ARGV[1] delay in ms (0: ready now)
-- ARGV[2] how long each id stays taken, in ms (0: while live only; -1:
--         the ids are random, so none can be taken)
-- ARGV[3] request token
-- ARGV[4...] pairs id, payload (at most enqueueChunk)
-- returns one code per message: 1 added, 0 its id is live, -2 its id is
--         kept taken by WithUniqueFor (nothing added for either).
--         A resend of a call that added messages finds its token: all 1.
local n = (#ARGV - 3) / 2
local codes = {}
if doneAs('e' .. ARGV[3]) then
  for i = 1, n do codes[i] = OK end
  return codes
end
local now = nowms()
local delay, unique = tonumber(ARGV[1]), tonumber(ARGV[2])
if unique > 0 then redis.call('ZREMRANGEBYSCORE', UNIQUE, '-inf', now) end
local ready, added = {}, 0
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  if unique >= 0 and taken(id, now) then
    codes[#codes + 1] = -2
  elseif store(id, ARGV[i + 1]) then
    if delay > 0 then redis.call('ZADD', DELAYED, now + delay, id) else ready[#ready + 1] = id end
    if unique > 0 then redis.call('ZADD', UNIQUE, now + unique, id) end
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
-- The set lives as long as its longest window.
if unique > 0 and added > 0 and redis.call('PTTL', UNIQUE) < unique then
  redis.call('PEXPIRE', UNIQUE, unique)
end
forget(now)
if added > 0 then
  redis.call('HINCRBY', MESSAGES, ENQUEUED, added)
  remember('e' .. ARGV[3], now, ACKED)
end
return codes
