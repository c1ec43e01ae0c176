-- unchecked: prepended to reserve (after guard) for a reserve that arms no check.
local checks, check_at, check_member = nil, nil, nil
