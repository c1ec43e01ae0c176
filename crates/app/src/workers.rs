//! The consumers that finish the flow. Each is steppable: `try_execute` does one bounded step and says
//! what it did, so tests drive them without sleeping; [`run`] loops a step until shutdown.

use std::time::Duration;

use futures_util::StreamExt;

use orderly_domain::{OrderAction, OrderState};

use crate::flow::{OrderError, Orderly, PayOutcome};
use crate::model::{Delivery, Message, Order, OutboxEvent, Outgoing, Token, TokenState, Topic};
use crate::ports::{Claim, CreateOutcome, CreateRequest, PaymentResult, PaymentStatus, PortError, Reserve};

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Messages, events or payments handled to completion.
    pub done: usize,
    /// Handed back for a later try.
    pub retried: usize,
}

impl Outcome {
    pub fn is_idle(self) -> bool {
        self.done == 0 && self.retried == 0
    }
}

/// Every step the system needs, in one place, so a runner or a test can drive them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    CreateOrders,
    ReservationChecks,
    UnpaidTimeouts,
    Charges,
    Outbox,
    Reconcile,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::CreateOrders,
        Step::ReservationChecks,
        Step::UnpaidTimeouts,
        Step::Charges,
        Step::Outbox,
        Step::Reconcile,
    ];
}

impl Orderly {
    pub async fn try_execute(&self, step: Step) -> Result<Outcome, PortError> {
        match step {
            Step::CreateOrders => self.create_orders_step().await,
            Step::ReservationChecks => self.consume(Topic::ReservationCheck).await,
            Step::UnpaidTimeouts => self.consume(Topic::UnpaidTimeout).await,
            Step::Charges => self.consume(Topic::Charge).await,
            Step::Outbox => self.relay_outbox_step().await,
            Step::Reconcile => self.reconcile_step().await,
        }
    }

    /// Runs every step until nothing is left to do now (timers not yet due stay). Bounded.
    pub async fn drain(&self) -> Result<Outcome, PortError> {
        let mut total = Outcome::default();
        for _ in 0..10_000 {
            let mut round = Outcome::default();
            for step in Step::ALL {
                let outcome = self.try_execute(step).await?;
                round.done += outcome.done;
                round.retried += outcome.retried;
            }
            total.done += round.done;
            total.retried += round.retried;
            if round.done == 0 {
                return Ok(total);
            }
        }
        Ok(total)
    }

    /// Worker: create orders, a batch per step (remarks 3–5).
    async fn create_orders_step(&self) -> Result<Outcome, PortError> {
        let deliveries = self.bus.receive(Topic::CreateOrder, self.config.worker_batch_max).await?;
        if deliveries.is_empty() {
            return Ok(Outcome::default());
        }
        let mut outcome = Outcome::default();
        let mut batch = Vec::with_capacity(deliveries.len());
        let mut receipts = Vec::with_capacity(deliveries.len());
        let now_ms = self.clock.now_ms();
        for delivery in deliveries {
            let Message::CreateOrder(order) = &delivery.message else {
                self.bus.dead_letter(&delivery.receipt, "not a create-order message").await?;
                continue;
            };
            let order = (**order).clone();
            match self.hold_stock_for(&order).await {
                Ok(token) => {
                    batch.push(CreateRequest {
                        token,
                        unpaid_deadline_ms: now_ms + self.config.unpaid_timeout_ms,
                        order,
                    });
                    receipts.push(delivery.receipt);
                }
                Err(error) => {
                    outcome.retried += 1;
                    if self.retry_or_dead_letter(&delivery, &error).await? == Fate::DeadLettered {
                        // Never created: nothing may stay held for it.
                        for token in [order.entry_token(), order.worker_token()] {
                            self.cache.release(token).await?;
                        }
                    }
                }
            }
        }
        if batch.is_empty() {
            return Ok(outcome);
        }
        let results = match self.store.create_orders(&batch, now_ms).await {
            Ok(results) => results,
            Err(error) => {
                // Tokens stay CLAIMED: the redelivery finds them so and carries on.
                tracing::warn!(%error, orders = batch.len(), "create batch failed; will be redelivered");
                let at_ms = self.clock.now_ms() + self.config.redelivery_delay_ms;
                for receipt in &receipts {
                    self.bus.retry(receipt, at_ms).await?;
                }
                outcome.retried += receipts.len();
                return Ok(outcome);
            }
        };
        // Also on a redelivery: the worker that created it may have died before deleting the copies.
        self.orders_changed(batch.iter().map(|r| r.order.order_no).collect()).await;
        for (request, result) in batch.iter().zip(results) {
            let order_no = request.order.order_no;
            let token = request.token;
            match result {
                CreateOutcome::Created(order) => {
                    if let Some(token) = token {
                        self.cache.confirm(token, &order.deductions()).await?;
                    }
                    tracing::debug!(%order_no, "order created; buyer notified");
                }
                CreateOutcome::Rejected { commodity_id } => {
                    if let Some(token) = token {
                        self.cache.release(token).await?;
                    }
                    tracing::info!(%order_no, %commodity_id, "order rejected: stock ran out after acceptance");
                }
                CreateOutcome::AlreadyDone(existing) => self.settle_tokens(&existing, true).await?,
            }
        }
        self.bus.ack(&receipts).await?;
        outcome.done += receipts.len();
        Ok(outcome)
    }

