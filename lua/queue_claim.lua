-- Claims the next message under a new lease: a due delayed message, else
-- the head of READY, else a claim whose lease has ended.
--
-- ARGV[1] lease in ms
-- ARGV[2] claim token
-- ARGV[3] max attempts
-- returns {1, id, payload, attempt, lease deadline in ms}; a resend
--         returns the first run's claim.
--         {0, ms until the next delayed message is due, or -1} when empty
return claim(nowms(), ARGV[1], ARGV[2], tonumber(ARGV[3]))
