-- restock: stock returned to the store comes back to the cache once per event, followed like a lost
-- reservation's deduction (see follow).
-- KEYS[1]: the event's marker; KEYS[2j], KEYS[2j+1]: counter and parked list of line j
-- ARGV[1]: marker time to live (ms); ARGV[2j], ARGV[2j+1]: quantity of line j and its store version
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) == false then
  return 'seen'
end
for i = 2, #KEYS, 2 do
  follow(KEYS[i], KEYS[i + 1], ARGV[i], ARGV[i + 1], 1, ARGV[1])
end
return 'applied'