    /// The reservation this order's creation will consume: its entry token claimed, or a fresh one if
    /// that was released or lost. `None`: no stock in the cache, the order will be rejected.
    async fn hold_stock_for(&self, order: &Order) -> Result<Option<Token>, PortError> {
        let existing = self.store.order(order.order_no).await?;
        if existing.is_some_and(|o| o.state != OrderState::Pending) {
            // A redelivery of a finished creation: the store reports it as already done.
            return Ok(None);
        }
        match self.cache.claim(order.entry_token()).await? {
            Claim::Claimed | Claim::Confirmed => return Ok(Some(order.entry_token())),
            Claim::Released | Claim::Missing => {}
        }
        let token = order.worker_token();
        match self.reserve(token, &order.stock_lines(), true).await? {
            Reserve::Reserved | Reserve::AlreadyHeld(TokenState::Reserved | TokenState::Claimed) => Ok(Some(token)),
            // Released before it was reserved: the entry answered an error for this cart and refused
            // its late create (or the check released it); consumed already: the store says so.
            Reserve::AlreadyHeld(TokenState::Released | TokenState::Confirmed)
            | Reserve::Insufficient { .. }
            | Reserve::NotLoaded(_) => Ok(None),
        }
    }

    /// For an order past `pending`: the reservation its creation consumed is confirmed, any other is
    /// released (a rejected order consumed none). Idempotent.
    ///
    /// `deductions`: whether the confirmation tells a cache that lost the token what the store took. Only
    /// the create path does, right after its commit (or on its redelivery): a lost token's deduction is
    /// applied once, and a token the cache remembers confirmed is never applied twice. A reservation check
    /// may come much later, when even a confirmed token has expired; it confirms without deductions.
    async fn settle_tokens(&self, order: &Order, deductions: bool) -> Result<(), PortError> {
        for token in [order.entry_token(), order.worker_token()] {
            if order.state != OrderState::Rejected && order.token_generation == Some(token.generation) {
                let changes = if deductions { order.deductions() } else { Vec::new() };
                self.cache.confirm(token, &changes).await?;
            } else {
                self.cache.release(token).await?;
            }
        }
        Ok(())
    }

