//! The buyer's actions on their orders: query, list, pay, cancel (and the system's pay-at-once charge,
//! which pays as the buyer asked).

use orderly_domain::{OrderAction, OrderNo, TransitionRejection, Uid};

use crate::model::{Order, PaymentAttempt};
use crate::orderly::Orderly;
use crate::ports::{ChangeRejection, ChargeOutcome, ChargeRequest, PaymentResult, PortError};
use crate::trace::{TARGET as TRACE, order_span};
use tracing::Instrument;

/// A buyer's or the system's action on an order: refused by the rules (the same refusals a store's
/// change gives, one type for both), or not done because a dependency is unavailable.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error(transparent)]
    Refused(#[from] ChangeRejection),
    #[error(transparent)]
    Unavailable(#[from] PortError),
}

impl From<TransitionRejection> for OrderError {
    fn from(rejection: TransitionRejection) -> Self {
        OrderError::Refused(ChangeRejection::Transition(rejection))
    }
}

impl OrderError {
    pub(crate) const NOT_FOUND: OrderError = OrderError::Refused(ChangeRejection::NotFound);
}

/// How a pay request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayOutcome {
    Paid(Box<Order>),
    Declined {
        order: Box<Order>,
        reason: String,
    },
    /// No definite answer yet: the order is in the safe-pay set and the reconciler will settle it.
    Pending(Box<Order>),
}

/// Who asks: a buyer sees and touches only their own orders; the system acts on any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Buyer(Uid),
    System,
}

impl Orderly {
    /// An order as the caller may see it (from the order cache when there is one). Another buyer's order
    /// is "not found", not "forbidden". The system (a worker running a pay-at-once charge) reads the
    /// store, the record it acts on, and leaves the cache alone: waiting on a cache that is failing over
    /// would hold its message where nothing counts it.
    pub async fn order(&self, actor: Actor, order_no: OrderNo) -> Result<Order, OrderError> {
        let buyer = match actor {
            Actor::Buyer(uid) => Some(uid),
            Actor::System => None,
        };
        let cached = match buyer {
            Some(_) => self.cached_order(order_no).await,
            None => Ok(None),
        };
        // A copy is put back after a buyer's miss, not after the cache failed (that would wait again).
        let put_back = buyer.is_some() && cached.is_ok();
        let order = match cached {
            Ok(Some(order)) => order,
            _ => {
                let order =
                    self.bounded("store", self.ports.store.order(order_no)).await?.ok_or(OrderError::NOT_FOUND)?;
                if put_back {
                    self.cache_order(&order).await;
                }
                order
            }
        };
        match buyer {
            Some(uid) if uid != order.buyer => Err(OrderError::NOT_FOUND),
            _ => Ok(order),
        }
    }

    pub async fn orders_of(&self, buyer: Uid, before: Option<OrderNo>, limit: usize) -> Result<Vec<Order>, PortError> {
        self.bounded("store", self.ports.store.orders_of(buyer, before, limit.clamp(1, self.config().page_size_max)))
            .await
    }

    pub async fn cancel(&self, actor: Actor, order_no: OrderNo) -> Result<Order, OrderError> {
        let order = self.order(actor, order_no).await?;
        let span = order_span(order_no, order.trace.as_deref());
        self.cancel_order(order_no).instrument(span).await
    }

    async fn cancel_order(&self, order_no: OrderNo) -> Result<Order, OrderError> {
        let order = self
            .bounded("store", self.ports.store.transition(order_no, OrderAction::Cancel, self.ports.clock.now_ms()))
            .await??;
        self.orders_changed(vec![order_no]).await;
        crate::meters::order_events("cancelled", 1);
        tracing::info!(%order_no, buyer = %order.buyer, "order cancelled; buyer notified");
        Ok(order)
    }

    /// Pays through the FSM: the attempt is recorded in the safe-pay set *before* the charge is sent,
    /// so a crash or a lost answer leaves a trace the reconciler settles (remark 6, forced completion).
    pub async fn pay(&self, actor: Actor, order_no: OrderNo) -> Result<PayOutcome, OrderError> {
        let order = self.order(actor, order_no).await?;
        let span = order_span(order_no, order.trace.as_deref());
        self.pay_order(order_no).instrument(span).await
    }

