-- Ends a claim by deleting the message.
--
-- ARGV[1] id
-- ARGV[2] claim token
-- returns 1 acked (also when a resend finds it acked), 0 lease expired,
--         -1 claimed by another
local code = ack(ARGV[1], ARGV[2])
return code