    /// A message whose handling failed. A dependency that is down (a retryable error) never sends it to
    /// the dead letters: the flow waits for the dependency, backing off to `redelivery_delay_ms_max`, so an
    /// accepted order is created however long the outage (forced completion). Only a message that fails
    /// for another reason `delivery_attempts_max` times is dead-lettered, for an operator.
    async fn retry_or_dead_letter(&self, delivery: &Delivery, error: &PortError) -> Result<Fate, PortError> {
        if !error.retryable && delivery.attempt >= self.config.delivery_attempts_max {
            tracing::error!(attempt = delivery.attempt, %error, "message failed too often; dead-lettered");
            self.bus.dead_letter(&delivery.receipt, &error.to_string()).await?;
            return Ok(Fate::DeadLettered);
        }
        let doublings = delivery.attempt.saturating_sub(1).min(16);
        let delay_ms = self
            .config
            .redelivery_delay_ms
            .saturating_mul(1 << doublings)
            .min(self.config.redelivery_delay_ms_max.max(self.config.redelivery_delay_ms));
        self.bus.retry(&delivery.receipt, self.clock.now_ms() + delay_ms).await?;
        Ok(Fate::Retried)
    }

    /// Consumers of the one-message-at-a-time topics. The messages of a batch are handled concurrently
    /// (each is about one order; the store serialises what touches the same one), so their commits
    /// share group-commit syncs, and the done ones are acked together.
    async fn consume(&self, topic: Topic) -> Result<Outcome, PortError> {
        let deliveries = self.bus.receive(topic, self.config.worker_batch_max).await?;
        let handled: Vec<(Delivery, Result<Handled, PortError>)> = futures_util::stream::iter(deliveries)
            .map(|delivery| async move {
                let result = self.handle(&delivery.message).await;
                (delivery, result)
            })
            .buffer_unordered(self.config.worker_concurrency_max.max(1))
            .collect()
            .await;
        let mut outcome = Outcome::default();
        let mut done = Vec::new();
        for (delivery, result) in handled {
            match result {
                Ok(Handled::Done) => {
                    done.push(delivery.receipt);
                    outcome.done += 1;
                }
                Ok(Handled::Later(at_ms)) => {
                    self.bus.retry(&delivery.receipt, at_ms).await?;
                    outcome.retried += 1;
                }
                Err(error) => {
                    tracing::warn!(topic = topic.as_str(), %error, "message handling failed");
                    self.retry_or_dead_letter(&delivery, &error).await?;
                    outcome.retried += 1;
                }
            }
        }
        if !done.is_empty() {
            self.bus.ack(&done).await?;
        }
        Ok(outcome)
    }

    async fn handle(&self, message: &Message) -> Result<Handled, PortError> {
        match message {
            Message::ReservationCheck { token } => self.check_reservation(*token).await,
            Message::UnpaidTimeout { order_no } => {
                let now_ms = self.clock.now_ms();
                if let Some(later_ms) = self.before_unpaid_deadline(*order_no, now_ms).await? {
                    return Ok(Handled::Later(later_ms));
                }
                match self.store.transition(*order_no, OrderAction::AutoCancel, now_ms).await? {
                    Ok(order) => {
                        self.orders_changed(vec![*order_no]).await;
                        tracing::info!(%order_no, buyer = %order.buyer, "unpaid order closed; buyer notified");
                        Ok(Handled::Done)
                    }
                    // A charge in flight, or a pay-at-once order whose charge has not run yet: its outcome
                    // decides (the buyer asked to pay).
                    Err(crate::ports::ChangeRejection::PaymentInFlight) => {
                        Ok(Handled::Later(now_ms + self.config.unpaid_timeout_retry_ms))
                    }
                    // Paid, cancelled, already closed, or gone: nothing to do.
                    Err(_) => Ok(Handled::Done),
                }
            }
            Message::Charge { order_no } => match self.pay(crate::flow::Actor::System, *order_no).await {
                Ok(PayOutcome::Paid(_) | PayOutcome::Declined { .. } | PayOutcome::Pending(_)) => Ok(Handled::Done),
                // Already paid, cancelled, or a payment in flight: the buyer's own action won.
                Err(OrderError::Refused(_)) => Ok(Handled::Done),
                Err(OrderError::Unavailable(error)) => Err(error),
            },
            Message::CreateOrder(_) => Err(PortError::corrupt("bus", "create-order message on a single-message topic")),
        }
    }

