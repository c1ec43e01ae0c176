-- The accepted orders not created yet (their `pending` views), found without reading every order: a
-- stock counter reloaded into the cache holds their units back (Store::pending_orders).
CREATE INDEX IF NOT EXISTS orders_pending ON orders (order_id, shard) WHERE state = 'pending';
