-- done: forgets the reservation checks ARGV[2..] of a shop that are still due at ARGV[1], the time `due`
-- moved them to when it handed them out; one armed again since (a reload made its reservation again)
-- stays.
-- KEYS[1]: the shop's checks
local forgotten = 0
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[1]) then
    forgotten = forgotten + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return forgotten
