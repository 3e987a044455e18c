-- Reads a lock's state, changing nothing.
--
-- KEYS are the lock's, as in lock.lua: LOCK, FENCE, WAITERS, SHARED; they
-- share one {hash tag}.
-- ARGV[1] how many waiters and shared leases to list, at most
-- returns {held (0 or 1), LOCK's value ('' when free or shared),
--          LOCK's PTTL, FENCE's value ('' when none yet),
--          waiter count, {entry, ticket, ...} oldest first,
--          live shared count, {token, ends-at ms, ...} soonest first,
--          now in ms}
local LOCK, FENCE, WAITERS, SHARED = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local most = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local holder = redis.call('GET', LOCK)
local held, pttl = 0, 0
if holder then
  held, pttl = 1, redis.call('PTTL', LOCK)
else
  holder = ''
end
local fence = redis.call('GET', FENCE) or ''

local waiters = redis.call('ZRANGE', WAITERS, 0, most - 1, 'WITHSCORES')
local count = redis.call('ZCARD', WAITERS)

-- Shared leases count only while LOCK holds "": without LOCK, SHARED lists
-- ended leases that the next lock call drops.
local shares, live = {}, 0
if held == 1 and holder == '' then
  live = redis.call('ZCOUNT', SHARED, '(' .. now, '+inf')
  shares = redis.call('ZRANGEBYSCORE', SHARED, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, most)
end
return {held, holder, pttl, fence, count, waiters, live, shares, now}
