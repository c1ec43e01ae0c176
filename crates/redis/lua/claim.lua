-- claim: RESERVED -> CLAIMED (a worker takes the reservation). A missing token is never assumed.
-- A claimed token does not expire: its create is on the bus and settles it (confirm or release, which
-- give it a time to live again), however long the backlog.
-- KEYS[1]: the token
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return 'missing'
end
if state == 'reserved' or state == 'claimed' then
  redis.call('HSET', KEYS[1], 'state', 'claimed')
  redis.call('PERSIST', KEYS[1])
  return 'claimed'
end
return state
