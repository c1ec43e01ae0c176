-- checked: prepended to reserve (after guard) for reserve_checked: the last key is the shop's checks (a
-- sorted set, score = when the check is due), the last two arguments the check's time and member (the
-- token, `<order_no>:<generation>`).
local checks = table.remove(KEYS)
local check_member = table.remove(ARGV)
local check_at = table.remove(ARGV)
