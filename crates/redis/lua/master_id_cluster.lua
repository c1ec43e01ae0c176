-- master_id on a Redis Cluster: the node's id (cheap); a replica promoted has its own.
local function master_id()
  return redis.call('CLUSTER', 'MYID')
end
