//! What the flow counts, for `GET /metrics`, through the `metrics` facade (a no-op in a process that
//! installed no recorder, as in most tests). Names and labels are listed in docs/ARCHITECTURE.md
//! ("What an operator sees").

/// Order events, by `event`: `accepted` (orders), `sold_out` and `capped` (carts refused by a buyer's cap) at the entry — a replayed
/// answer to an Idempotency-Key counts nothing — `created` and `rejected` (the create worker), `paid`,
/// `cancelled`, `closed`.
pub const ORDER_EVENTS: &str = "orderly_order_events_total";
/// Charges by `outcome`: `succeeded`, `declined`, `no_answer` (left to the reconciler).
pub const PAYMENTS: &str = "orderly_payments_total";
/// How long a charge call took, in seconds (answered or not).
pub const PAYMENT_SECONDS: &str = "orderly_payment_seconds";
/// How long each message a worker received had waited past its due time, by `topic` (seconds).
pub const BUS_WAIT_SECONDS: &str = "orderly_bus_wait_seconds";
/// The longest such wait in a worker's last receive, by `topic` (0 when it found nothing waiting): the
/// age of the queue's oldest message as a worker last saw it (the queues hand out the oldest first).
pub const BUS_OLDEST_AGE_SECONDS: &str = "orderly_bus_oldest_age_seconds";
/// How long each step of the entry took for one cart, by `step` (seconds, from the Clock port's
/// milliseconds): `guards` (the reservation checks published), `reserve` (the cart's reservations),
/// `pending` (the pending views written, and the creates with them where the store writes its bus's
/// messages), `creates` (the creates published elsewhere), `claim` (the reservations claimed for their
/// creates — beside the answer when the cache is remote). A refused cart records the steps it passed.
pub const ENTRY_STEP_SECONDS: &str = "orderly_entry_step_seconds";
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
    metrics::describe_histogram!(
        ENTRY_STEP_SECONDS,
        metrics::Unit::Seconds,
        "How long each step of the entry took for one cart: guards, reserve, pending, creates, claim"
    );
    metrics::describe_counter!(STOCK_RETURNED_BY_CHECK, "Reservation checks that gave a reservation's stock back");
    metrics::describe_histogram!(
        BUS_WAIT_SECONDS,
        metrics::Unit::Seconds,
        "How long a message waited past its due time when a worker received it"
    );
    metrics::describe_gauge!(
        BUS_OLDEST_AGE_SECONDS,
        metrics::Unit::Seconds,
        "The oldest message's wait past its due time in a worker's last receive (0: none waiting)"
    );
}

pub fn order_events(event: &'static str, count: usize) {
    metrics::counter!(ORDER_EVENTS, "event" => event).increment(count as u64);
}

pub fn payment(outcome: &'static str, took_ms: u64) {
    metrics::counter!(PAYMENTS, "outcome" => outcome).increment(1);
    metrics::histogram!(PAYMENT_SECONDS).record(took_ms as f64 / 1_000.0);
}

/// A worker's receive on `topic`: each message's wait (`now - due`), and the oldest one's.
pub fn received(topic: crate::model::Topic, now_ms: u64, due_ms: impl Iterator<Item = u64>) {
    let mut oldest_ms = 0;
    for due_ms in due_ms {
        let waited_ms = now_ms.saturating_sub(due_ms);
        oldest_ms = oldest_ms.max(waited_ms);
        metrics::histogram!(BUS_WAIT_SECONDS, "topic" => topic.as_str()).record(waited_ms as f64 / 1_000.0);
    }
    metrics::gauge!(BUS_OLDEST_AGE_SECONDS, "topic" => topic.as_str()).set(oldest_ms as f64 / 1_000.0);
}

pub fn stock_returned_by_check() {
    metrics::counter!(STOCK_RETURNED_BY_CHECK).increment(1);
}

/// One step of the entry for one cart, and how long it took.
pub fn entry_step(step: &'static str, took_ms: u64) {
    metrics::histogram!(ENTRY_STEP_SECONDS, "step" => step).record(took_ms as f64 / 1_000.0);
}
