-- count: whether the store change at `version` is news to a counter; from then on it is counted. The
-- counter's `version` field says every change up to it is counted (at load: the version read); fields
-- `c:<version>` hold the few above it counted out of order, folded into it as the gaps below them fill.
-- So a change reported again is never counted twice, however late (a create redelivered after its
-- confirmed token expired, a restock after its marker expired).
-- follow: a store change a counter may not count yet (a lost reservation's deduction, a restock),
-- applied once; an absent counter keeps it in its parked list, which init applies to what it loads.
-- Prepended to the scripts that call them (a Redis script cannot call another).
local function count(counter, version)
  local through = tonumber(redis.call('HGET', counter, 'version'))
  version = tonumber(version)
  if version <= through or redis.call('HSETNX', counter, 'c:' .. string.format('%d', version), '1') == 0 then
    return false
  end
  while redis.call('HDEL', counter, 'c:' .. string.format('%d', through + 1)) == 1 do
    through = through + 1
  end
  redis.call('HSET', counter, 'version', string.format('%d', through))
  return true
end

local function follow(counter, parked, quantity, version, sign, ttl)
  if redis.call('EXISTS', counter) == 1 then
    if count(counter, version) then
      redis.call('HINCRBY', counter, 'available', sign * tonumber(quantity))
    end
  else
    redis.call('RPUSH', parked, version .. ':' .. string.format('%d', sign * tonumber(quantity)))
    redis.call('PEXPIRE', parked, ttl)
  end
end

