-- read: the available units of a shop's counters (false for an absent one), after the guard, so a
-- counter a failover may have made stale is never read: the shop is reloaded first.
-- KEYS[i]: stock counter i
local levels = {}
for i = 1, #KEYS do
  levels[i] = redis.call('HGET', KEYS[i], 'available') or false
end
return levels
