-- Adds a subscription; adding one that exists changes nothing.
--
-- KEYS[1] VERSION, KEYS[2] SUBS, KEYS[3] DONE: as topic_publish.lua
-- ARGV[1] subscription name
-- ARGV[2] request token
-- ARGV[3] a new, unique VERSION
-- returns 1 added, 0 it existed (or a resend found the call done)
local VERSION, SUBS, DONE = KEYS[1], KEYS[2], KEYS[3]
-- A first run that arrives after its resend, and after an Unsubscribe,
-- must not bring the subscription back.
if redis.call('ZSCORE', DONE, ARGV[2]) then return 0 end
local added = redis.call('SADD', SUBS, ARGV[1])
if added == 1 then redis.call('SET', VERSION, ARGV[3]) end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', DONE, '-inf', now - DONE_MEMORY)
redis.call('ZADD', DONE, now, ARGV[2])
redis.call('PEXPIRE', DONE, DONE_MEMORY)
return added
