-- confirm: RESERVED or CLAIMED -> CONFIRMED (the stock now lives in the store as sold). Idempotent.
-- A live token was counted when it reserved: from now on its deductions' versions are counted by the
-- counters themselves (see count). A token the cache lost (absent, or an empty release) was never
-- counted by the counters loaded since, and a released one gave its units back while the store sold
-- them (a reload made it again and a check released it, the worker's claim lost with the old master):
-- either way the store's deductions are followed once, and the token is remembered as CONFIRMED.
-- KEYS[1]: the token; KEYS[2j], KEYS[2j+1]: counter and parked list of deduction j; last: the shop's checks
-- ARGV[1]: token time to live (ms); ARGV[2j], ARGV[2j+1]: quantity of deduction j and its store version;
-- last: the token's member in the checks
-- Settled: the token's reservation check (if the cache keeps one) would only settle it again.
redis.call('ZREM', table.remove(KEYS), table.remove(ARGV))
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'reserved' or state == 'claimed' then
  redis.call('HSET', KEYS[1], 'state', 'confirmed')
  -- A claimed token had no time to live; a confirmed one is needed no longer than any other.
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  for i = 2, #KEYS, 2 do
    if redis.call('EXISTS', KEYS[i]) == 1 then
      count(KEYS[i], ARGV[i + 1])
    end
  end
  return 'ok'
end
local lost = (not state) or state == 'released'
if lost and #KEYS > 1 then
  for i = 2, #KEYS, 2 do
    follow(KEYS[i], KEYS[i + 1], ARGV[i], ARGV[i + 1], -1, ARGV[1])
  end
  redis.call('HSET', KEYS[1], 'state', 'confirmed', 'lines', '')
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 'ok'
