//! Consumers of the one-message topics: reservation checks (remark 1's recovery), unpaid timeouts and
//! pay-at-once charges.

use futures_util::StreamExt;
use orderly_domain::{OrderAction, OrderNo, OrderState};

use super::Outcome;
use crate::buyer::{Actor, OrderError, PayOutcome};
use crate::model::{Delivery, Message, Outgoing, Token, TokenState, Topic};
use crate::orderly::Orderly;
use crate::ports::{ChangeRejection, PortError};

impl Orderly {
    /// Consumers of the one-message-at-a-time topics. The messages of a batch are handled concurrently
    /// (each is about one order; the store serialises what touches the same one), so their commits
    /// share group-commit syncs, and the done ones are acked together.
    pub(super) async fn consume(&self, topic: Topic) -> Result<Outcome, PortError> {
        let deliveries = self.ports.bus.receive(topic, self.config().worker_batch_max).await?;
        crate::meters::received(topic, self.ports.clock.now_ms(), deliveries.iter().map(|d| d.due_ms));
        let handled: Vec<(Delivery, Result<Handled, PortError>)> = futures_util::stream::iter(deliveries)
            .map(|delivery| async move {
                let result = self.handle(&delivery.message).await;
                (delivery, result)
            })
            .buffer_unordered(self.config().worker_concurrency_max.max(1))
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
                    self.ports.bus.retry(&delivery.receipt, at_ms).await?;
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
            self.ports.bus.ack(&done).await?;
        }
        Ok(outcome)
    }

    /// The reservation checks the cache keeps ([`crate::ports::StockCache::keeps_checks`]): those due,
    /// each run as a published one is, then forgotten. One that fails, or whose worker stops, is handed
    /// out again a check delay later. Looked for every [`SWEEP_EVERY_MS`] at most (a cache sharded by
    /// shop is asked shop by shop), at once again while the last look found a full batch.
    pub(super) async fn sweep_kept_checks(&self) -> Result<Outcome, PortError> {
        if !self.ports.cache.keeps_checks() {
            return Ok(Outcome::default());
        }
        let now_ms = self.ports.clock.now_ms();
        let shops = {
            let kept = self.kept_checks.lock().map_err(|_| PortError::failed("worker", "check sweep lock poisoned"))?;
            if now_ms < kept.next_sweep_ms {
                return Ok(Outcome::default());
            }
            kept.shops_read_ms.filter(|read_ms| now_ms < read_ms + SHOPS_READ_EVERY_MS).map(|_| kept.shops.clone())
        };
        let shops = match shops {
            Some(shops) => shops,
            None => {
                let shops = self.shops_with_stock().await?;
                if let Ok(mut kept) = self.kept_checks.lock() {
                    kept.shops.clone_from(&shops);
                    kept.shops_read_ms = Some(now_ms);
                }
                shops
            }
        };
        let config = self.config();
        let max = config.worker_batch_max.max(1);
        let retry_at_ms = now_ms + config.reservation_check_delay_ms.max(1);
        // The two looks fail apart: a cache that does not answer leaves the backstop's views checked.
        let (due, stale) =
            (self.ports.cache.due_checks(&shops, now_ms, retry_at_ms, max).await, self.stale_views(now_ms, max).await);
        let mut due = match (due, stale) {
            (Ok(mut due), Ok(stale)) => {
                due.extend(stale);
                due
            }
            (Err(error), Ok(stale)) if !stale.is_empty() => {
                tracing::warn!(%error, "the cache's reservation checks not read; only stale views checked");
                stale
            }
            (Err(error), _) | (_, Err(error)) => return Err(error),
        };
        due.sort_unstable();
        due.dedup();
        if let Ok(mut kept) = self.kept_checks.lock() {
            kept.next_sweep_ms = if due.len() >= max { now_ms } else { now_ms + SWEEP_EVERY_MS };
        }
        let checked: Vec<(Token, Result<Handled, PortError>)> = futures_util::stream::iter(due)
            .map(|token| async move { (token, self.check_reservation(token).await) })
            .buffer_unordered(config.worker_concurrency_max.max(1))
            .collect()
            .await;
        let mut outcome = Outcome::default();
        let mut done = Vec::new();
        for (token, result) in checked {
            match result {
                Ok(_) => done.push(token),
                Err(error) => {
                    tracing::warn!(order_no = %token.order_no, %error, "reservation check failed; it comes back later");
                    outcome.retried += 1;
                }
            }
        }
        outcome.done = done.len();
        if !done.is_empty() {
            self.ports.cache.checks_done(&done, retry_at_ms).await?;
        }
        Ok(outcome)
    }

    /// The entry tokens of up to `max` pending views older than [`STALE_VIEW_MS`], every
    /// [`STALE_LOOK_EVERY_MS`]: the backstop of the checks a cache keeps. A cache that loses its data
    /// loses the checks with the reservations and makes both again from the pending views when it
    /// reloads; a view written after that reload by an entry that then stopped before publishing its
    /// create has neither — and no create. Its check, run here, publishes the create again, so no view
    /// stays `pending` for ever. More than `max` stale views (a long outage's backlog) are taken in turns,
    /// by order number from where the last look stopped, so each is reached.
    async fn stale_views(&self, now_ms: u64, max: usize) -> Result<Vec<Token>, PortError> {
        let after = {
            let mut kept =
                self.kept_checks.lock().map_err(|_| PortError::failed("worker", "check sweep lock poisoned"))?;
            if now_ms < kept.next_stale_look_ms {
                return Ok(Vec::new());
            }
            kept.next_stale_look_ms = now_ms + STALE_LOOK_EVERY_MS;
            kept.stale_looked_through
        };
        let mut stale: Vec<Token> = self
            .ports
            .store
            .pending_orders()
            .await?
            .iter()
            .filter(|view| view.created_ms.saturating_add(STALE_VIEW_MS) <= now_ms)
            .map(|view| view.entry_token())
            .collect();
        stale.sort_unstable();
        // From after the last one looked at, then from the start again.
        let start = after.map_or(0, |last| stale.partition_point(|token| token.order_no <= last));
        stale.rotate_left(start);
        stale.truncate(max);
        if let Ok(mut kept) = self.kept_checks.lock() {
            kept.stale_looked_through = stale.last().map(|token| token.order_no);
        }
        if !stale.is_empty() {
            tracing::info!(views = stale.len(), "pending views older than {STALE_VIEW_MS} ms; checked again");
        }
        Ok(stale)
    }

    async fn handle(&self, message: &Message) -> Result<Handled, PortError> {
        match message {
            Message::ReservationCheck { token } => self.check_reservation(*token).await,
            Message::UnpaidTimeout { order_no } => {
                let now_ms = self.ports.clock.now_ms();
                match self.unpaid_deadline(*order_no, now_ms).await? {
                    Deadline::Passed => {}
                    Deadline::Later(later_ms) => return Ok(Handled::Later(later_ms)),
                    // Paid, cancelled, closed, rejected or gone: nothing to close, no transaction to try.
                    Deadline::Moot => return Ok(Handled::Done),
                }
                match self.ports.store.transition(*order_no, OrderAction::AutoCancel, now_ms).await? {
                    Ok(order) => {
                        self.orders_changed(vec![*order_no]).await;
                        crate::meters::order_events("closed", 1);
                        crate::trace::order_span(*order_no, order.trace.as_deref()).in_scope(|| {
                            tracing::info!(%order_no, buyer = %order.buyer, "unpaid order closed; buyer notified");
                        });
                        Ok(Handled::Done)
                    }
                    // A charge in flight, or a pay-at-once order whose charge has not run yet: its outcome
                    // decides (the buyer asked to pay).
                    Err(ChangeRejection::PaymentInFlight) => {
                        Ok(Handled::Later(now_ms + self.config().unpaid_timeout_retry_ms))
                    }
                    // Paid, cancelled, already closed, or gone: nothing to do.
                    Err(_) => Ok(Handled::Done),
                }
            }
            Message::Charge { order_no } => match self.pay(Actor::System, *order_no).await {
                Ok(PayOutcome::Paid(_) | PayOutcome::Declined { .. } | PayOutcome::Pending(_)) => Ok(Handled::Done),
                // Already paid, cancelled, or a payment in flight: the buyer's own action won.
                Err(OrderError::Refused(_)) => Ok(Handled::Done),
                Err(OrderError::Unavailable(error)) => Err(error),
            },
            Message::CreateOrder(_) => Err(PortError::corrupt("bus", "create-order message on a single-message topic")),
        }
    }

    /// Where an order stands against its unpaid deadline (its acceptance plus `unpaid_timeout_ms`), by
    /// the monotonic clock: a timer the wall clock fired early (it was stepped forward) waits out the
    /// rest. An order in a final state (or none) is moot: a final state never changes.
    async fn unpaid_deadline(&self, order_no: OrderNo, now_ms: u64) -> Result<Deadline, PortError> {
        let Some(order) = self.ports.store.order(order_no).await?.filter(|o| !o.state.is_final()) else {
            return Ok(Deadline::Moot);
        };
        let deadline_ms = order.created_ms.saturating_add(self.config().unpaid_timeout_ms);
        let judged_ms = self.ports.clock.judged_now_ms(order.created_ms);
        if judged_ms >= deadline_ms {
            return Ok(Deadline::Passed);
        }
        // One line per order: the step itself is said once, as a warning, by the clock.
        tracing::debug!(
            %order_no,
            clock_jump_ms = self.ports.clock.jump_ms(),
            early_ms = deadline_ms - judged_ms,
            "unpaid timeout before its deadline by the monotonic clock; waiting"
        );
        Ok(Deadline::Later(now_ms + (deadline_ms - judged_ms)))
    }

    /// Remark 1's recovery: order created → the reservation is the order's; still RESERVED → give the
    /// stock back (the entry never published the create, or died before it could claim the token). A
    /// CLAIMED token belongs to a create on the bus — the entry claims it once the create is durable, a
    /// worker when it takes the create — however long the backlog: it is never given back here.
    ///
    /// A `pending` view whose token is not CLAIMED was left by an entry that stopped between the view and
    /// the claim (or lost its cache): whether its create reached the bus is unknown, so one is published
    /// again from the view (a duplicate is a no-op). A reservation still RESERVED (or made again from the
    /// view by a reload of a lost cache) is kept for that create; without one the worker reserves afresh:
    /// the order is created if stock is left, or `rejected` — never left `pending` for ever, never "not
    /// found" meanwhile.
    async fn check_reservation(&self, token: Token) -> Result<Handled, PortError> {
        match self.ports.store.order(token.order_no).await? {
            Some(order) if order.state != OrderState::Pending => self.settle_tokens(&order).await?,
            view => {
                let found = match &view {
                    // An accepted order not created yet: its reservation is kept for the create published
                    // again below (a cache that lost it made it again from the view when it reloaded).
                    // An unknown token is refused in the same step: nothing reserves it afterwards.
                    Some(_) => self.ports.cache.keep_if_reserved(token).await?,
                    None => self.ports.cache.release_if_reserved(token).await?,
                };
                if view.is_none() && found == Some(TokenState::Reserved) {
                    crate::meters::stock_returned_by_check();
                    tracing::info!(order_no = %token.order_no, "reservation not consumed in time; stock returned");
                }
                if let Some(view) = view
                    && !matches!(found, Some(TokenState::Claimed | TokenState::Confirmed))
                {
                    tracing::info!(order_no = %token.order_no, "pending view with no create known; its create is published again");
                    let create = Outgoing {
                        message: Message::CreateOrder(Box::new(view)),
                        deliver_at_ms: self.ports.clock.now_ms(),
                    };
                    self.ports.bus.publish(vec![create]).await?;
                }
            }
        }
        Ok(Handled::Done)
    }
}

/// How often a worker looks for the reservation checks the cache keeps, at most.
const SWEEP_EVERY_MS: u64 = 500;
/// How long a worker uses the shops it read for that look.
const SHOPS_READ_EVERY_MS: u64 = 10_000;
/// A pending view this old is checked again (see [`Orderly::stale_views`]), looked for this often.
const STALE_VIEW_MS: u64 = 300_000;
const STALE_LOOK_EVERY_MS: u64 = 60_000;

enum Handled {
    Done,
    Later(u64),
}

enum Deadline {
    Passed,
    /// The wall time to look again.
    Later(u64),
    Moot,
}
