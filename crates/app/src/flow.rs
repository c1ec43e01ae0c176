//! The entry and the buyer's actions. The workers that finish the flow live in [`crate::workers`].

use std::sync::Arc;

use orderly_domain::{
    CartRejection, CatalogEntry, CommodityId, OrderAction, OrderNo, OrderState, PlaceOrderBody, TransitionRejection,
    Uid, price_and_split,
};

use crate::catalog::CatalogCache;
use crate::config::FlowConfig;
use crate::model::{IdempotencyRecord, Message, Order, Outgoing, PaymentAttempt, StockLevel, StoredAnswer, Token};
use crate::ports::{
    Bus, ChangeRejection, ChargeOutcome, ChargeRequest, Clock, CreateOutcome, CreateRequest, IdGen, IdempotencyBegin,
    OrderCache, PaymentResult, Payments, PortError, Reserve, StockCache, Store,
};

/// The ports of one profile, wired together.
#[derive(Debug, Clone)]
pub struct Orderly {
    pub cache: Arc<dyn StockCache>,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub payments: Arc<dyn Payments>,
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn IdGen>,
    pub config: FlowConfig,
    /// Catalog entries this process read lately (`config.catalog_cache_ms`).
    pub catalog: Arc<CatalogCache>,
    /// Copies of orders for the buyers' queries; `None`: every query reads the store.
    pub orders: Option<Arc<dyn OrderCache>>,
    /// The leases this process holds on roles that run once in a cluster.
    pub leases: Arc<crate::workers::Leases>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error(transparent)]
    Cart(#[from] CartRejection),
    #[error("commodity {commodity_id} is sold out")]
    SoldOut { commodity_id: CommodityId },
    #[error("this Idempotency-Key was used with another request")]
    IdempotencyKeyReused,
    #[error(transparent)]
    Unavailable(#[from] PortError),
}

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
    /// A profile's ports wired together, with this process's own state empty (catalog copies, leases)
    /// and no order cache.
    pub fn new(
        cache: Arc<dyn StockCache>,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        payments: Arc<dyn Payments>,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdGen>,
        config: FlowConfig,
    ) -> Orderly {
        Orderly {
            cache,
            store,
            bus,
            payments,
            clock,
            ids,
            config,
            catalog: Arc::default(),
            orders: None,
            leases: Arc::default(),
        }
    }

    /// The entry: price, split by shop, number, arm the reservation checks, reserve, write the pending
    /// views, publish the creates.
    ///
    /// With an `idempotency_key`, the order numbers are pinned to the key before anything else, so a
    /// retry (even racing the first attempt) re-runs the same idempotent steps on the same numbers.
    pub async fn place_orders(
        &self,
        body: &PlaceOrderBody,
        idempotency_key: Option<&str>,
    ) -> Result<Vec<OrderNo>, PlaceError> {
        let drafts = self.price(body).await?;
        let order_nos = match idempotency_key {
            None => self.bounded("ids", self.new_order_nos(body.uid, drafts.len())).await?,
            Some(key) => {
                let request = serde_json::to_string(body)
                    .map_err(|e| PortError::corrupt("idempotency", format!("cannot encode the request: {e}")))?;
                let fresh = IdempotencyRecord {
                    request,
                    order_nos: self.bounded("ids", self.new_order_nos(body.uid, drafts.len())).await?,
                    answer: None,
                };
                match self.bounded("store", self.store.idempotency_begin(body.uid, key, &fresh)).await? {
                    IdempotencyBegin::Started => fresh.order_nos,
                    IdempotencyBegin::Mismatch => return Err(PlaceError::IdempotencyKeyReused),
                    IdempotencyBegin::Seen(seen) => match seen.answer {
                        Some(StoredAnswer::Accepted) => return Ok(seen.order_nos),
                        Some(StoredAnswer::SoldOut { commodity_id }) => {
                            return Err(PlaceError::SoldOut { commodity_id });
                        }
                        // Same body, so the same split: the pinned numbers fit the drafts one to one.
                        None if seen.order_nos.len() == drafts.len() => seen.order_nos,
                        None => return Err(PlaceError::IdempotencyKeyReused),
                    },
                }
            }
        };
        let now_ms = self.clock.now_ms();
        let orders = pending_orders(drafts, &order_nos, now_ms);

        // Remark 1: the check is armed before the reservation, so a crash right after reserving still
        // gets the stock back.
        let check_at_ms = now_ms + self.config.reservation_check_delay_ms;
        let checks = orders
            .iter()
            .map(|o| Outgoing {
                message: Message::ReservationCheck { token: o.entry_token() },
                deliver_at_ms: check_at_ms,
            })
            .collect();
        self.bounded("bus", self.bus.publish_guards(checks)).await?;

        // Remark 2: fail early on stock. All orders of the cart or none.
        for (index, order) in orders.iter().enumerate() {
            match self.bounded("stock cache", self.reserve(order.entry_token(), &order.stock_lines(), false)).await {
                Ok(Reserve::Reserved | Reserve::AlreadyHeld(_)) => {}
                Ok(Reserve::Insufficient { commodity_id, .. }) => {
                    self.release_all(&orders[..index]).await;
                    if let Some(key) = idempotency_key {
                        self.bounded(
                            "store",
                            self.store.idempotency_answer(body.uid, key, StoredAnswer::SoldOut { commodity_id }),
                        )
                        .await?;
                    }
                    return Err(PlaceError::SoldOut { commodity_id });
                }
                // A commodity of the catalog that was never given stock: sold out.
                Ok(Reserve::NotLoaded(ids)) => {
                    self.release_all(&orders[..index]).await;
                    return Err(match ids.first() {
                        Some(&commodity_id) => PlaceError::SoldOut { commodity_id },
                        None => PortError::corrupt("stock cache", "not loaded, naming no commodity").into(),
                    });
                }
                Err(error) => {
                    self.release_all(&orders[..index]).await;
                    return Err(error.into());
                }
            }
        }

        // The pending view before the create: from the moment the answer is success the number is found
        // (`pending` until the worker creates it), across a crash too — where the store and the bus share
        // a journal the publish's sync makes the view durable with the create. Nothing is published yet,
        // so a failure here leaves nothing behind.
        if let Err(error) = self.bounded("store", self.store.insert_pending(&orders)).await {
            self.abort(&orders, false).await;
            return Err(error.into());
        }
        let creates = orders
            .iter()
            .map(|o| Outgoing { message: Message::CreateOrder(Box::new(o.clone())), deliver_at_ms: now_ms })
            .collect();
        if let Err(error) = self.bounded("bus", self.bus.publish(creates)).await {
            self.abort(&orders, idempotency_key.is_none()).await;
            return Err(error.into());
        }
        // The creates are durable: the orders will exist unless stock runs out, so the answer is success
        // whatever happens to the steps below, which only make things quicker or clearer.
        self.after_publish(&orders, body.uid, idempotency_key).await;
        Ok(order_nos)
    }

    /// A cart answered with an error after its reservation: its reservations are given back and its
    /// pending views deleted. When its creates may have reached the bus (an error can hide a publish that
    /// landed) and there is no idempotency key, the caller will never ask for these numbers again, so the
    /// worker's reservation is refused too ([`StockCache::release`] remembers an unknown token as
    /// released): a create that landed all the same then ends `rejected`, holding nothing, as the error
    /// answer said. With a key, a retry re-runs the same numbers and must be able to create them. Best
    /// effort: what fails here is done by the reservation check.
    async fn abort(&self, orders: &[Order], refuse_late_creates: bool) {
        self.release_all(orders).await;
        let order_nos: Vec<OrderNo> = orders.iter().map(|o| o.order_no).collect();
        if let Err(error) = self.bounded("store", self.store.forget_pending(&order_nos)).await {
            tracing::warn!(orders = orders.len(), %error, "pending views not deleted; the reservation check will");
        }
        self.orders_changed(order_nos).await;
        if refuse_late_creates {
            for order in orders {
                if let Err(error) = self.cache.release(order.worker_token()).await {
                    tracing::warn!(order_no = %order.order_no, %error, "could not refuse a late create of an aborted order");
                }
            }
        }
    }

    /// After the creates are durable. The entry tokens are claimed: a reservation whose create is on the
    /// bus belongs to that create (the reservation check leaves a CLAIMED token to the worker, however long
    /// the backlog). Then the idempotency answer. Neither can turn the answer into an error: a failed claim
    /// leaves the reservation to the check (the worker then reserves again), and a missing idempotency
    /// answer makes a retry re-run the idempotent steps on the same numbers.
    async fn after_publish(&self, orders: &[Order], buyer: Uid, idempotency_key: Option<&str>) {
        let claims = orders.iter().map(|o| self.bounded("stock cache", self.cache.claim(o.entry_token())));
        for (order, claim) in orders.iter().zip(futures_util::future::join_all(claims).await) {
            if let Err(error) = claim {
                tracing::warn!(order_no = %order.order_no, %error, "accepted, but the reservation could not be claimed for its create");
            }
        }
        if let Some(key) = idempotency_key
            && let Err(error) =
                self.bounded("store", self.store.idempotency_answer(buyer, key, StoredAnswer::Accepted)).await
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
        let now_ms = self.clock.now_ms();
        let batch: Vec<CreateRequest> = pending_orders(drafts, &order_nos, now_ms)
            .into_iter()
            .map(|order| CreateRequest {
                token: Some(order.entry_token()),
                unpaid_deadline_ms: now_ms + self.config.unpaid_timeout_ms,
                order,
            })
            .collect();
        for outcome in self.store.create_orders(&batch, now_ms).await? {
            if let CreateOutcome::Rejected { commodity_id } = outcome {
                return Err(PlaceError::SoldOut { commodity_id });
            }
        }
        Ok(order_nos)
    }

    async fn price(&self, body: &PlaceOrderBody) -> Result<Vec<orderly_domain::OrderDraft>, PlaceError> {
        let mut entries: Vec<CatalogEntry> = Vec::with_capacity(body.commodity_details.len());
        // Bounded before any lookup: a huge cart costs nothing.
        if body.commodity_details.len() <= self.config.cart.lines_max {
            for line in &body.commodity_details {
                if let Some(entry) = self.catalog_entry(line.commodity_id).await? {
                    entries.push(entry);
                }
            }
        }
        let drafts =
            price_and_split(body, self.config.cart, |id| entries.iter().find(|e| e.commodity_id == id).copied())?;
        Ok(drafts)
    }

    /// A catalog entry, from this process's recent reads or the store.
    pub(crate) async fn catalog_entry(&self, id: CommodityId) -> Result<Option<CatalogEntry>, PortError> {
        let now_ms = self.clock.now_ms();
        if let Some(entry) = self.catalog.get(id, now_ms, self.config.catalog_cache_ms) {
            return Ok(Some(entry));
        }
        let entry = self.bounded("store", self.store.commodity(id)).await?;
        if let Some(entry) = entry {
            self.catalog.put(entry, now_ms);
        }
        Ok(entry)
    }

    async fn new_order_nos(&self, buyer: Uid, count: usize) -> Result<Vec<OrderNo>, PortError> {
        let mut order_nos = Vec::with_capacity(count);
        for _ in 0..count {
            order_nos.push(OrderNo::new(self.ids.next_id().await?, buyer));
        }
        Ok(order_nos)
    }

    /// One dependency call of a buyer's request, bounded by `entry_call_timeout_ms`: a dependency that is
    /// down answers 503 quickly. A call cut off may still have happened; every call bounded here is one
    /// the request can leave behind safely (idempotent, or undone by the abort or the reservation check).
    async fn bounded<T>(
        &self,
        what: &'static str,
        call: impl std::future::Future<Output = Result<T, PortError>>,
    ) -> Result<T, PortError> {
        let limit_ms = self.config.entry_call_timeout_ms;
        match tokio::time::timeout(std::time::Duration::from_millis(limit_ms), call).await {
            Ok(result) => result,
            Err(_elapsed) => Err(PortError::unavailable(what, format!("no answer within {limit_ms} ms"))),
        }
    }

    /// Reserves, loading commodities the cache does not hold yet from the store (the seed's init).
    /// `NotLoaded` only for a commodity the store has no stock for; a cache emptied again between the
    /// load and the reserve (a flush racing it) is loaded again, and after [`RELOAD_ATTEMPTS`] it is
    /// "unavailable" — never taken for "no stock".
    pub(crate) async fn reserve(
        &self,
        token: Token,
        lines: &[(CommodityId, u32)],
        claimed: bool,
    ) -> Result<Reserve, PortError> {
        for _ in 0..RELOAD_ATTEMPTS {
            match self.cache.reserve(token, lines, claimed).await? {
                Reserve::NotLoaded(ids) => {
                    if !self.load_into_cache(&ids).await? {
                        return Ok(Reserve::NotLoaded(ids));
                    }
                }
                other => return Ok(other),
            }
        }
        Err(PortError::unavailable("stock cache", "the counters did not stay loaded (is the cache being flushed?)"))
    }

    /// Loads the stock of `ids` into the cache. `false`: the store has no stock for some of them.
    pub(crate) async fn load_into_cache(&self, ids: &[CommodityId]) -> Result<bool, PortError> {
        let levels = self.store.stock(ids).await?;
        let present: Vec<(CommodityId, StockLevel)> =
            ids.iter().zip(levels).filter_map(|(id, level)| level.map(|l| (*id, l))).collect();
        self.cache.init(&present).await?;
        Ok(present.len() == ids.len())
    }

    /// Best effort: a release that fails here is done by the reservation check instead.
    async fn release_all(&self, orders: &[Order]) {
        for order in orders {
            if let Err(error) = self.cache.release(order.entry_token()).await {
                tracing::warn!(order_no = %order.order_no, %error, "release failed; the reservation check will do it");
            }
        }
    }

    /// An order as the caller may see it (from the order cache when there is one). Another buyer's order
    /// is "not found", not "forbidden".
    pub async fn order(&self, actor: Actor, order_no: OrderNo) -> Result<Order, OrderError> {
        let order = match self.cached_order(order_no).await {
            Some(order) => order,
            None => {
                let order = self.bounded("store", self.store.order(order_no)).await?.ok_or(OrderError::NOT_FOUND)?;
                self.cache_order(&order).await;
                order
            }
        };
        match actor {
            Actor::Buyer(uid) if uid != order.buyer => Err(OrderError::NOT_FOUND),
            _ => Ok(order),
        }
    }

    /// The cache is a copy: when it fails, the store answers.
    async fn cached_order(&self, order_no: OrderNo) -> Option<Order> {
        let orders = self.orders.as_ref()?;
        orders.get(order_no).await.unwrap_or_else(|error| {
            tracing::debug!(%order_no, %error, "order cache unavailable; reading the store");
            None
        })
    }

    async fn cache_order(&self, order: &Order) {
        if let Some(orders) = &self.orders
            && let Err(error) = orders.put(order).await
        {
            tracing::debug!(order_no = %order.order_no, %error, "order cache unavailable");
        }
    }

    /// After a change of an order in the store: its cached copy is deleted now and again after
    /// `order_cache_second_delete_ms` (a query that read the store before the change may have put the
    /// old order back). A failed delete leaves the copy to its expiry.
    pub(crate) async fn orders_changed(&self, order_nos: Vec<OrderNo>) {
        let Some(orders) = &self.orders else { return };
        if order_nos.is_empty() {
            return;
        }
        if let Err(error) = orders.forget(&order_nos).await {
            tracing::warn!(orders = order_nos.len(), %error, "order cache: delete failed; the copies expire on their own");
        }
        let (orders, delay) = (Arc::clone(orders), self.config.order_cache_second_delete_ms);
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            if let Err(error) = orders.forget(&order_nos).await {
                tracing::warn!(orders = order_nos.len(), %error, "order cache: second delete failed; the copies expire on their own");
            }
        });
    }

    pub async fn orders_of(&self, buyer: Uid, before: Option<OrderNo>, limit: usize) -> Result<Vec<Order>, PortError> {
        self.bounded("store", self.store.orders_of(buyer, before, limit.clamp(1, self.config.page_size_max))).await
    }

    pub async fn cancel(&self, actor: Actor, order_no: OrderNo) -> Result<Order, OrderError> {
        self.order(actor, order_no).await?;
        let order =
            self.bounded("store", self.store.transition(order_no, OrderAction::Cancel, self.clock.now_ms())).await??;
        self.orders_changed(vec![order_no]).await;
        tracing::info!(%order_no, buyer = %order.buyer, "order cancelled; buyer notified");
        Ok(order)
    }

    /// Pays through the FSM: the attempt is recorded in the safe-pay set *before* the charge is sent,
    /// so a crash or a lost answer leaves a trace the reconciler settles (remark 6, forced completion).
    pub async fn pay(&self, actor: Actor, order_no: OrderNo) -> Result<PayOutcome, OrderError> {
        self.order(actor, order_no).await?;
        let now_ms = self.clock.now_ms();
        let attempt =
            PaymentAttempt { started_ms: now_ms, charge_deadline_ms: now_ms + self.config.payment_call_timeout_ms };
        let order = self.bounded("store", self.store.begin_payment(order_no, attempt)).await??;
        self.orders_changed(vec![order_no]).await;
        let request = ChargeRequest {
            order_no,
            amount: order.total,
            // One key per attempt: a retry of this attempt is idempotent, a new attempt after a decline
            // may charge, and the service never charges an order that already has a success.
            idempotency_key: format!("{order_no}-{}", attempt.started_ms),
            deadline_ms: attempt.charge_deadline_ms,
        };
        let timeout = std::time::Duration::from_millis(self.config.payment_call_timeout_ms);
        let answer = match tokio::time::timeout(timeout, self.payments.charge(request)).await {
            Ok(answer) => answer,
            Err(_elapsed) => Err(PortError::unavailable("payments", "charge timed out")),
        };
        let result = match answer {
            Ok(ChargeOutcome::Succeeded { payment_id }) => PaymentResult::Succeeded { payment_id },
            Ok(ChargeOutcome::Declined { reason }) => PaymentResult::Declined { reason },
            Err(error) => {
                tracing::warn!(%order_no, %error, "charge without a definite answer; left to the reconciler");
                let later = self.clock.now_ms() + self.config.reconcile_backoff_ms;
                // The attempt is in the safe-pay set already: without the postponement the reconciler
                // asks at the charge deadline instead. Never an error answer for a charge that may be done.
                if let Err(error) = self.store.postpone_payment_check(order_no, later).await {
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
        let order = self.store.finish_payment(order_no, result, self.clock.now_ms()).await??;
        self.orders_changed(vec![order_no]).await;
        Ok(match declined {
            None => {
                tracing::info!(%order_no, buyer = %order.buyer, "order paid; buyer notified");
                PayOutcome::Paid(Box::new(order))
            }
            // A pay-at-once attempt without an answer: the system charges again (`store_rules::finish_attempt`).
            Some(_) if crate::store_rules::charge_owed(&order) => PayOutcome::Pending(Box::new(order)),
            Some(reason) => PayOutcome::Declined { order: Box::new(order), reason },
        })
    }
}

/// How often a reserve loads counters that a flush keeps emptying before it answers "unavailable".
const RELOAD_ATTEMPTS: usize = 3;

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
        })
        .collect()
}
