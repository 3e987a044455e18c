-- Deletes dead letters.
--
-- ARGV[1] request token
-- ARGV[2...] ids (none: every dead letter)
-- returns how many were deleted; a resend returns the first run's answer
local done = doneCount(ARGV[1])
if done then return done end
local now = nowms()
local deleted = 0
for _, id in ipairs(deadIDs(2)) do
  if redis.call('ZREM', DEAD, id) == 1 then
    redis.call('HDEL', MESSAGES, 'd' .. id)
    deleted = deleted + 1
  end
end
forget(now)
rememberCount(ARGV[1], now, deleted)
return deleted
