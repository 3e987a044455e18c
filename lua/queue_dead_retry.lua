-- Moves dead letters back to READY, oldest first when all are asked for,
-- else in the order given; each keeps its id and payload and starts over
-- at attempt 1. A dead letter whose id is live again stays dead.
--
-- ARGV[1] request token
-- ARGV[2...] ids (none: every dead letter)
-- returns how many were moved; a resend returns the first run's answer
local done = doneCount(ARGV[1])
if done then return done end
local now = nowms()
local moved, batch = 0, {}
local function push()
  if #batch > 0 then redis.call('RPUSH', READY, unpack(batch)) end
  batch = {}
end
for _, id in ipairs(deadIDs(2)) do
  local body = redis.call('HGET', MESSAGES, 'd' .. id)
  if body and redis.call('HEXISTS', MESSAGES, 'p' .. id) == 0 then
    local n, at = string.match(body, '^%d+:%d+:(%d+):()')
    store(id, string.sub(body, at + tonumber(n)))
    redis.call('HDEL', MESSAGES, 'd' .. id, 's' .. id)
    redis.call('ZREM', DEAD, id)
    moved = moved + 1
    batch[#batch + 1] = id
    if #batch == UNPACK_MAX then push() end
  end
end
push()
if moved > 0 then redis.call('ZADD', MARKER, 0, 'm') end
forget(now)
rememberCount(ARGV[1], now, moved)
return moved
