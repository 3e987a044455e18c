-- Claims the current slot of a periodic job (Locker.Every) on Redis's
-- clock: slot n is [n*period, (n+1)*period) in ms since the epoch by TIME.
-- Callers claim while holding the job's lock.
--
-- KEYS[1] the job's claim key: "<slot> <token>" of the last slot claimed
-- ARGV[1] the period in ms (at least 1)
-- ARGV[2] the claimer's token, or "" only to ask
-- returns {code, slot, ms}: the current slot, the ms until the next slot
--         starts (at least 1), and code 1 when the slot is claimed with our
--         token (by this call, or by an earlier run of it whose reply was
--         lost: a resend finds its own claim), 0 when another claimed it,
--         or a later slot, and -1, only when asking, when it is unclaimed.
--
-- A slot is claimed only when it is later than the last one claimed, so a
-- clock that steps back skips slots rather than running one twice. The key
-- expires GRACE ms after its slot ends, when every claim finds a later slot.
local GRACE = 1000
local period = tonumber(ARGV[1])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local slot = math.floor(now / period)
local ms = (slot + 1) * period - now

local claimed = redis.call('GET', KEYS[1])
if claimed then
  local last, token = string.match(claimed, '^(%d+) (.+)$')
  last = tonumber(last)
  if last and last >= slot then
    if last == slot and token == ARGV[2] then return {1, slot, ms} end
    return {0, slot, ms}
  end
end
if ARGV[2] == '' then return {-1, slot, ms} end
redis.call('SET', KEYS[1], string.format('%d %s', slot, ARGV[2]), 'PX', ms + GRACE)
return {1, slot, ms}
