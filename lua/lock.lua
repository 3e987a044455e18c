-- The prelude of the lock scripts that hand a lock to its waiters.
-- scripts.go puts `local MAX_SKIPPED = <n>` and `local MAX_GRANTS = <n>`
-- before it: how many waiters one call skips because nobody listens on
-- their channel any more (their process died), and how many shared waiters
-- it lets in; later calls go on. KEYS are the lock's, in this order; they
-- share one {hash tag}.
--
-- LOCK holds the exclusive holder's token, or "" while shared leases hold
-- the lock: SHARED scores their tokens by when each ends, on Redis's clock
-- (TIME, in ms), and LOCK lasts until the latest of them ends. Without
-- LOCK the lock is free, whatever SHARED still lists: ended leases, which
-- the next call that counts shared leases drops.
--
-- WAITERS is a sorted set: one member per queued waiter, scored by its
-- ticket, a value of the fence counter taken when it queued, so the oldest
-- waiter has the lowest score. A member is "<grant ms> <channel> <token>"
-- for an exclusive waiter and "<grant ms>:<limit> <channel> <token>" for a
-- shared one (limit 0: none): how long a lease handed to it lasts until its
-- Locker renews it, the channel its Locker listens on, and the token it
-- will hold the lease with.
local LOCK, FENCE, WAITERS, SHARED = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- A queue that a call left dead waiters in, or that a waiter checked,
-- expires after a day without such calls, in case no call ever comes back
-- to skip them.
local QUEUE_IDLE = 86400000

-- parse splits a queue entry: ms, limit ("" for an exclusive waiter),
-- channel, token.
local function parse(entry)
  return string.match(entry, '^(%d+):?(%d*) (.+) ([^ ]+)$')
end

-- now is Redis's clock in ms.
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- shares drops the shared leases that ended by t and counts the others.
local function shares(t)
  redis.call('ZREMRANGEBYSCORE', SHARED, '-inf', t)
  return redis.call('ZCARD', SHARED)
end

-- cover makes LOCK, and SHARED (so that a crashed holder's entry does not
-- outlive it), last until the latest shared lease ends, which is after t.
local function cover(t)
  local last = redis.call('ZRANGE', SHARED, -1, -1, 'WITHSCORES')
  local ms = tonumber(last[2]) - t
  redis.call('SET', LOCK, '', 'PX', ms)
  redis.call('PEXPIRE', SHARED, ms)
end

-- sharedState is the state of a lock whose LOCK is "": 'shared' with the
-- count of live shared leases, or 'free' (LOCK deleted) when all ended.
local function sharedState(t)
  local count = shares(t)
  if count > 0 then return 'shared', count end
  redis.call('DEL', LOCK)
  return 'free', 0
end

-- keep sets a shared lease of ours to end ttl after t.
local function keep(token, ttl, t)
  redis.call('ZADD', SHARED, t + ttl, token)
  cover(t)
end

-- current is the fence of a shared lease: the counter's value, at least
-- every fence counted before, and below every exclusive fence counted
-- after. A counter not made yet counts its first.
local function current()
  local f = redis.call('GET', FENCE)
  if f then return tonumber(f) end
  return redis.call('INCR', FENCE)
end

-- fits says whether a waiter of this limit ("" exclusive) may take a lock
-- in state ('free', 'shared' or 'held') with count shared leases.
local function fits(limit, state, count)
  if limit == '' then return state == 'free' end
  limit = tonumber(limit)
  return state ~= 'held' and (limit == 0 or count < limit)
end

-- wake is how long until the lock may change for a waiter that does not
-- fit: the earliest shared lease's remaining ms in state 'shared' (a
-- crashed holder's share ends then), else the lock's (-1: no TTL, or free
-- with waiters left to let in).
local function wake(state, t)
  if state == 'shared' then
    t = t or now()
    shares(t)
    local first = redis.call('ZRANGE', SHARED, 0, 0, 'WITHSCORES')
    if #first > 0 then return tonumber(first[2]) - t end
  end
  return math.max(redis.call('PTTL', LOCK), -1)
end

-- listening asks whether anyone listens on a waiter's channel.
local function listening(publish, channel)
  local sub = 'NUMSUB'
  if publish == 'SPUBLISH' then sub = 'SHARDNUMSUB' end
  return tonumber(redis.call('PUBSUB', sub, channel)[2]) > 0
end

-- admit hands the lock to the waiters at the head of the queue, oldest
-- first, while they fit: one exclusive waiter into a free lock, or shared
-- waiters, each within its limit, into a free or shared lock. state and
-- count are the lock's ('free' when LOCK is gone; 'shared' with count
-- live shared leases; 'held' by an exclusive lease); t is now() or nil.
--
-- A waiter is granted the lease, set to its token for its grant ms, and its
-- Locker gets "<fence> <token> <lock key>"; one nobody listens for any more
-- is skipped. An exclusive waiter whose ticket is above floor (the fence of
-- the exclusive lease the lock passes from) takes its ticket as fence: no
-- lease was granted on this lock since it queued. Otherwise, or with floor
-- nil, a fence is counted. self is the calling waiter's entry, which takes
-- the lease at once for ttl ms instead. An exclusive waiter that waits
-- behind shared leases holds back every later waiter, unless nobody
-- listens for it any more.
--
-- popped, if given, is the head a caller already popped.
--
-- Returns the fence if self was admitted; whether it stopped with dead
-- waiters or waiters that fit still queued (a later call goes on); and the
-- lock's state and count afterwards.
local function admit(state, count, floor, publish, self, ttl, t, popped)
  local skipped, granted, mine = 0, 0, nil
  while skipped < MAX_SKIPPED and granted < MAX_GRANTS do
    local head = popped or redis.call('ZPOPMIN', WAITERS)
    popped = nil
    if #head == 0 then break end
    local entry, ticket = head[1], tonumber(head[2])
    local ms, limit, channel, token = parse(entry)
    if not token then
      skipped = skipped + 1
    elseif not fits(limit, state, count) then
      if limit == '' and state == 'shared' and entry ~= self and not listening(publish, channel) then
        skipped = skipped + 1
      else
        redis.call('ZADD', WAITERS, ticket, entry) -- back in its place
        break
      end
    elseif limit == '' then
      local fence = ticket
      if not floor or ticket <= floor then fence = redis.call('INCR', FENCE) end
      if entry == self then
        redis.call('SET', LOCK, token, 'PX', ttl)
        return fence, false, 'held', 0
      end
      if redis.call(publish, channel, fence .. ' ' .. token .. ' ' .. LOCK) > 0 then
        redis.call('SET', LOCK, token, 'PX', ms)
        return nil, false, 'held', 0
      end
      skipped = skipped + 1
    else
      t = t or now()
      local fence = current()
      if entry == self then
        mine, ms = fence, ttl
      elseif redis.call(publish, channel, fence .. ' ' .. token .. ' ' .. LOCK) == 0 then
        ms = nil
        skipped = skipped + 1
      end
      if ms then
        redis.call('ZADD', SHARED, t + ms, token)
        state, count, granted = 'shared', count + 1, granted + 1
      end
    end
  end
  if state == 'shared' then cover(t or now()) end
  local more = skipped >= MAX_SKIPPED or granted >= MAX_GRANTS
  if skipped >= MAX_SKIPPED then redis.call('PEXPIRE', WAITERS, QUEUE_IDLE) end
  return mine, more, state, count
end
