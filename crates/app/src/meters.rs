//! What the flow counts, for `GET /metrics`, through the `metrics` facade (a no-op in a process that
//! installed no recorder, as in most tests). Names and labels are listed in docs/ARCHITECTURE.md
//! ("What an operator sees").

/// Order events, by `event`: `accepted` (orders) and `sold_out` (carts) at the entry — a replayed
/// answer to an Idempotency-Key counts nothing — `created` and `rejected` (the create worker), `paid`,
/// `cancelled`, `closed`.
pub const ORDER_EVENTS: &str = "orderly_order_events_total";
/// Charges by `outcome`: `succeeded`, `declined`, `no_answer` (left to the reconciler).
pub const PAYMENTS: &str = "orderly_payments_total";
/// How long a charge call took, in seconds (answered or not).
pub const PAYMENT_SECONDS: &str = "orderly_payment_seconds";
/// Reservation checks that found a reservation without its order and gave its stock back.
pub const STOCK_RETURNED_BY_CHECK: &str = "orderly_reservation_checks_returned_stock_total";

/// Gives each series its help text (once, when the process installs its recorder).
pub fn describe() {
    metrics::describe_counter!(
        ORDER_EVENTS,
        "Order events: accepted orders, sold_out carts, created, rejected, paid, cancelled, closed orders"
    );
    metrics::describe_counter!(PAYMENTS, "Charge calls by outcome: succeeded, declined, no_answer");
    metrics::describe_histogram!(PAYMENT_SECONDS, metrics::Unit::Seconds, "How long a charge call took");
    metrics::describe_counter!(STOCK_RETURNED_BY_CHECK, "Reservation checks that gave a reservation's stock back");
}

pub fn order_events(event: &'static str, count: usize) {
    metrics::counter!(ORDER_EVENTS, "event" => event).increment(count as u64);
}

pub fn payment(outcome: &'static str, took_ms: u64) {
    metrics::counter!(PAYMENTS, "outcome" => outcome).increment(1);
    metrics::histogram!(PAYMENT_SECONDS).record(took_ms as f64 / 1_000.0);
}

pub fn stock_returned_by_check() {
    metrics::counter!(STOCK_RETURNED_BY_CHECK).increment(1);
}
