-- restock: stock returned to the store comes back to the cache once per event; a counter loaded at or
-- after the event's store version already counts it; an absent counter will be loaded from the store.
-- KEYS[1]: the event's marker; KEYS[1+i]: stock counter of line i
-- ARGV[1]: marker time to live (ms); ARGV[2i], ARGV[2i+1]: quantity and store version of line i
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) == false then
  return 'seen'
end
for i = 2, #KEYS do
  local version = redis.call('HGET', KEYS[i], 'version')
  if version and tonumber(version) < tonumber(ARGV[2 * (i - 1) + 1]) then
    redis.call('HINCRBY', KEYS[i], 'available', tonumber(ARGV[2 * (i - 1)]))
  end
end
return 'applied'
