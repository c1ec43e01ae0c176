-- master_id on a single server: its replication id (INFO; a replica promoted by Sentinel, or a server
-- restarted, gets a new one).
local function master_id()
  return string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
end
