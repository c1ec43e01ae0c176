-- keep: RESERVED -> CLAIMED, for a create the reservation check publishes again from the order's pending
-- view: the units stay with the order. Answers the state found ('' for an unknown token, not recorded).
-- KEYS[1]: the token
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'reserved' then
  redis.call('HSET', KEYS[1], 'state', 'claimed')
  redis.call('PERSIST', KEYS[1])
end
return state or ''