    /// `Some(wall time to look again)` while an order's unpaid deadline (its acceptance plus
    /// `unpaid_timeout_ms`) has not passed by the monotonic clock: a timer the wall clock fired early
    /// (it was stepped forward) waits out the rest. `None`: due, or no such order.
    async fn before_unpaid_deadline(
        &self,
        order_no: orderly_domain::OrderNo,
        now_ms: u64,
    ) -> Result<Option<u64>, PortError> {
        let Some(order) = self.store.order(order_no).await? else { return Ok(None) };
        let deadline_ms = order.created_ms.saturating_add(self.config.unpaid_timeout_ms);
        let judged_ms = self.clock.judged_now_ms(order.created_ms);
        if judged_ms >= deadline_ms {
            return Ok(None);
        }
        // One line per order: the step itself is said once, as a warning, by the clock.
        tracing::debug!(
            %order_no,
            clock_jump_ms = self.clock.jump_ms(),
            early_ms = deadline_ms - judged_ms,
            "unpaid timeout before its deadline by the monotonic clock; waiting"
        );
        Ok(Some(now_ms + (deadline_ms - judged_ms)))
    }

    /// Remark 1's recovery: order created → the reservation is the order's; still RESERVED → give the
    /// stock back (the entry never published the create, or died before it could claim the token). A
    /// CLAIMED token belongs to a create on the bus — the entry claims it once the create is durable, a
    /// worker when it takes the create — however long the backlog: it is never given back here.
    ///
    /// A `pending` view whose token is not CLAIMED was left by an entry that stopped between the view and
    /// the claim (or lost its cache): whether its create reached the bus is unknown, so one is published
    /// again from the view (a duplicate is a no-op). The worker reserves afresh: the order is created if
    /// stock is left, or `rejected` — never left `pending` for ever, never "not found" meanwhile.
    async fn check_reservation(&self, token: Token) -> Result<Handled, PortError> {
        match self.store.order(token.order_no).await? {
            Some(order) if order.state != OrderState::Pending => self.settle_tokens(&order, false).await?,
            view => {
                let found = self.cache.release_if_reserved(token).await?;
                if found == Some(TokenState::Reserved) {
                    tracing::info!(order_no = %token.order_no, "reservation not consumed in time; stock returned");
                }
                if let Some(view) = view
                    && !matches!(found, Some(TokenState::Claimed | TokenState::Confirmed))
                {
                    tracing::info!(order_no = %token.order_no, "pending view with no create known; its create is published again");
                    let create =
                        Outgoing { message: Message::CreateOrder(Box::new(view)), deliver_at_ms: self.clock.now_ms() };
                    self.bus.publish(vec![create]).await?;
                }
            }
        }
        Ok(Handled::Done)
    }

    /// Relay: carries out outbox events, oldest first, then marks them done. At least once; every
    /// event's handler is idempotent. One active instance (the `outbox` lease): several would all take
    /// the same oldest events.
    async fn relay_outbox_step(&self) -> Result<Outcome, PortError> {
        if !self.hold_lease("outbox").await? {
            return Ok(Outcome::default());
        }
        let events = self.store.outbox(self.config.worker_batch_max).await?;
        if events.is_empty() {
            return Ok(Outcome::default());
        }
        let now_ms = self.clock.now_ms();
        let mut publish = Vec::new();
        for (_, event) in &events {
            match event {
                OutboxEvent::RestockCache(restock) => self.cache.restock(restock).await?,
                OutboxEvent::ScheduleUnpaidTimeout { order_no, at_ms } => publish
                    .push(Outgoing { message: Message::UnpaidTimeout { order_no: *order_no }, deliver_at_ms: *at_ms }),
                OutboxEvent::Charge { order_no } => {
                    publish.push(Outgoing { message: Message::Charge { order_no: *order_no }, deliver_at_ms: now_ms })
                }
            }
        }
        if !publish.is_empty() {
            self.bus.publish(publish).await?;
        }
        let ids: Vec<u64> = events.iter().map(|(id, _)| *id).collect();
        self.store.outbox_done(&ids).await?;
        Ok(Outcome { done: ids.len(), retried: 0 })
    }

