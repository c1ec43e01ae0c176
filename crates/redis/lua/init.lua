-- init: load stock counters that are absent; a present counter is never overwritten (it may hold live
-- reservations). The seed's init script. Changes parked for an absent counter (see follow) that are newer
-- than the store version read are counted by it, each version once.
-- KEYS[2i-1], KEYS[2i]: stock counter and parked list of commodity i (one shop: one hash slot)
-- ARGV[2i-1], ARGV[2i]: its available units and the store version they were read at
for i = 1, #KEYS, 2 do
  local counter, parked = KEYS[i], KEYS[i + 1]
  if redis.call('EXISTS', counter) == 0 then
    redis.call('HSET', counter, 'available', ARGV[i], 'version', ARGV[i + 1])
    for _, entry in ipairs(redis.call('LRANGE', parked, 0, -1)) do
      local at, delta = string.match(entry, '^(%d+):(-?%d+)$')
      if at and count(counter, at) then
        redis.call('HINCRBY', counter, 'available', tonumber(delta))
      end
    end
    redis.call('DEL', parked)
  end
end
return 'ok'
