-- Ends a claim by scheduling a retry, or dead-letters the message when its
-- attempts are used up or the handler said not to retry.
--
-- ARGV[1] id
-- ARGV[2] claim token
-- ARGV[3] retry delay in ms
-- ARGV[4] max attempts
-- ARGV[5] most dead letters kept
-- ARGV[6] 1: dead-letter now (ErrSkipRetry), 0: retry while attempts last
-- ARGV[7] the cause, kept with a dead letter ('' for none)
-- returns 1 retried (also when a resend finds it done), 2 dead-lettered,
--         0 lease expired, -1 claimed by another
local code, attempts, now = holder(ARGV[1], ARGV[2])
if code ~= OK then
  if doneAs('c' .. ARGV[2]) == NACKED then return OK end
  return code
end
release(ARGV[1], ARGV[2])
remember('c' .. ARGV[2], now, NACKED)
if attempts >= tonumber(ARGV[4]) or ARGV[6] == '1' then
  bury(ARGV[1], attempts, now, ARGV[7], tonumber(ARGV[5]))
  return BURIED
end
redis.call('HSET', MESSAGES, 's' .. ARGV[1], attempts)
redis.call('HINCRBY', MESSAGES, NACKED_N, 1)
local delay = tonumber(ARGV[3])
if delay > 0 then
  redis.call('ZADD', DELAYED, now + delay, ARGV[1])
else
  redis.call('RPUSH', READY, ARGV[1])
  redis.call('ZADD', MARKER, 0, 'm')
end
return OK
