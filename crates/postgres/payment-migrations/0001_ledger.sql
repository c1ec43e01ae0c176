-- The payment service's ledger (its own schema, never the order store's): one entry per order, and the
-- simulated acquirer's record per attempt (first writer wins: the primary key).
CREATE TABLE payment_ledger (
    order_no text PRIMARY KEY,
    idempotency_key text NOT NULL,
    state text NOT NULL,
    body text NOT NULL
);

CREATE TABLE acquirer_records (
    capture_id text PRIMARY KEY,
    order_no text NOT NULL,
    outcome text NOT NULL,
    body text NOT NULL
);
