-- master_id: the replication id of the master running the script. Every promotion gives the promoted
-- node a new one (a replica promoted after its master died, a former master promoted back after a
-- failback), and so does a restart: unlike a cluster node's id, which a node keeps for life, it tells
-- that the data set may not be the one the shop's keys were written on.
local function master_id()
  return string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
end
