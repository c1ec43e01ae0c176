-- follow: a store change a counter may not count yet (a lost reservation's deduction, a restock). A
-- counter loaded before the change's version takes it; one loaded at or after it counts it already; an
-- absent counter keeps it in its parked list, which init applies to what it loads.
-- Prepended to the scripts that call it (a Redis script cannot call another).
local function follow(counter, parked, quantity, version, sign, ttl)
  local loaded = redis.call('HGET', counter, 'version')
  if loaded then
    if tonumber(loaded) < tonumber(version) then
      redis.call('HINCRBY', counter, 'available', sign * tonumber(quantity))
    end
  else
    redis.call('RPUSH', parked, version .. ':' .. string.format('%d', sign * tonumber(quantity)))
    redis.call('PEXPIRE', parked, ttl)
  end
end

