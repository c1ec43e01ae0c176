-- claim: RESERVED -> CLAIMED (a worker takes the reservation). A missing token is never assumed.
-- KEYS[1]: the token
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return 'missing'
end
if state == 'reserved' or state == 'claimed' then
  redis.call('HSET', KEYS[1], 'state', 'claimed')
  return 'claimed'
end
return state
