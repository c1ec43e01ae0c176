-- init: load stock counters that are absent; a present counter is never overwritten (it may hold live
-- reservations). The seed's init script. Changes parked for an absent counter (see follow) that are newer
-- than the store version read are counted by it, each version once. Then the held reservations (accepted
-- orders not created yet) are made again, RESERVED: each whose token is absent and all of whose counters
-- this call loaded; any other is skipped whole.
-- KEYS[2i-1], KEYS[2i]: stock counter and parked list of commodity i (one shop: one hash slot), i <= n;
-- then KEYS[2n+j]: the token of held reservation j
-- ARGV[1]: n; ARGV[2i], ARGV[2i+1]: available units of commodity i and the store version they were read
-- at; then ARGV[2n+2]: token time to live (ms); then per held reservation: its lines encoded, its number
-- of lines k, k pairs (commodity index i, quantity), when its check is due ('': none) and its member in
-- the checks
-- then, last: the shop's reservation checks (a remade reservation's is armed with it)
local checks = table.remove(KEYS)
local n = tonumber(ARGV[1])
local loaded = {}
for i = 1, n do
  local counter, parked = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('EXISTS', counter) == 0 then
    redis.call('HSET', counter, 'available', ARGV[2 * i], 'version', ARGV[2 * i + 1])
    for _, entry in ipairs(redis.call('LRANGE', parked, 0, -1)) do
      local at, delta = string.match(entry, '^(%d+):(-?%d+)$')
      if at and count(counter, at) then
        redis.call('HINCRBY', counter, 'available', tonumber(delta))
      end
    end
    redis.call('DEL', parked)
    loaded[i] = true
  end
end
local ttl = ARGV[2 * n + 2]
local a = 2 * n + 3
for j = 2 * n + 1, #KEYS do
  local token, encoded, k = KEYS[j], ARGV[a], tonumber(ARGV[a + 1])
  local lines = {}
  local whole = redis.call('EXISTS', token) == 0
  for l = 1, k do
    local i, quantity = tonumber(ARGV[a + 2 * l]), tonumber(ARGV[a + 2 * l + 1])
    whole = whole and loaded[i] == true
    lines[l] = {i, quantity}
  end
  if whole then
    for _, line in ipairs(lines) do
      redis.call('HINCRBY', KEYS[2 * line[1] - 1], 'available', -line[2])
    end
    redis.call('HSET', token, 'state', 'reserved', 'lines', encoded)
    redis.call('PEXPIRE', token, ttl)
    if ARGV[a + 2 + 2 * k] ~= '' then
      redis.call('ZADD', checks, ARGV[a + 2 + 2 * k], ARGV[a + 3 + 2 * k])
    end
  end
  a = a + 4 + 2 * k
end
return 'ok'
