//! The entry: a cart priced against the catalog, split by shop, numbered, its stock reserved and its
//! creates published — answered in a few milliseconds. The workers finish the flow
//! ([`crate::workers`]).

use orderly_domain::{
    CartRejection, CatalogEntry, CommodityId, OrderNo, OrderState, PlaceOrderBody, Uid, price_and_split,
};

use crate::caps::Admit;
use crate::model::{IdempotencyRecord, Message, Order, Outgoing, StoredAnswer, TokenState};
use crate::orderly::{Orderly, Reserving};
use crate::ports::{CreateOutcome, CreateRequest, IdempotencyBegin, PortError, Reserve};
use crate::sold_out::Known;
use crate::trace::{TARGET as TRACE, TraceParent, order_span};

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error(transparent)]
    Cart(#[from] CartRejection),
    #[error("commodity {commodity_id} is sold out")]
    SoldOut { commodity_id: CommodityId },
    #[error("this Idempotency-Key was used with another request")]
    IdempotencyKeyReused,
    /// The buyer's cap of units of one commodity ([`crate::config::BuyerCaps`]).
    #[error("the buyer holds {held} units of commodity {commodity_id} in live orders; the cap is {cap}")]
    PurchaseCap { commodity_id: CommodityId, held: u64, cap: u32, retry_after_ms: u64 },
    /// The buyer's cap of unpaid orders.
    #[error("the buyer has {held} unpaid orders; the cap is {cap}")]
    UnpaidCap { held: u64, cap: u32, retry_after_ms: u64 },
    #[error(transparent)]
    Unavailable(#[from] PortError),
}

impl Orderly {
    /// The entry: price, split by shop, number, arm the reservation checks, reserve, write the pending
    /// views, publish the creates.
    ///
    /// With an `idempotency_key`, the order numbers are pinned to the key before anything else, so a
    /// retry (even racing the first attempt) re-runs the same idempotent steps on the same numbers — for
    /// those of its orders not created yet.
    pub async fn place_orders(
        &self,
        body: &PlaceOrderBody,
        idempotency_key: Option<&str>,
    ) -> Result<Vec<OrderNo>, PlaceError> {
        self.place_orders_traced(body, idempotency_key, None).await
    }

    /// [`Orderly::place_orders`] under the request's trace context, which each order keeps
    /// ([`crate::trace`]).
    pub async fn place_orders_traced(
        &self,
        body: &PlaceOrderBody,
        idempotency_key: Option<&str>,
        trace: Option<TraceParent>,
    ) -> Result<Vec<OrderNo>, PlaceError> {
        let drafts = self.price(body).await?;
        // `retry`: an earlier attempt with this key got as far as pinning these numbers, and maybe further
        // (its creates may be on the bus): only the idempotent steps on the same numbers tell.
        let (order_nos, retry) = match idempotency_key {
            None => (self.bounded("ids", self.new_order_nos(body.uid, drafts.len())).await?, false),
            Some(key) => {
                let request = serde_json::to_string(body)
                    .map_err(|e| PortError::failed("idempotency", format!("cannot encode the request: {e}")))?;
                let fresh = IdempotencyRecord {
                    request,
                    order_nos: self.bounded("ids", self.new_order_nos(body.uid, drafts.len())).await?,
                    answer: None,
                };
                match self.bounded("store", self.ports.store.idempotency_begin(body.uid, key, &fresh)).await? {
                    IdempotencyBegin::Started => (fresh.order_nos, false),
                    IdempotencyBegin::Mismatch => return Err(PlaceError::IdempotencyKeyReused),
                    IdempotencyBegin::Seen(seen) => match seen.answer {
                        Some(StoredAnswer::Accepted) => return Ok(seen.order_nos),
                        Some(StoredAnswer::SoldOut { commodity_id }) => {
                            return Err(PlaceError::SoldOut { commodity_id });
                        }
                        // Same body, so the same split: the pinned numbers fit the drafts one to one.
                        None if seen.order_nos.len() == drafts.len() => (seen.order_nos, true),
                        None => return Err(PlaceError::IdempotencyKeyReused),
                    },
                }
            }
        };
        let now_ms = self.ports.clock.now_ms();
        let mut orders = pending_orders(drafts, &order_nos, now_ms);
        if let Some(trace) = trace.map(|trace| trace.to_string()) {
            for order in &mut orders {
                order.trace = Some(trace.clone());
            }
        }
        if retry {
            orders = self.not_created_yet(orders).await?;
            if orders.is_empty() {
                // Every create of the earlier attempt landed and ran: only its answer was missing.
                self.after_publish(&[], body.uid, idempotency_key).await;
                return Ok(order_nos);
            }
        }
        // Not for a retry: its own reservation may be what sold the commodity out.
        if !retry && let Some(commodity_id) = self.known_sold_out(&orders, now_ms).await {
            return self.sold_out(body.uid, idempotency_key, commodity_id).await;
        }
        let admitted = self.admit_to_caps(body.uid, &orders, now_ms).await?;
        let placed = self.reserve_and_publish(body.uid, idempotency_key, &orders, now_ms).await;
        // Taken back out of the caps' gate only when nothing of the cart can come to exist: without a key
        // a late create is refused (`abort`), and sold out is sold out. With a key, an error may hide a
        // create that lands later (or a first attempt still under way): its records stay for their minute.
        let nothing_left = matches!(placed, Err(PlaceError::SoldOut { .. })) || idempotency_key.is_none();
        if placed.is_err() && admitted && nothing_left {
            let order_nos: Vec<OrderNo> = orders.iter().map(|o| o.order_no).collect();
            if let Err(error) = self.bounded("holdings", self.ports.holdings.withdraw(body.uid, &order_nos)).await {
                tracing::warn!(buyer = %body.uid, %error, "refused cart not withdrawn from the caps' gate; it counts there for a minute");
            }
        }
        placed?;
        crate::meters::order_events("accepted", order_nos.len());
        if tracing::enabled!(target: TRACE, tracing::Level::DEBUG) {
            for order in &orders {
                order_span(order.order_no, order.trace.as_deref()).in_scope(|| {
                    tracing::debug!(target: TRACE, buyer = %order.buyer, shop = %order.shop_id, total = %order.total, "accepted");
                });
            }
        }
        Ok(order_nos)
    }

    /// A keyed retry's orders that its earlier attempt did not get created. One the store holds past
    /// `pending` had its create land and run, its reservation consumed and settled: reserving it again would
    /// take units the store never sells once the cache forgot that settled reservation (it does, after
    /// `settled_token_ttl_ms` in process), so it is left out — its number is answered as before.
    async fn not_created_yet(&self, orders: Vec<Order>) -> Result<Vec<Order>, PlaceError> {
        let order_nos: Vec<OrderNo> = orders.iter().map(|o| o.order_no).collect();
        let stored = self.bounded("store", self.ports.store.orders(&order_nos)).await?;
        Ok(orders
            .into_iter()
            .zip(stored)
            .filter(|(_, stored)| stored.as_ref().is_none_or(|s| s.state == OrderState::Pending))
            .map(|(order, _)| order)
            .collect())
    }

    /// The buyer's caps, if any is on: the buyer's orders read from the store, then one call to the gate
    /// ([`crate::caps`]). `true`: the cart's orders were admitted (withdrawn if it is refused later).
    async fn admit_to_caps(&self, buyer: Uid, orders: &[Order], now_ms: u64) -> Result<bool, PlaceError> {
        let config = self.config();
        let (caps, unpaid_timeout_ms) = (config.buyer_caps, config.unpaid_timeout_ms);
        if !caps.any() {
            return Ok(false);
        }
        let since_ms = now_ms.saturating_sub(crate::caps::lookback_ms(&caps, unpaid_timeout_ms));
        let mut held: Vec<Order> = Vec::new();
        for _ in 0..crate::caps::PAGES {
            let before = held.last().map(|o| o.order_no);
            let page = self.bounded("store", self.ports.store.orders_of(buyer, before, crate::caps::PAGE)).await?;
            let last = page.len() < crate::caps::PAGE || page.last().is_some_and(|o| o.created_ms < since_ms);
            held.extend(page);
            if last {
                break;
            }
        }
        let admission = crate::caps::admission(orders, &held, now_ms, &caps);
        let answer = self.bounded("holdings", self.ports.holdings.admit(buyer, &admission)).await?;
        let retry_after_ms = || crate::caps::retry_after_ms(&answer, &held, now_ms, &caps, unpaid_timeout_ms);
        let refused = match answer {
            Admit::Admitted => return Ok(true),
            Admit::PurchaseCap { commodity_id, held, cap } => {
                PlaceError::PurchaseCap { commodity_id, held, cap, retry_after_ms: retry_after_ms() }
            }
            Admit::UnpaidCap { held, cap } => PlaceError::UnpaidCap { held, cap, retry_after_ms: retry_after_ms() },
        };
        crate::meters::order_events("capped", 1);
        Err(refused)
    }

    /// Arms the reservation checks, reserves, writes the pending views and publishes the creates. An
    /// error: nothing of the cart will be created.
    async fn reserve_and_publish(
        &self,
        buyer: Uid,
        idempotency_key: Option<&str>,
        orders: &[Order],
        now_ms: u64,
    ) -> Result<(), PlaceError> {
        // Remark 1: the check is armed before the reservation, so a crash right after reserving still
        // gets the stock back — by the cache in the reserve's own atomic step where it keeps the checks
        // (no broker message, no round trip), else published on the bus first.
        let check_at_ms = now_ms + self.config().reservation_check_delay_ms;
        let kept_check = self.ports.cache.keeps_checks().then_some(check_at_ms);
        if kept_check.is_none() {
            let checks = orders
                .iter()
                .map(|o| Outgoing {
                    message: Message::ReservationCheck { token: o.entry_token() },
                    deliver_at_ms: check_at_ms,
                })
                .collect();
            let started_ms = self.ports.clock.now_ms();
            self.bounded("bus", self.ports.bus.publish_guards(checks)).await?;
            self.step_took("guards", started_ms);
        }

        // Remark 2: fail early on stock. All orders of the cart or none: every order reserves at once (one
        // round trip for the cart, not one per shop), and if any cannot, those that did give their units
        // back (below: all but a keyed cart's after an error). The first order of the cart that could not
        // says why.
        let started_ms = self.ports.clock.now_ms();
        let reserves = orders.iter().map(|order| async move {
            let lines = order.stock_lines();
            let by = Reserving::Entry { check_at_ms: kept_check };
            self.bounded("stock cache", self.reserve(order.entry_token(), &lines, by)).await
        });
        let reserved = futures_util::future::join_all(reserves).await;
        if let Some(refusal) = reserved.iter().position(|result| !held(result)) {
            // Given back: only what this call reserved (a token it did not reserve would be recorded as an
            // empty rollback; one held already is an earlier attempt's; one whose reserve was cut off by its
            // deadline is the reservation check's). Not when the cart has a key and the answer is an error:
            // its retry re-runs the same numbers and must find their units held (the reservation checks give
            // them back if it never comes) — released, they would be accepted holding nothing.
            if idempotency_key.is_none() || matches!(reserved.get(refusal), Some(Ok(_))) {
                let taken: Vec<&Order> = orders
                    .iter()
                    .zip(&reserved)
                    .filter(|(_, result)| matches!(result, Ok(Reserve::Reserved)))
                    .map(|(order, _)| order)
                    .collect();
                self.release_all(taken).await;
            }
            return match reserved.into_iter().nth(refusal) {
                Some(Ok(Reserve::Insufficient { commodity_id, available })) => {
                    if available == 0 {
                        self.sold_out.remember(commodity_id, now_ms);
                    }
                    self.sold_out(buyer, idempotency_key, commodity_id).await.map(drop)
                }
                // A commodity of the catalog that was never given stock: sold out.
                Some(Ok(Reserve::NotLoaded(ids))) => {
                    crate::meters::order_events("sold_out", 1);
                    Err(match ids.first() {
                        Some(&commodity_id) => PlaceError::SoldOut { commodity_id },
                        None => PortError::corrupt("stock cache", "not loaded, naming no commodity").into(),
                    })
                }
                Some(Err(error)) => Err(error.into()),
                Some(Ok(Reserve::Reserved | Reserve::AlreadyHeld(_))) | None => {
                    Err(PortError::corrupt("stock cache", "a refusal that was not one").into())
                }
            };
        }

        // The pending view before the create: from the moment the answer is success the number is found
        // (`pending` until the worker creates it), across a crash too. Where the store writes its bus's
        // messages (standalone: one journal) the views and the creates are one atomic write and one sync.
        // Elsewhere nothing is published yet when the view is written, but a write that answered an error
        // (cut off by the deadline) may still land after the abort's clean-up, and the reservation check
        // publishes a create from a view it finds: so the late creates are refused as after a failed
        // publish.
        self.step_took("reserve", started_ms);
        let creates: Vec<Outgoing> = orders
            .iter()
            .map(|o| Outgoing { message: Message::CreateOrder(Box::new(o.clone())), deliver_at_ms: now_ms })
            .collect();
        let started_ms = self.ports.clock.now_ms();
        let written = self.bounded("store", self.ports.store.insert_pending_publishing(orders, creates)).await;
        self.step_took("pending", started_ms);
        let published = match written {
            Ok(None) => Ok(()),
            Ok(Some(creates)) => {
                let started_ms = self.ports.clock.now_ms();
                let published = self.bounded("bus", self.ports.bus.publish(creates)).await;
                self.step_took("creates", started_ms);
                published
            }
            Err(error) => Err(error),
        };
        if let Err(error) = published
            && self.abort(orders, idempotency_key.is_none()).await == Aborted::Undone
        {
            return Err(error.into());
        }
        // The creates are durable (or one is already in a worker's hands): the orders will exist unless
        // stock runs out, so the answer is success whatever happens to the steps below, which only make
        // things quicker or clearer.
        self.after_publish(orders, buyer, idempotency_key).await;
        Ok(())
    }

    /// An entry step of one cart done: how long it took, for `GET /metrics`.
    fn step_took(&self, step: &'static str, started_ms: u64) {
        crate::meters::entry_step(step, self.ports.clock.now_ms().saturating_sub(started_ms));
    }

    /// A commodity of these orders this process knows is sold out: from memory within
    /// `sold_out_memory_ms` of seeing its counter at zero; after that, from one look at the counter
    /// (a cache read: nothing on the bus, nothing reserved). A look that fails knows nothing: the
    /// cart goes the whole way.
    async fn known_sold_out(&self, orders: &[Order], now_ms: u64) -> Option<CommodityId> {
        let window_ms = self.config().sold_out_memory_ms;
        if window_ms == 0 {
            return None;
        }
        let mut stale = Vec::new();
        for (id, _) in orders.iter().flat_map(Order::stock_lines) {
            match self.sold_out.known(id, now_ms, window_ms) {
                Known::SoldOut => return Some(id),
                Known::Stale => stale.push(id),
                Known::Unknown => {}
            }
        }
        if stale.is_empty() {
            return None;
        }
        let levels = self.bounded("stock cache", self.ports.cache.available(&stale)).await.unwrap_or_default();
        let mut sold_out = None;
        for (id, level) in stale.into_iter().zip(levels) {
            if level == Some(0) {
                self.sold_out.remember(id, now_ms);
                sold_out = sold_out.or(Some(id));
            } else {
                self.sold_out.forget(id);
            }
        }
        sold_out
    }

    /// The "sold out" answer, kept for the idempotency key if there is one.
    async fn sold_out(
        &self,
        buyer: Uid,
        idempotency_key: Option<&str>,
        commodity_id: CommodityId,
    ) -> Result<Vec<OrderNo>, PlaceError> {
        crate::meters::order_events("sold_out", 1);
        if let Some(key) = idempotency_key {
            self.bounded(
                "store",
                self.ports.store.idempotency_answer(buyer, key, StoredAnswer::SoldOut { commodity_id }),
            )
            .await?;
        }
        Err(PlaceError::SoldOut { commodity_id })
    }

    /// A cart about to be answered with an error after its reservation: its reservations are given back
    /// and its pending views deleted. When its creates may have reached the bus (an error can hide a
    /// publish that landed) and there is no idempotency key, the caller will never ask for these numbers
    /// again, so the worker's reservation is refused too ([`StockCache::release`] remembers an unknown
    /// token as released): a create that landed all the same then ends `rejected`, holding nothing, as the
    /// error answer said. With a key, a retry re-runs the same numbers and must be able to create them.
    ///
    /// The worker's token is refused before the entry's is released, and only a RESERVED token is
    /// released: a create that landed and was taken by a worker between the error and this clean-up has
    /// its token CLAIMED, and the worker is creating the order on it. Its units stay with it (releasing
    /// them gave them back to the cache while the store sold them), and the cart is [`Aborted::Landed`]:
    /// the answer is success after all. The other orders of such a cart, refused here, end `rejected`.
    /// Best effort otherwise: what fails here is done by the reservation check.
    ///
    /// [`StockCache::release`]: crate::ports::StockCache::release
    async fn abort(&self, orders: &[Order], refuse_late_creates: bool) -> Aborted {
        let mut landed = false;
        let tokens = orders
            .iter()
            .filter(|_| refuse_late_creates)
            .map(Order::worker_token)
            .chain(orders.iter().map(Order::entry_token));
        for token in tokens {
            match self.ports.cache.release_if_reserved(token).await {
                Ok(Some(TokenState::Claimed | TokenState::Confirmed)) => landed = true,
                Ok(_) => {}
                Err(error) => tracing::warn!(?token, %error, "release failed; the reservation check will do it"),
            }
        }
        if landed {
            tracing::warn!(
                orders = orders.len(),
                "error answer withdrawn: a worker already holds a create of this cart"
            );
            return Aborted::Landed;
        }
        let order_nos: Vec<OrderNo> = orders.iter().map(|o| o.order_no).collect();
        if let Err(error) = self.bounded("store", self.ports.store.forget_pending(&order_nos)).await {
            tracing::warn!(orders = orders.len(), %error, "pending views not deleted; the reservation check will");
        }
        self.orders_changed(order_nos).await;
        Aborted::Undone
    }

    /// After the creates are durable. The entry tokens are claimed: a reservation whose create is on the
    /// bus belongs to that create (the reservation check leaves a CLAIMED token to the worker, however long
    /// the backlog). Then the idempotency answer. Neither can turn the answer into an error: a failed claim
    /// leaves the reservation to the check (which publishes the create again from its pending view; the
    /// worker claims the token when it takes either), and a missing idempotency answer makes a retry re-run
    /// the idempotent steps on the same numbers. So claims that are not done at once (a cache over the
    /// network) are not waited for: they go on beside the answer, a round trip less on every cart.
    async fn after_publish(&self, orders: &[Order], buyer: Uid, idempotency_key: Option<&str>) {
        let claiming = self.clone();
        let tokens: Vec<(OrderNo, crate::model::Token)> =
            orders.iter().map(|o| (o.order_no, o.entry_token())).collect();
        let mut claims = Box::pin(async move {
            let started_ms = claiming.ports.clock.now_ms();
            let claims =
                tokens.iter().map(|&(_, token)| claiming.bounded("stock cache", claiming.ports.cache.claim(token)));
            let claimed = futures_util::future::join_all(claims).await;
            claiming.step_took("claim", started_ms);
            for ((order_no, _), claim) in tokens.iter().zip(claimed) {
                if let Err(error) = claim {
                    tracing::warn!(%order_no, %error, "accepted, but the reservation could not be claimed for its create");
                }
            }
        });
        if futures_util::FutureExt::now_or_never(&mut claims).is_none() {
            tokio::spawn(claims);
        }
        if let Some(key) = idempotency_key
            && let Err(error) =
                self.bounded("store", self.ports.store.idempotency_answer(buyer, key, StoredAnswer::Accepted)).await
        {
            tracing::warn!(%buyer, %error, "accepted; the idempotency answer was not stored (a retry re-runs the same numbers)");
        }
    }

    /// The bench's naive baseline (issue 3), not a way to take orders: no cache, no bus — the cart's
    /// orders created by one synchronous store transaction that locks the stock rows, checks and deducts,
    /// as a first design would. A cart split over shops is not all-or-nothing here: a shop's order that
    /// finds no stock is `rejected` and answered sold out, the others stand. Its stock never passes through
    /// the cache, so a commodity sold this way must not also be sold by [`Orderly::place_orders`] (the
    /// bench gives it commodities of its own).
    pub async fn place_orders_naive(&self, body: &PlaceOrderBody) -> Result<Vec<OrderNo>, PlaceError> {
        let drafts = self.price(body).await?;
        let order_nos = self.bounded("ids", self.new_order_nos(body.uid, drafts.len())).await?;
        let now_ms = self.ports.clock.now_ms();
        let batch: Vec<CreateRequest> = pending_orders(drafts, &order_nos, now_ms)
            .into_iter()
            .map(|order| CreateRequest {
                token: Some(order.entry_token()),
                short_of: None,
                unpaid_deadline_ms: now_ms + self.config().unpaid_timeout_ms,
                order,
            })
            .collect();
        for outcome in self.ports.store.create_orders(&batch, now_ms).await? {
            if let CreateOutcome::Rejected { commodity_id } = outcome {
                return Err(PlaceError::SoldOut { commodity_id });
            }
        }
        Ok(order_nos)
    }

    async fn price(&self, body: &PlaceOrderBody) -> Result<Vec<orderly_domain::OrderDraft>, PlaceError> {
        let mut entries: Vec<CatalogEntry> = Vec::with_capacity(body.commodity_details.len());
        // Bounded before any lookup: a huge cart costs nothing.
        if self.config().cart.check_size(body.commodity_details.len()).is_ok() {
            for line in &body.commodity_details {
                if let Some(entry) = self.catalog_entry(line.commodity_id).await? {
                    entries.push(entry);
                }
            }
        }
        let drafts =
            price_and_split(body, self.config().cart, |id| entries.iter().find(|e| e.commodity_id == id).copied())?;
        Ok(drafts)
    }

    async fn new_order_nos(&self, buyer: Uid, count: usize) -> Result<Vec<OrderNo>, PortError> {
        let mut order_nos = Vec::with_capacity(count);
        for _ in 0..count {
            order_nos.push(OrderNo::new(self.ports.ids.next_id().await?, buyer));
        }
        Ok(order_nos)
    }
}

/// A reserve that left the cart's order holding its units (or found them held already).
fn held(result: &Result<Reserve, PortError>) -> bool {
    matches!(result, Ok(Reserve::Reserved | Reserve::AlreadyHeld(_)))
}

/// What [`Orderly::abort`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aborted {
    /// Nothing of the cart will be created: the error answer stands.
    Undone,
    /// A worker holds a create of the cart: answer success.
    Landed,
}

/// The orders of a cart as accepted: `pending`, numbered.
fn pending_orders(drafts: Vec<orderly_domain::OrderDraft>, order_nos: &[OrderNo], now_ms: u64) -> Vec<Order> {
    drafts
        .into_iter()
        .zip(order_nos)
        .map(|(draft, &order_no)| Order {
            order_no,
            buyer: draft.buyer,
            to_uid: draft.to_uid,
            shop_id: draft.shop_id,
            pay_at_once: draft.pay_at_once,
            lines: draft.lines,
            total: draft.total,
            state: OrderState::Pending,
            created_ms: now_ms,
            updated_ms: now_ms,
            payment_attempt: None,
            payment_id: None,
            last_decline: None,
            rejected_for: None,
            token_generation: None,
            stock_versions: Vec::new(),
            trace: None,
        })
        .collect()
}