    /// Safe pay: asks the payment service about every attempt without a definite answer, until it has one.
    /// Service down → the entry waits for a later round, with backoff. One active instance: the process
    /// holding the `reconciler` lease (another takes over when it stops renewing).
    async fn reconcile_step(&self) -> Result<Outcome, PortError> {
        if !self.hold_lease("reconciler").await? {
            return Ok(Outcome::default());
        }
        let now_ms = self.clock.now_ms();
        // "Never charged" is concluded only once the charge deadline has passed by the monotonic clock: a
        // clock stepped forward must not end an attempt the service may still start.
        let due = self.store.payments_due(now_ms, self.config.worker_batch_max).await?;
        let mut outcome = Outcome::default();
        for order_no in due {
            let Some(order) = self.store.order(order_no).await? else { continue };
            let Some(attempt) = order.payment_attempt else { continue };
            let status = self.payments.query(order_no).await;
            let result = match status {
                Ok(PaymentStatus::Succeeded { payment_id }) => Some(PaymentResult::Succeeded { payment_id }),
                Ok(PaymentStatus::Declined { reason }) => Some(PaymentResult::Declined { reason }),
                Ok(PaymentStatus::NotFound)
                    if self.clock.judged_now_ms(attempt.started_ms) > attempt.charge_deadline_ms =>
                {
                    Some(PaymentResult::NeverCharged)
                }
                Ok(PaymentStatus::NotFound | PaymentStatus::Processing) | Err(_) => None,
            };
            match result {
                Some(result) => {
                    match self.settle_payment(order_no, result).await {
                        Ok(_) | Err(OrderError::Refused(_)) => {}
                        Err(OrderError::Unavailable(error)) => return Err(error),
                    }
                    outcome.done += 1;
                }
                None => {
                    let waited_ms = now_ms.saturating_sub(attempt.started_ms);
                    let backoff_ms =
                        waited_ms.clamp(self.config.reconcile_backoff_ms, self.config.reconcile_backoff_ms_max);
                    self.store.postpone_payment_check(order_no, now_ms + backoff_ms).await?;
                    outcome.retried += 1;
                }
            }
        }
        Ok(outcome)
    }
}

enum Handled {
    Done,
    Later(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Retried,
    DeadLettered,
}

/// Until when this process holds each lease on a role that runs once in a cluster (it holds them as
/// its id generator's instance, unique among the processes).
#[derive(Debug, Default)]
pub struct Leases {
    held_until: std::sync::Mutex<std::collections::HashMap<&'static str, u64>>,
}

impl Orderly {
    /// Whether this process holds lease `name` now; renews it once half of it has passed.
    pub(crate) async fn hold_lease(&self, name: &'static str) -> Result<bool, PortError> {
        let now_ms = self.clock.now_ms();
        let length_ms = self.config.lease_ms.max(2);
        let held_until = |leases: &Leases| -> Result<u64, PortError> {
            let held = leases.held_until.lock().map_err(|_| PortError::corrupt("leases", "lock poisoned"))?;
            Ok(held.get(name).copied().unwrap_or(0))
        };
        if held_until(&self.leases)? > now_ms + length_ms / 2 {
            return Ok(true);
        }
        let until_ms = now_ms + length_ms;
        let held = self.store.lease(name, self.ids.instance(), now_ms, until_ms).await?;
        self.leases
            .held_until
            .lock()
            .map_err(|_| PortError::corrupt("leases", "lock poisoned"))?
            .insert(name, if held { until_ms } else { 0 });
        Ok(held)
    }
}

/// Loops `step` until `shutdown` flips, pausing `idle` when a step found nothing. Errors are logged
/// where they are handled (here) and retried after `idle`.
pub async fn run(orderly: Orderly, step: Step, idle: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        let pause = match orderly.try_execute(step).await {
            Ok(outcome) if !outcome.is_idle() => continue,
            Ok(_) => idle,
            Err(error) => {
                tracing::warn!(?step, %error, "worker step failed");
                idle
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => {}
        }
    }
}
