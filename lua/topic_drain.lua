-- Empties a removed subscription's MESSAGES hash by up to about ARGV[1]
-- fields, dropping the payload reference of each "p" field; running it
-- again finds those fields gone. Each call goes on from the HSCAN cursor
-- the last one stopped at: a hash keeps its emptied buckets until it
-- shrinks, and starting over at 0 would walk them again every call.
--
-- KEYS[1] PAYLOADS, KEYS[2] TRASHES: as topic_unsubscribe.lua
-- KEYS[3] TRASH: the hash to empty
-- ARGV[1] most fields to delete (a scan page may add a few more)
-- returns 1 when TRASH is empty (and forgotten), else 0
local PAYLOADS, TRASHES, TRASH = KEYS[1], KEYS[2], KEYS[3]
local left = tonumber(ARGV[1])
local cursor = redis.call('HGET', TRASHES, TRASH) or '0'
repeat
  local page = redis.call('HSCAN', TRASH, cursor, 'COUNT', left)
  cursor = page[1]
  local fields = page[2]
  for i = 1, #fields, 2 do
    local f, ref = fields[i], fields[i + 1]
    -- A scan may return a field twice: only the run that deletes it unrefs.
    if redis.call('HDEL', TRASH, f) == 1 and string.sub(f, 1, 1) == 'p'
      and redis.call('HINCRBY', PAYLOADS, 'n' .. ref, -1) <= 0 then
      redis.call('HDEL', PAYLOADS, 'p' .. ref, 'n' .. ref)
    end
    left = left - 1
  end
until cursor == '0' or left <= 0
if redis.call('EXISTS', TRASH) == 0 then
  redis.call('HDEL', TRASHES, TRASH)
  return 1
end
-- Nothing is ever added to TRASH, so a scan that came back to 0 has seen
-- every field: the next call starts a new one only if some remain.
redis.call('HSET', TRASHES, TRASH, cursor)
return 0
