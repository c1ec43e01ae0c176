//! Worker: safe pay. Every payment attempt without a definite answer is asked about until it has one.

use super::Outcome;
use crate::buyer::OrderError;
use crate::orderly::Orderly;
use crate::ports::{PaymentResult, PaymentStatus, PortError};
use tracing::Instrument;

impl Orderly {
    /// Safe pay: asks the payment service about every attempt without a definite answer, until it has one.
    /// Service down → the entry waits for a later round, with backoff. One active instance: the process
    /// holding the `reconciler` lease (another takes over when it stops renewing).
    pub(super) async fn reconcile_step(&self) -> Result<Outcome, PortError> {
        if !self.hold_lease("reconciler").await? {
            return Ok(Outcome::default());
        }
        let now_ms = self.ports.clock.now_ms();
        // "Never charged" is concluded only once the charge deadline has passed by the monotonic clock: a
        // clock stepped forward must not end an attempt the service may still start.
        let due = self.ports.store.payments_due(now_ms, self.config().worker_batch_max).await?;
        let mut outcome = Outcome::default();
        for order_no in due {
            let Some(order) = self.ports.store.order(order_no).await? else { continue };
            let Some(attempt) = order.payment_attempt else { continue };
            let status = self.ports.payments.query(order_no).await;
            let result = match status {
                Ok(PaymentStatus::Succeeded { payment_id }) => Some(PaymentResult::Succeeded { payment_id }),
                Ok(PaymentStatus::Declined { reason }) => Some(PaymentResult::Declined { reason }),
                Ok(PaymentStatus::NotFound)
                    if self.ports.clock.judged_now_ms(attempt.started_ms) > attempt.charge_deadline_ms =>
                {
                    Some(PaymentResult::NeverCharged)
                }
                Ok(PaymentStatus::NotFound | PaymentStatus::Processing) | Err(_) => None,
            };
            let span = crate::trace::order_span(order_no, order.trace.as_deref());
            match result {
                Some(result) => {
                    tracing::debug!(target: crate::trace::TARGET, parent: &span, ?result, "reconciler settles the charge");
                    match self.settle_payment(order_no, result).instrument(span).await {
                        Ok(_) | Err(OrderError::Refused(_)) => {}
                        Err(OrderError::Unavailable(error)) => return Err(error),
                    }
                    outcome.done += 1;
                }
                None => {
                    let waited_ms = now_ms.saturating_sub(attempt.started_ms);
                    // The settings read once: a change landing between two reads could order the bounds
                    // the wrong way, and `clamp` panics on that.
                    let config = self.config();
                    let low = config.reconcile_backoff_ms;
                    let backoff_ms = waited_ms.clamp(low, config.reconcile_backoff_ms_max.max(low));
                    tracing::debug!(target: crate::trace::TARGET, parent: &span, backoff_ms, "charge still without an answer; asked again later");
                    self.ports.store.postpone_payment_check(order_no, now_ms + backoff_ms).await?;
                    outcome.retried += 1;
                }
            }
        }
        Ok(outcome)
    }
}
