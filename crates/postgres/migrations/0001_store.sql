-- The order store. Orders and events are kept as JSON documents beside the columns queries need:
-- the flow reads and writes whole orders, and the store's own rules are in Rust.

CREATE TABLE commodities (
    commodity_id bigint PRIMARY KEY,
    shop_id bigint NOT NULL,
    unit_price_cents bigint NOT NULL CHECK (unit_price_cents >= 0)
);

-- The stock ledger: available never below zero, never above what was ever added.
CREATE TABLE stock (
    commodity_id bigint PRIMARY KEY REFERENCES commodities (commodity_id),
    shop_id bigint NOT NULL,
    initial bigint NOT NULL,
    available bigint NOT NULL CHECK (available >= 0 AND available <= initial),
    version bigint NOT NULL
);

-- The order number is (snowflake id, buyer shard): it sorts like its text form.
CREATE TABLE orders (
    order_id bigint NOT NULL,
    shard smallint NOT NULL,
    buyer bigint NOT NULL,
    state text NOT NULL,
    body text NOT NULL,
    PRIMARY KEY (order_id, shard)
);
CREATE INDEX orders_by_buyer ON orders (buyer, order_id DESC, shard DESC);

CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    event text NOT NULL
);

-- Payments without a definite answer, by the time the reconciler asks next.
CREATE TABLE safe_pay (
    order_id bigint NOT NULL,
    shard smallint NOT NULL,
    due_ms bigint NOT NULL,
    PRIMARY KEY (order_id, shard)
);
CREATE INDEX safe_pay_by_due ON safe_pay (due_ms);

CREATE TABLE idempotency (
    buyer bigint NOT NULL,
    key text NOT NULL,
    record text NOT NULL,
    PRIMARY KEY (buyer, key)
);

CREATE TABLE meta (
    key text PRIMARY KEY,
    value bigint NOT NULL
);
