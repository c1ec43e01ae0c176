-- keep: RESERVED -> CLAIMED, for a create the reservation check publishes again from the order's pending
-- view: the units stay with the order. An unknown token is remembered as RELEASED with no lines (an empty
-- rollback) in the same step, so no reservation is made for it afterwards: not a late entry's, not one a
-- load of a lost cache would make again from the pending view (which, made between a look and a separate
-- release, was given back while a worker created the order on the token). The worker then reserves
-- afresh. Answers the state found ('' for an unknown token).
-- KEYS[1]: the token; ARGV[1]: token time to live (ms)
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'reserved' then
  redis.call('HSET', KEYS[1], 'state', 'claimed')
  redis.call('PERSIST', KEYS[1])
elseif not state then
  redis.call('HSET', KEYS[1], 'state', 'released', 'lines', '')
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return state or ''
