-- Gives expired claims back: to READY, or to the dead-letter list when
-- their attempts are used up; at most ARGV[2] claims, oldest deadline
-- first.
--
-- ARGV[1] max attempts
-- ARGV[2] batch size
-- ARGV[3] guard in ms (0: none): with one, do nothing if any consumer
--         (this one included) reclaimed the shard within that time
-- ARGV[4] guard token
-- ARGV[5] most dead letters kept
-- returns {given back to READY, dead-lettered},
--         or {-1} when another consumer holds the guard
local guard = tonumber(ARGV[3])
if guard > 0 and not redis.call('SET', RECLAIMER, ARGV[4], 'NX', 'PX', guard) then
  return {-1}
end
local now = nowms()
forget(now)
local max, limit = tonumber(ARGV[1]), tonumber(ARGV[5])
local back, dead = 0, 0
for _ = 1, tonumber(ARGV[2]) do
  local id, attempts, tok = expired(now)
  if not id then break end
  if reclaimOne(id, attempts, tok, now, max, limit) == OK then back = back + 1 else dead = dead + 1 end
end
if back > 0 then redis.call('ZADD', MARKER, 0, 'm') end
return {back, dead}
