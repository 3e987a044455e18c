-- Adds a subscription; adding one that exists changes nothing.
--
-- KEYS[1] VERSION, KEYS[2] SUBS: as topic_publish.lua
-- ARGV[1] subscription name
-- returns 1 added, 0 it existed
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  redis.call('INCR', KEYS[1])
  return 1
end
return 0
