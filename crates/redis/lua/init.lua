-- init: load stock counters that are absent; a present counter is never overwritten (it may hold live
-- reservations). The seed's init script.
-- KEYS[i]: stock counter of commodity i (one shop: one hash slot)
-- ARGV[2i-1], ARGV[2i]: its available units and the store version they were read at
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'available', ARGV[2 * i - 1], 'version', ARGV[2 * i])
  end
end
return 'ok'
