-- due: up to ARGV[3] reservation checks of a shop due by ARGV[1], the earliest first, each moved to
-- ARGV[2] (handed out again then, unless done first: a worker that stops holding one delays it, never
-- loses it).
-- KEYS[1]: the shop's checks (sorted set: score = due time, member = `<order_no>:<generation>`)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member)
end
return due
