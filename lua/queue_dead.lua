-- Reads dead letters, changing nothing: up to ARGV[1] of them, in order of
-- (when they died, id), after the one given (if any).
--
-- ARGV[1] how many
-- ARGV[2] when the last one read died, in ms ('' to start at the oldest)
-- ARGV[3] the last one read's id
-- returns {id, body, ...}, where body is as bury writes it
local n = tonumber(ARGV[1])
local start = 0
if ARGV[2] ~= '' then
  local ms, last = tonumber(ARGV[2]), ARGV[3]
  local score = redis.call('ZSCORE', DEAD, last)
  if score and tonumber(score) == ms then
    start = redis.call('ZRANK', DEAD, last) + 1
  else
    -- The last one read is gone: count what sorts before or at it. Ties
    -- on the score sort by id, byte by byte (not by Lua's locale-bound
    -- string order), so a binary search finds the first tie after it.
    local function after(a, b)
      for i = 1, math.min(#a, #b) do
        local x, y = string.byte(a, i), string.byte(b, i)
        if x ~= y then return x > y end
      end
      return #a > #b
    end
    local lo, hi = 0, redis.call('ZCOUNT', DEAD, ms, ms)
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      local m = redis.call('ZRANGEBYSCORE', DEAD, ms, ms, 'LIMIT', mid, 1)
      if after(m[1], last) then hi = mid else lo = mid + 1 end
    end
    start = redis.call('ZCOUNT', DEAD, '-inf', '(' .. ms) + lo
  end
end
local reply = {}
for _, id in ipairs(redis.call('ZRANGE', DEAD, start, start + n - 1)) do
  reply[#reply + 1] = id
  reply[#reply + 1] = redis.call('HGET', MESSAGES, 'd' .. id) or ''
end
return reply
