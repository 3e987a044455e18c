-- Tells, changing nothing, whether a claim would find work in the shard
-- now, so that a sharded queue's empty poll costs one round trip however
-- many shards it has.
--
-- returns {1, 0} when there is work now, else {0, ms until the next
--         delayed message is due, or -1}
local now = nowms()
if redis.call('LLEN', READY) > 0
  or #redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, 1) > 0
  or #redis.call('ZRANGEBYSCORE', INFLIGHT, '-inf', now, 'LIMIT', 0, 1) > 0 then
  return {1, 0}
end
return nextDue(now)
