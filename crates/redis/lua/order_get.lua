-- order_get: a copy of an order, only if it was written on the master running the script. Replication
-- is asynchronous: a replica promoted after its master died may lack the master's last deletes, and a
-- delete that failed while the master was down leaves the copy on the replica that takes over — either
-- way an old copy (an order "to pay" that was paid since). Every promotion gives the promoted node a new
-- replication id, so such a copy, and one of an earlier build without a stamp, is dropped and missed:
-- the store answers.
-- KEYS[1]: the copy
local copy = redis.call('GET', KEYS[1])
if not copy then
  return false
end
local space = string.find(copy, ' ', 1, true)
if not space or string.sub(copy, 1, space - 1) ~= master_id() then
  redis.call('DEL', KEYS[1])
  return false
end
return string.sub(copy, space + 1)
