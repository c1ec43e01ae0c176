-- admit: the gate of the buyer's caps, the rule of orderly_app::caps::judge (same cases, same contract
-- suite). The cart's orders pass if the units of each of its commodities and the unpaid orders stay
-- within the caps, counting the buyer's orders as the store read them and those admitted here lately
-- (not read by the store yet); the store's word wins for an order it read. A pass records the cart's new
-- orders; a refusal records nothing.
-- KEYS[1]: the buyer's admitted orders, hash order number -> 'at_ms|id:qty;id:qty'
-- ARGV[1]: now (ms); ARGV[2]: how long an admitted order counts (ms); ARGV[3]: units cap (0: off);
-- ARGV[4]: unpaid cap (0: off); ARGV[5]: k, the orders the store read; then k triples (order number,
-- 'u' unpaid / 'p' paid / 'f' free, lines); then pairs (order number, lines) of the cart's orders
local key = KEYS[1]
local now, recent_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local units_cap, unpaid_cap, k = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])

local function lines_of(text)
  local lines = {}
  for id, quantity in string.gmatch(text, '(%d+):(%d+)') do
    table.insert(lines, {id, tonumber(quantity)})
  end
  return lines
end

local function units(orders, id)
  local sum = 0
  for _, order in ipairs(orders) do
    for _, line in ipairs(order.lines) do
      if line[1] == id then
        sum = sum + line[2]
      end
    end
  end
  return sum
end

local seen, counted = {}, {}
for i = 0, k - 1 do
  local no, holding = ARGV[6 + 3 * i], ARGV[7 + 3 * i]
  seen[no] = true
  if holding ~= 'f' then
    table.insert(counted, {unpaid = holding == 'u', lines = lines_of(ARGV[8 + 3 * i])})
  end
end
local stored = redis.call('HGETALL', key)
for i = 1, #stored, 2 do
  local no = stored[i]
  local at, lines = string.match(stored[i + 1], '^(%d+)|(.*)$')
  if at == nil or tonumber(at) + recent_ms < now then
    redis.call('HDEL', key, no)
  elseif not seen[no] then
    seen[no] = true
    table.insert(counted, {unpaid = true, lines = lines_of(lines)})
  end
end
local fresh = {}
for i = 6 + 3 * k, #ARGV, 2 do
  if not seen[ARGV[i]] then
    table.insert(fresh, {no = ARGV[i], text = ARGV[i + 1], lines = lines_of(ARGV[i + 1])})
  end
end
if #fresh == 0 then
  return {'admitted'}
end
if units_cap > 0 then
  for _, order in ipairs(fresh) do
    for _, line in ipairs(order.lines) do
      local held = units(counted, line[1])
      if held + units(fresh, line[1]) > units_cap then
        return {'purchase_cap', line[1], tostring(held)}
      end
    end
  end
end
if unpaid_cap > 0 then
  local held = 0
  for _, order in ipairs(counted) do
    if order.unpaid then
      held = held + 1
    end
  end
  if held + #fresh > unpaid_cap then
    return {'unpaid_cap', tostring(held)}
  end
end
for _, order in ipairs(fresh) do
  redis.call('HSET', key, order.no, ARGV[1] .. '|' .. order.text)
end
redis.call('PEXPIRE', key, recent_ms)
return {'admitted'}
