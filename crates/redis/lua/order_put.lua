-- order_put: a copy of an order, stamped with the replication id of the master it is written on
-- (master_id), so that a copy a failover may have made stale is never read (order_get.lua).
-- KEYS[1]: the copy; ARGV[1]: the order (JSON), ARGV[2]: its time to live in ms
redis.call('SET', KEYS[1], master_id() .. ' ' .. ARGV[1], 'PX', ARGV[2])
return 1
