-- confirm: RESERVED or CLAIMED -> CONFIRMED (the stock now lives in the store as sold). Idempotent.
-- KEYS[1]: the token
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'reserved' or state == 'claimed' then
  redis.call('HSET', KEYS[1], 'state', 'confirmed')
end
return 'ok'
