-- Acks one claim and claims the next message, in one round trip, as a busy
-- consumer wants.
--
-- ARGV[1] id, ARGV[2] claim token: as queue_ack.lua
-- ARGV[3] lease in ms, ARGV[4] new claim token, ARGV[5] max attempts,
--         ARGV[6] most dead letters kept: as queue_claim.lua
-- returns queue_ack.lua's code followed by queue_claim.lua's reply
local code, now = ack(ARGV[1], ARGV[2])
local reply = claim(now, ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]))
table.insert(reply, 1, code)
return reply
