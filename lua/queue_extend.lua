-- Renews claims that are still live. Running it twice only moves the
-- deadlines a little later.
--
-- ARGV triples: id, claim token, new lease in ms (at most scriptBatch)
-- returns one code per claim: 1 renewed, 0 lease expired, -1 claimed by
--         another
local codes = {}
for i = 1, #ARGV, 3 do
  local id = ARGV[i]
  local code, attempts, now = holder(id, ARGV[i + 1])
  if code == OK then
    local deadline = now + tonumber(ARGV[i + 2])
    redis.call('HSET', MESSAGES, 's' .. id, string.format('%d:%d:', attempts, deadline) .. ARGV[i + 1])
    redis.call('ZADD', INFLIGHT, deadline, id)
  end
  codes[#codes + 1] = code
end
return codes
