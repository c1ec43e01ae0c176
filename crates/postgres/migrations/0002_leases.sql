-- Leases: one active instance of a role (the payment reconciler) among the worker processes.
CREATE TABLE leases (
    name text PRIMARY KEY,
    holder bigint NOT NULL,
    until_ms bigint NOT NULL
);
