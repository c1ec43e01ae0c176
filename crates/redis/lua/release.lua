-- release: from an allowed state -> RELEASED, giving the stock back once. An unknown token is remembered
-- as RELEASED with no lines (empty rollback), so a reserve arriving later is refused (hanging reserve).
-- KEYS[1]: the token; KEYS[1+i]: stock counter of line i, as the caller read the token's lines
-- ARGV[1]: the lines the caller read ('' if none); ARGV[2]: allowed states, comma separated
-- ARGV[3]: token time to live (ms); ARGV[3+i]: quantity of line i (KEYS[1+i], so ARGV[2+j] for KEYS[j])
local token = KEYS[1]
local state = redis.call('HGET', token, 'state')
if not state then
  if ARGV[1] ~= '' then
    return {'retry'}
  end
  redis.call('HSET', token, 'state', 'released', 'lines', '')
  redis.call('PEXPIRE', token, ARGV[3])
  return {'none'}
end
if redis.call('HGET', token, 'lines') ~= ARGV[1] then
  -- The token changed since the caller read it: read again.
  return {'retry'}
end
if string.find(',' .. ARGV[2] .. ',', ',' .. state .. ',', 1, true) then
  for i = 2, #KEYS do
    -- A counter that is gone (the cache was flushed) is reloaded from the store, which never had
    -- this reservation: nothing to give back there.
    if redis.call('EXISTS', KEYS[i]) == 1 then
      redis.call('HINCRBY', KEYS[i], 'available', tonumber(ARGV[2 + i]))
    end
  end
  redis.call('HSET', token, 'state', 'released')
  redis.call('PEXPIRE', token, ARGV[3])
end
return {'was', state}
