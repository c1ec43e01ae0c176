-- A token bucket shared by every process (GCRA on this server's clock): takes up to ARGV[3] tokens of
-- KEYS[1] at ARGV[1] per second, at most ARGV[2] at once. The key holds the theoretical arrival time in
-- microseconds; it expires once the bucket is full again. Answers {granted, wait_ms}: wait_ms, when
-- nothing was granted, is the time until one token is there.
local per_second, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = 1000000 / per_second
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then
    tat = now
end
-- Never more than a burst of debt, whatever the key held.
tat = math.min(tat, now + burst * interval)
local available = math.floor(burst - (tat - now) / interval + 1e-9)
if available < 1 then
    return {0, math.max(1, math.ceil((tat - now - (burst - 1) * interval) / 1000))}
end
local granted = math.min(want, available)
tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {granted, 0}
