//! Worker: creates accepted orders, a batch per step (remarks 3–5).

use futures_util::StreamExt;
use orderly_domain::{CommodityId, OrderState};

use super::{Fate, Outcome};
use crate::model::{Message, Order, Token, TokenState, Topic};
use crate::orderly::{Orderly, Reserving};
use crate::ports::{Claim, CreateOutcome, CreateRequest, PortError, Reserve};

impl Orderly {
    /// Worker: create orders, a batch per step (remarks 3–5).
    pub(super) async fn create_orders_step(&self) -> Result<Outcome, PortError> {
        let deliveries = self.ports.bus.receive(Topic::CreateOrder, self.config().worker_batch_max).await?;
        crate::meters::received(Topic::CreateOrder, self.ports.clock.now_ms(), deliveries.iter().map(|d| d.due_ms));
        if deliveries.is_empty() {
            return Ok(Outcome::default());
        }
        let mut outcome = Outcome::default();
        let mut batch = Vec::with_capacity(deliveries.len());
        let mut receipts = Vec::with_capacity(deliveries.len());
        let now_ms = self.ports.clock.now_ms();
        // What the store holds under the batch's numbers, read at once.
        let order_nos: Vec<_> = deliveries
            .iter()
            .filter_map(|d| match &d.message {
                Message::CreateOrder(order) => Some(order.order_no),
                _ => None,
            })
            .collect();
        let stored = self.ports.store.orders(&order_nos).await;
        let mut created = stored.iter().flatten().map(|o| o.as_ref().is_some_and(|o| o.state != OrderState::Pending));
        let mut orders = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let Message::CreateOrder(order) = &delivery.message else {
                self.ports.bus.dead_letter(&delivery.receipt, "not a create-order message").await?;
                continue;
            };
            let order = (**order).clone();
            orders.push((delivery, order, created.next().unwrap_or(false)));
        }
        // Each order's reservation, asked for concurrently: the batch waits for about one round trip to
        // the cache, not one per order (the cache's calls are atomic each; a duplicate of the same order
        // in the batch claims the same token twice, which is idempotent).
        // (The futures are made first: a stream's closure over borrowed items trips the spawned task's
        // lifetime inference.)
        let holds: Vec<_> = orders
            .iter()
            .map(|(_, order, created)| {
                let stored = &stored;
                async move {
                    match stored {
                        Err(error) => Err(error.clone()),
                        // A redelivery of a finished creation reserves nothing: the store reports it as done.
                        Ok(_) if *created => Ok(Err(None)),
                        Ok(_) => self.hold_stock_for(order).await,
                    }
                }
            })
            .collect();
        let held: Vec<_> =
            futures_util::stream::iter(holds).buffered(self.config().worker_concurrency_max.max(1)).collect().await;
        for ((delivery, order, _), held) in orders.into_iter().zip(held) {
            match held {
                Ok(held) => {
                    let (token, short_of) = match held {
                        Ok(token) => (Some(token), None),
                        Err(short_of) => (None, short_of),
                    };
                    batch.push(CreateRequest {
                        token,
                        short_of,
                        unpaid_deadline_ms: now_ms + self.config().unpaid_timeout_ms,
                        order,
                    });
                    receipts.push(delivery.receipt);
                }
                Err(error) => {
                    outcome.retried += 1;
                    if self.retry_or_dead_letter(&delivery, &error).await? == Fate::DeadLettered {
                        // Never created: nothing may stay held for it.
                        for token in [order.entry_token(), order.worker_token()] {
                            self.ports.cache.release(token).await?;
                        }
                    }
                }
            }
        }
        if batch.is_empty() {
            return Ok(outcome);
        }
        let results = match self.ports.store.create_orders(&batch, now_ms).await {
            Ok(results) => results,
            Err(error) => {
                // Tokens stay CLAIMED: the redelivery finds them so and carries on.
                tracing::warn!(%error, orders = batch.len(), "create batch failed; will be redelivered");
                let at_ms = self.ports.clock.now_ms() + self.config().redelivery_delay_ms;
                for receipt in &receipts {
                    self.ports.bus.retry(receipt, at_ms).await?;
                }
                outcome.retried += receipts.len();
                return Ok(outcome);
            }
        };
        // Also on a redelivery: the worker that created it may have died before deleting the copies.
        self.orders_changed(batch.iter().map(|r| r.order.order_no).collect()).await;
        // Each order's reservation settled, concurrently (as they were taken); any failure leaves the
        // batch unacked, and its redelivery settles them again (idempotent).
        let settles: Vec<_> =
            batch.iter().zip(results).map(|(request, result)| self.settle_created(request, result)).collect();
        let settled: Vec<Result<(), PortError>> = futures_util::stream::iter(settles)
            .buffer_unordered(self.config().worker_concurrency_max.max(1))
            .collect()
            .await;
        settled.into_iter().collect::<Result<(), PortError>>()?;
        self.ports.bus.ack(&receipts).await?;
        outcome.done += receipts.len();
        Ok(outcome)
    }

    /// What a create batch decided for one order, told to the cache: the reservation it consumed
    /// confirmed (a rejected order's given back), and the buyer's trace told.
    async fn settle_created(&self, request: &CreateRequest, result: CreateOutcome) -> Result<(), PortError> {
        let order_no = request.order.order_no;
        let token = request.token;
        match result {
            CreateOutcome::Created(order) => {
                crate::meters::order_events("created", 1);
                if let Some(token) = token {
                    self.ports.cache.confirm(token, &order.deductions()).await?;
                }
                self.release_entry_token_if_unused(&request.order, token).await?;
                crate::trace::order_span(order_no, request.order.trace.as_deref()).in_scope(|| {
                    tracing::debug!(target: crate::trace::TARGET, "order created; buyer notified");
                });
            }
            CreateOutcome::Rejected { commodity_id } => {
                crate::meters::order_events("rejected", 1);
                if let Some(token) = token {
                    self.ports.cache.release(token).await?;
                }
                self.release_entry_token_if_unused(&request.order, token).await?;
                crate::trace::order_span(order_no, request.order.trace.as_deref()).in_scope(|| {
                    tracing::info!(%order_no, %commodity_id, "order rejected: stock ran out after acceptance");
                });
            }
            CreateOutcome::AlreadyDone(existing) => self.settle_tokens(&existing).await?,
        }
        Ok(())
    }

    /// The reservation this order's creation will consume: its entry token claimed, or a fresh one if
    /// that was released or lost. `Err`: none, the order will be rejected — for the commodity the cache
    /// lacked, when that is why.
    async fn hold_stock_for(&self, order: &Order) -> Result<Result<Token, Option<CommodityId>>, PortError> {
        let mut claim = self.ports.cache.claim(order.entry_token()).await?;
        if claim == Claim::Missing {
            // The cache lost it. Loading the counters again makes it again (held for the order's pending
            // view), and so did a load since the claim (by another order of the batch, claimed beside this
            // one, or another process): claimed again either way, or the order would reserve a second
            // time what its remade token holds.
            let ids: Vec<CommodityId> = order.lines.iter().map(|line| line.commodity_id).collect();
            if self.ports.cache.available(&ids).await?.contains(&None) {
                self.load_into_cache(&ids).await?;
            }
            claim = self.ports.cache.claim(order.entry_token()).await?;
        }
        match claim {
            Claim::Claimed | Claim::Confirmed => return Ok(Ok(order.entry_token())),
            Claim::Released | Claim::Missing => {}
        }
        let token = order.worker_token();
        match self.reserve(token, &order.stock_lines(), Reserving::Worker).await? {
            Reserve::Reserved | Reserve::AlreadyHeld(TokenState::Reserved | TokenState::Claimed) => Ok(Ok(token)),
            Reserve::Insufficient { commodity_id, .. } => Ok(Err(Some(commodity_id))),
            // A commodity the store has no stock ledger for.
            Reserve::NotLoaded(ids) => Ok(Err(ids.first().copied())),
            // Released before it was reserved: the entry answered an error for this cart and refused
            // its late create (or the check released it); consumed already: the store says so.
            Reserve::AlreadyHeld(TokenState::Released | TokenState::Confirmed) => Ok(Err(None)),
        }
    }

    /// An order decided on the worker's own reservation (its entry token was lost): the entry token is
    /// released too, since a load of the counters may have made it again meanwhile (from the order's
    /// pending view) and nothing else would give those units back. Nothing to do otherwise.
    async fn release_entry_token_if_unused(&self, order: &Order, consumed: Option<Token>) -> Result<(), PortError> {
        if consumed.is_none_or(|token| token != order.entry_token()) && order.state == OrderState::Pending {
            self.ports.cache.release(order.entry_token()).await?;
        }
        Ok(())
    }

    /// For an order past `pending`: the reservation its creation consumed is confirmed, any other is
    /// released (a rejected order consumed none). Idempotent, however late: the confirmation carries what
    /// the store took, which a cache that lost the token applies and one that counted it already skips
    /// (it remembers the versions it counts, not only the tokens, which expire).
    pub(super) async fn settle_tokens(&self, order: &Order) -> Result<(), PortError> {
        for token in [order.entry_token(), order.worker_token()] {
            if order.state != OrderState::Rejected && order.token_generation == Some(token.generation) {
                self.ports.cache.confirm(token, &order.deductions()).await?;
            } else {
                self.ports.cache.release(token).await?;
            }
        }
        Ok(())
    }
}
