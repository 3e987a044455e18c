-- Removes a subscription and its backlog: its lists and sets go at once
-- (UNLINK frees them in the background); its MESSAGES hash, whose payload
-- references must each be dropped, is renamed to TRASH for
-- topic_drain.lua to empty in bounded steps. The name is free at once.
--
-- KEYS[1] VERSION, KEYS[2] SUBS, KEYS[3] DONE: as topic_publish.lua
-- KEYS[4] TRASHES: hash of trash hashes not yet drained -> HSCAN cursor
-- KEYS[5] TRASH: a new, unique key
-- KEYS[6...] the subscription's keys, MESSAGES first
-- ARGV[1] subscription name
-- ARGV[2] request token
-- ARGV[3] a new, unique VERSION
-- returns 1 removed (also when a resend finds it done), 0 no such
--         subscription
local VERSION, SUBS, DONE, TRASHES, TRASH = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
if redis.call('ZSCORE', DONE, ARGV[2]) then return 1 end
local removed = redis.call('SREM', SUBS, ARGV[1])
if removed == 1 then redis.call('SET', VERSION, ARGV[3]) end
if redis.call('EXISTS', KEYS[6]) == 1 then
  redis.call('RENAME', KEYS[6], TRASH)
  redis.call('HSET', TRASHES, TRASH, 0)
  removed = 1
end
for i = 7, #KEYS do
  removed = math.max(removed, redis.call('UNLINK', KEYS[i]))
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', DONE, '-inf', now - DONE_MEMORY)
redis.call('ZADD', DONE, now, ARGV[2])
redis.call('PEXPIRE', DONE, DONE_MEMORY)
return math.min(removed, 1)
