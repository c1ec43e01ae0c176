-- forget: drops every key of a shop whose marker names another master (see guard), so the shop is as
-- after a whole loss — counters absent (reloaded from the store with the accepted orders' reservations),
-- tokens missing (never assumed) — and marks its keys as this master's. A shop already forgotten here
-- (by another caller) is left alone. Its keys share one slot: on a cluster they are that slot's keys with
-- the shop's prefix; on a single server, the prefix's keys (SCAN).
-- KEYS[1]: the shop's marker; ARGV[1]: the prefix of the shop's keys, ARGV[2]: the same as a SCAN pattern
local id = master_id()
if redis.call('GET', KEYS[1]) == id then
  return 0
end
local prefix = ARGV[1]
local doomed = {}
local slot = redis.pcall('CLUSTER', 'KEYSLOT', KEYS[1])
if type(slot) == 'number' then
  local count = redis.call('CLUSTER', 'COUNTKEYSINSLOT', slot)
  for _, key in ipairs(redis.call('CLUSTER', 'GETKEYSINSLOT', slot, count)) do
    if string.sub(key, 1, #prefix) == prefix then
      table.insert(doomed, key)
    end
  end
else
  local cursor = '0'
  repeat
    local page = redis.call('SCAN', cursor, 'MATCH', ARGV[2], 'COUNT', 1000)
    cursor = page[1]
    for _, key in ipairs(page[2]) do
      table.insert(doomed, key)
    end
  until cursor == '0'
end
for _, key in ipairs(doomed) do
  redis.call('DEL', key)
end
redis.call('SET', KEYS[1], id)
return #doomed
