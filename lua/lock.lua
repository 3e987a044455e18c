-- The prelude of the lock scripts that hand a lock to its waiters.
-- scripts.go puts `local MAX_SKIPPED = <n>` before it: how many waiters one
-- call skips because nobody listens on their channel any more (their
-- process died); later calls skip the rest. KEYS are the lock's, in this
-- order; they share one {hash tag}.
--
-- WAITERS is a sorted set: one member per queued waiter, scored by its
-- ticket, a value of the fence counter taken when it queued, so the oldest
-- waiter has the lowest score. A member is "<grant ms> <channel> <token>":
-- how long a lease handed to it lasts until its Locker renews it, the
-- channel its Locker listens on, and the token it will hold the lease with.
local LOCK, FENCE, WAITERS = KEYS[1], KEYS[2], KEYS[3]

-- A queue that a call left dead waiters in, or that a waiter checked,
-- expires after a day without such calls, in case no call ever comes back
-- to skip them.
local QUEUE_IDLE = 86400000

local function parse(entry)
  local ms, channel, token = string.match(entry, '^(%d+) (.+) ([^ ]+)$')
  return ms, channel, token
end

-- grant pops waiters, oldest first, and gives the lease to the first one
-- whose Locker still listens: the lease is set to its token for its grant
-- ms, and its Locker gets "<fence> <token> <lock key>". A waiter whose
-- ticket is above floor (the fence of the lease the lock passes from)
-- takes its ticket as fence: no fence was counted between them on this
-- lock. Otherwise, or with floor nil (a lease whose fence is unknown), a
-- fence is counted. self is the calling waiter's entry, which takes the
-- lease at once for ttl ms instead. Returns the fence and whether the
-- caller got it; or nil, and true if it gave up after MAX_SKIPPED waiters
-- nobody listens for (others may still be queued), false if none is left.
local function grant(floor, publish, self, ttl)
  for _ = 1, MAX_SKIPPED do
    local head = redis.call('ZPOPMIN', WAITERS)
    if #head == 0 then return nil, false end
    local entry, ticket = head[1], tonumber(head[2])
    local ms, channel, token = parse(entry)
    if token then
      local fence = ticket
      if not floor or ticket <= floor then fence = redis.call('INCR', FENCE) end
      if entry == self then
        redis.call('SET', LOCK, token, 'PX', ttl)
        return fence, true
      end
      if redis.call(publish, channel, fence .. ' ' .. token .. ' ' .. LOCK) > 0 then
        redis.call('SET', LOCK, token, 'PX', ms)
        return fence, false
      end
    end
  end
  redis.call('PEXPIRE', WAITERS, QUEUE_IDLE)
  return nil, true
end