    async fn pay_order(&self, order_no: OrderNo) -> Result<PayOutcome, OrderError> {
        let now_ms = self.ports.clock.now_ms();
        let attempt =
            PaymentAttempt { started_ms: now_ms, charge_deadline_ms: now_ms + self.config().payment_call_timeout_ms };
        let order = self.bounded("store", self.ports.store.begin_payment(order_no, attempt)).await??;
        self.orders_changed(vec![order_no]).await;
        let request = ChargeRequest {
            order_no,
            amount: order.total,
            // One key per attempt: a retry of this attempt is idempotent, a new attempt after a decline
            // may charge, and the service never charges an order that already has a success.
            idempotency_key: format!("{order_no}-{}", attempt.started_ms),
            deadline_ms: attempt.charge_deadline_ms,
            trace: order.trace.clone(),
        };
        tracing::debug!(target: TRACE, amount = %order.total, key = %request.idempotency_key, "charge sent");
        let sent_ms = self.ports.clock.now_ms();
        let answer = crate::time::within(
            &*self.ports.clock,
            self.config().payment_call_timeout_ms,
            self.ports.payments.charge(request),
        )
        .await
        .unwrap_or_else(|| Err(PortError::unavailable("payments", "charge timed out")));
        let took_ms = self.ports.clock.now_ms().saturating_sub(sent_ms);
        crate::meters::payment(
            match &answer {
                Ok(ChargeOutcome::Succeeded { .. }) => "succeeded",
                Ok(ChargeOutcome::Declined { .. }) => "declined",
                Err(_) => "no_answer",
            },
            took_ms,
        );
        let result = match answer {
            Ok(ChargeOutcome::Succeeded { payment_id }) => PaymentResult::Succeeded { payment_id },
            Ok(ChargeOutcome::Declined { reason }) => PaymentResult::Declined { reason },
            Err(error) => {
                tracing::warn!(%order_no, %error, "charge without a definite answer; left to the reconciler");
                let later = self.ports.clock.now_ms() + self.config().reconcile_backoff_ms;
                // The attempt is in the safe-pay set already: without the postponement the reconciler
                // asks at the charge deadline instead. Never an error answer for a charge that may be done.
                if let Err(error) = self.ports.store.postpone_payment_check(order_no, later).await {
                    tracing::warn!(%order_no, %error, "safe-pay check not postponed; the reconciler asks at the deadline");
                }
                return Ok(PayOutcome::Pending(Box::new(order)));
            }
        };
        match self.settle_payment(order_no, result).await {
            // The service answered but the order could not be moved on: the attempt is in the safe-pay
            // set, and the reconciler settles it from the same ledger. The buyer hears "pending", not an
            // error for a payment that may have taken their money.
            Err(OrderError::Unavailable(error)) => {
                tracing::warn!(%order_no, %error, "charge answered, order not updated; left to the reconciler");
                Ok(PayOutcome::Pending(Box::new(order)))
            }
            other => other,
        }
    }

    pub(crate) async fn settle_payment(
        &self,
        order_no: OrderNo,
        result: PaymentResult,
    ) -> Result<PayOutcome, OrderError> {
        let declined = match &result {
            PaymentResult::Declined { reason } => Some(reason.clone()),
            PaymentResult::NeverCharged => Some("the charge never reached the payment service".to_owned()),
            PaymentResult::Succeeded { .. } => None,
        };
        let order = self.ports.store.finish_payment(order_no, result, self.ports.clock.now_ms()).await??;
        self.orders_changed(vec![order_no]).await;
        Ok(match declined {
            None => {
                crate::meters::order_events("paid", 1);
                tracing::info!(%order_no, buyer = %order.buyer, "order paid; buyer notified");
                PayOutcome::Paid(Box::new(order))
            }
            // A pay-at-once attempt without an answer: the system charges again (`store_rules::finish_attempt`).
            Some(_) if crate::store_rules::charge_owed(&order) => PayOutcome::Pending(Box::new(order)),
            Some(reason) => PayOutcome::Declined { order: Box::new(order), reason },
        })
    }
}
