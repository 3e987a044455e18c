-- Reads the head of READY, changing nothing: the messages the shard's next
-- claims take once no delayed message is due.
--
-- ARGV[1] how many ids to read from the head
-- returns {id, payload, attempts so far, ...} in claim order; ids whose
--         message is gone (a claim drops them) are left out
local reply = {}
for _, id in ipairs(redis.call('LRANGE', READY, 0, tonumber(ARGV[1]) - 1)) do
  local m = redis.call('HMGET', MESSAGES, 'p' .. id, 's' .. id)
  local payload = payloadOf(m[1])
  if payload then
    reply[#reply + 1] = id
    reply[#reply + 1] = payload
    reply[#reply + 1] = string.match(m[2] or '', '^(%d+)') or '0'
  end
end
return reply
