-- reserve: all lines or none, idempotent per token. Lua scripts are atomic but cannot roll back, so
-- every line is checked before any is written.
-- KEYS[1]: the token; KEYS[1+i]: stock counter of line i
-- (reserve_checked: the shop's checks, a sorted set, and the check's time and member were taken off the
-- ends of KEYS and ARGV first, by checked.lua; plain reserve: unchecked.lua)
-- ARGV[1]: state to record ('reserved', or 'claimed' for a worker's own reservation)
-- ARGV[2]: token time to live (ms); ARGV[3]: the lines, encoded; ARGV[3+i]: quantity of line i
local token = KEYS[1]
if redis.call('EXISTS', token) == 1 then
  return {'held', redis.call('HGET', token, 'state')}
end
local missing = {'not_loaded'}
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    table.insert(missing, tostring(i - 1))
  end
end
if #missing > 1 then
  return missing
end
for i = 2, #KEYS do
  local available = tonumber(redis.call('HGET', KEYS[i], 'available'))
  if available < tonumber(ARGV[2 + i]) then
    return {'insufficient', tostring(i - 1), tostring(available)}
  end
end
for i = 2, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'available', -tonumber(ARGV[2 + i]))
end
redis.call('HSET', token, 'state', ARGV[1], 'lines', ARGV[3])
-- The reservation's check, in the same step (reserve_checked): it lives exactly as long as the reservation.
if checks then
  redis.call('ZADD', checks, check_at, check_member)
end
-- A claimed token (a worker's own) lives until its create settles it; a reserved one expires.
if ARGV[1] ~= 'claimed' then
  redis.call('PEXPIRE', token, ARGV[2])
end
return {'reserved'}
