-- guard: a shop's keys are trusted only on the master that wrote them. Redis replicates asynchronously,
-- so a replica promoted after its master died may lack the master's last writes (reservations, counter
-- changes) on its shards while every other shard keeps its own. Each shop's slot holds a marker, the
-- replication id of the master its keys were written on (master_id); a promoted replica, a former
-- master promoted back, or a restarted master has another, so every script on
-- a shop first compares the two and answers 'stale' on a difference: the caller then forgets the shop's
-- keys (forget.lua) and it is reloaded from the store as after a whole loss. Prepended to every script on
-- a shop's keys, after master_id; the marker is their last key, taken off KEYS here so each script sees
-- only its own keys.
local marker = table.remove(KEYS)
do
  local id, seen = master_id(), redis.call('GET', marker)
  if not seen then
    -- The shop's first write on this master, or its keys were forgotten: they start here.
    redis.call('SET', marker, id)
  elseif seen ~= id then
    return 'stale'
  end
end
