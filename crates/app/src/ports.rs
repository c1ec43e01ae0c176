//! The ports: what the flow needs from the outside world, named by role, never by technology.
//!
//! Business outcomes are typed results (`Reserve::Insufficient`); infrastructure failures are a
//! [`PortError`]. Every adapter of a port passes the same contract suite.

use async_trait::async_trait;
use orderly_domain::{CatalogEntry, CommodityId, OrderAction, OrderNo, ShopId, SnowflakeId, TransitionRejection, Uid};

use crate::caps::{Admission, Admit};
use crate::model::{
    Delivery, IdempotencyRecord, Order, OutboxEvent, Outgoing, PaymentAttempt, Restock, StockChange, StockLevel,
    StoredAnswer, Token, TokenState, Topic,
};

/// An infrastructure failure, as a port reports it. Each adapter has its own error type (a `thiserror`
/// enum with `is_retryable()`) and maps it here, at the seam; the flow only needs [`PortErrorKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct PortError {
    /// The dependency: "postgres", "local store", "stock cache"…
    pub what: &'static str,
    pub detail: String,
    pub kind: PortErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortErrorKind {
    /// Down, timed out, busy, or a conflict: the same call may succeed later. The flow waits for it
    /// (503 + Retry-After at the API; a worker retries, never dead-letters).
    Unavailable,
    /// Refused and will be refused again (a misconfiguration, a statement the engine rejects): retrying
    /// does not help; nothing read was damaged.
    Failed,
    /// Data that cannot be read as it was written (an undecodable record, a malformed answer).
    Corrupt,
}

impl PortError {
    pub fn unavailable(what: &'static str, detail: impl ToString) -> PortError {
        PortError { what, detail: detail.to_string(), kind: PortErrorKind::Unavailable }
    }
    pub fn failed(what: &'static str, detail: impl ToString) -> PortError {
        PortError { what, detail: detail.to_string(), kind: PortErrorKind::Failed }
    }
    pub fn corrupt(what: &'static str, detail: impl ToString) -> PortError {
        PortError { what, detail: detail.to_string(), kind: PortErrorKind::Corrupt }
    }
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        self.kind == PortErrorKind::Unavailable
    }
}

pub type PortResult<T> = Result<T, PortError>;

/// What a change of an order answers: the order after it, or why the rules refused it (or, outside,
/// why the store could not answer).
pub type ChangeResult = PortResult<Result<Order, ChangeRejection>>;

pub use crate::time::Clock;

#[async_trait]
pub trait IdGen: Send + Sync + std::fmt::Debug {
    async fn next_id(&self) -> PortResult<SnowflakeId>;
    /// This process's number among those sharing the store (the snowflake worker id): unique while they
    /// run, so it can name the holder of a lease.
    fn instance(&self) -> u64;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserve {
    Reserved,
    /// The token exists already (a retry): nothing changed.
    AlreadyHeld(TokenState),
    /// Nothing changed; this is the first commodity that lacks stock.
    Insufficient {
        commodity_id: CommodityId,
        available: u64,
    },
    /// These commodities are not in the cache yet: load them from the store and try again.
    NotLoaded(Vec<CommodityId>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Now (or already) claimed by the worker.
    Claimed,
    Confirmed,
    /// Released (by the reservation check or the entry): reserve again or reject.
    Released,
    /// Unknown to the cache (lost, expired): reserve again or reject. Never assume it was reserved.
    Missing,
}

/// A reservation to make again when its counters are loaded ([`StockCache::init`]): an accepted order
/// not created yet (its `pending` view), by its entry token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub token: Token,
    pub lines: Vec<(CommodityId, u32)>,
    /// When its reservation check is due, for a cache that keeps the checks
    /// ([`StockCache::keeps_checks`]): a reservation made again is checked like one the entry made. None:
    /// no check (its create is known to be on the bus: the standalone store writes a view and its create
    /// in one write).
    pub check_at_ms: Option<u64>,
}

/// The stock cache: the seed's Redis + Lua role. Every operation is atomic and idempotent per token.
#[async_trait]
pub trait StockCache: Send + Sync + std::fmt::Debug {
    /// Loads levels that are absent, plus the changes kept for them that are newer than the level read;
    /// present ones are left alone (the seed's init script). With them, the reservations in `held` are
    /// made again (RESERVED, their lines taken from the counters): each whose token the cache does not
    /// know and all of whose counters this call loads; any other is skipped whole. So accepted orders
    /// whose reservations died with the cache keep their units, instead of the reloaded counters selling
    /// them a second time.
    /// A cache that keeps the reservation checks arms each remade reservation's at its `check_at_ms`.
    async fn init(&self, levels: &[(CommodityId, StockLevel)], held: &[Held]) -> PortResult<()>;
    /// All lines or none. With `claimed`, the token starts CLAIMED (the worker's own reservation).
    /// A token the cache remembers as RELEASED is refused as `AlreadyHeld(Released)` (no hanging reserve).
    async fn reserve(&self, token: Token, lines: &[(CommodityId, u32)], claimed: bool) -> PortResult<Reserve>;
    /// Whether the cache keeps the entry's reservation checks itself (remark 1): then the entry reserves
    /// with [`StockCache::reserve_checked`] and publishes no check, and the workers take the checks due
    /// from [`StockCache::due_checks`]. Otherwise the entry publishes them ([`Bus::publish_guards`]).
    fn keeps_checks(&self) -> bool {
        false
    }
    /// [`StockCache::reserve`] of an entry token (RESERVED) that, when it reserves, arms the reservation's
    /// check due at `check_at_ms` in the same atomic step: the check lives exactly as long as the
    /// reservation (a cache that loses one loses both, and a reload makes both again from the pending
    /// views). `AlreadyHeld` arms nothing (the first reserve did). A cache that does not keep checks
    /// refuses the call.
    async fn reserve_checked(
        &self,
        token: Token,
        lines: &[(CommodityId, u32)],
        check_at_ms: u64,
    ) -> PortResult<Reserve> {
        let _ = (token, lines, check_at_ms);
        Err(PortError::failed("stock cache", "this cache does not keep reservation checks"))
    }
    /// Up to `max` reservation checks due by `now_ms`, of the tokens of `shops` (a cache sharded by shop
    /// looks only there). Each is handed out again at `retry_at_ms` unless [`StockCache::checks_done`]
    /// forgets it first, so a worker that dies holding one delays it, never loses it.
    async fn due_checks(&self, shops: &[ShopId], now_ms: u64, retry_at_ms: u64, max: usize) -> PortResult<Vec<Token>> {
        let _ = (shops, now_ms, retry_at_ms, max);
        Ok(Vec::new())
    }
    /// Forgets the checks of `tokens` (done) that are still as [`StockCache::due_checks`] handed them out,
    /// due at `handed_out_at_ms` (its `retry_at_ms`): one armed again meanwhile (a reload made its
    /// reservation again) stays. A confirmation forgets its token's check by itself.
    async fn checks_done(&self, tokens: &[Token], handed_out_at_ms: u64) -> PortResult<()> {
        let _ = (tokens, handed_out_at_ms);
        Ok(())
    }
    /// How many checks are armed (due or not) for the tokens of `shops`: work still to do.
    async fn checks_armed(&self, shops: &[ShopId]) -> PortResult<usize> {
        let _ = shops;
        Ok(0)
    }
    /// RESERVED → CLAIMED.
    async fn claim(&self, token: Token) -> PortResult<Claim>;
    /// RESERVED or CLAIMED → CONFIRMED: the stock now lives in the store as sold.
    ///
    /// `deductions` are what the store took for it, with the versions they made. A counter remembers
    /// every version it counts, so no deduction is counted twice, however late it is reported again: a
    /// live token's were counted when it reserved; a token the cache lost (missing — expired after its
    /// confirmation, or lost with the cache — or remembered only as an empty release) or released (its
    /// units given back while the store sold them) has each deduction applied to a counter that does not
    /// count its version yet, and kept for a counter not loaded yet (its load applies those newer than
    /// what it read). Without deductions a lost token stays lost.
    async fn confirm(&self, token: Token, deductions: &[StockChange]) -> PortResult<()>;
    /// RESERVED or CLAIMED → RELEASED, returning the stock. Unknown token: remembered as RELEASED, returns
    /// nothing (empty rollback). Answers the state found.
    async fn release(&self, token: Token) -> PortResult<Option<TokenState>>;
    /// Like [`StockCache::release`], but only from RESERVED: a CLAIMED token belongs to a worker.
    async fn release_if_reserved(&self, token: Token) -> PortResult<Option<TokenState>>;
    /// RESERVED → CLAIMED: the units stay with an order whose create is published again. Answers the
    /// state found. An unknown token is remembered as RELEASED with no lines, in the same atomic step
    /// (like [`StockCache::release`]'s empty rollback): no reservation is made for it afterwards — not a
    /// late entry's, not one a load of a lost cache would make again from the order's pending view, which
    /// a separate release would give back while a worker creates the order on the token.
    async fn keep_if_reserved(&self, token: Token) -> PortResult<Option<TokenState>>;
    /// Returns stock once per `restock.key`; lines whose version the counter already counts are skipped,
    /// and lines of a counter not loaded yet are kept for its load, like a lost token's deductions.
    async fn restock(&self, restock: &Restock) -> PortResult<()>;
    /// What the cache would still sell, per commodity (None: not loaded).
    async fn available(&self, ids: &[CommodityId]) -> PortResult<Vec<Option<u64>>>;
}

/// The gate of the buyer's caps ([`crate::caps`]): one atomic call per cart, so racing carts of one
/// buyer cannot pass a cap together. Remembers the orders it admitted for `recent_ms`.
#[async_trait]
pub trait Holdings: Send + Sync + std::fmt::Debug {
    /// Judges the cart by [`crate::caps::judge`] against the orders admitted lately, and records the
    /// cart's orders if it passes; a refusal records nothing.
    async fn admit(&self, buyer: Uid, admission: &Admission) -> PortResult<Admit>;
    /// Forgets orders admitted for a cart that was then refused (sold out, an error).
    async fn withdraw(&self, buyer: Uid, order_nos: &[OrderNo]) -> PortResult<()>;
}

/// Why a change to an order was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeRejection {
    #[error("no such order")]
    NotFound,
    #[error(transparent)]
    Transition(#[from] TransitionRejection),
    #[error("a payment for this order is in flight")]
    PaymentInFlight,
}

/// A change of one order ([`Store::change_order`]). What it does is decided by
/// `store_rules::plan_change`; a store reads the order (and the stock levels `store_rules::stock_to_lock`
/// names), plans, and writes the plan in one atomic write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderChange {
    /// A buyer's or a timer's action through the FSM (`store_rules::change`).
    Action(OrderAction),
    /// A payment attempt starts : the order enters the safe-pay set.
    BeginPayment(PaymentAttempt),
    /// The attempt ends : the order leaves the safe-pay set.
    FinishPayment(PaymentResult),
}

/// What happened to one order of a create batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// Now `to_pay`, with its stock deducted (the order records the stock versions it made).
    Created(Box<Order>),
    /// Not enough durable stock for this commodity: the order is `rejected`, nothing deducted.
    Rejected { commodity_id: CommodityId },
    /// A redelivery: the order had already left `pending`; nothing changed.
    AlreadyDone(Box<Order>),
}

/// One order of a create batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    pub order: Order,
    /// The cache reservation this creation consumes; `None` when the cache had no stock for it, and
    /// the store rejects the order without deducting.
    pub token: Option<Token>,
    /// Without a token: the commodity the cache had too little of, named as the order's reason
    /// (`rejected_for`; its first line when `None`).
    pub short_of: Option<CommodityId>,
    pub unpaid_deadline_ms: u64,
}

/// The reason an attempt voided for lack of an answer is declined with (the payment ledger's word for
/// it): nothing was taken, and it is not the buyer's decline.
pub const NO_ANSWER_REASON: &str = "acquirer_no_answer";

/// How a payment attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentResult {
    Succeeded {
        payment_id: String,
    },
    Declined {
        reason: String,
    },
    /// The service never started the charge (its deadline passed): back to `to_pay`.
    NeverCharged,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// No record: this one is now stored, with these order numbers.
    Started,
    /// The key was seen with this same request.
    Seen(IdempotencyRecord),
    /// The key was seen with another request body.
    Mismatch,
}

/// The durable store: catalog, stock ledger, orders, outbox, safe-pay set, idempotency keys.
///
/// Every method that returns has made its writes durable unless its doc says otherwise.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Writes catalog entries and changes [`Store::catalog_version`] in the same atomic write.
    async fn put_commodities(&self, entries: &[CatalogEntry]) -> PortResult<()>;
    async fn commodity(&self, id: CommodityId) -> PortResult<Option<CatalogEntry>>;
    /// A number that changes with every catalog write (0 before the first): a process keeping catalog
    /// entries learns by one small read whether any of them may have changed.
    async fn catalog_version(&self) -> PortResult<u64>;
    /// Adds stock: `initial` and `available` grow by `quantity`, `version` is bumped.
    async fn add_stock(&self, id: CommodityId, quantity: u64) -> PortResult<StockLevel>;
    async fn stock(&self, ids: &[CommodityId]) -> PortResult<Vec<Option<StockLevel>>>;
    async fn all_stock(&self) -> PortResult<Vec<(CommodityId, StockLevel)>>;

    /// Records accepted orders as `pending`, if absent. Written before the create is published and need
    /// not be durable on its own: the publish that follows makes it durable with the create where the
    /// store and the bus share a journal; elsewhere the store's own commit does.
    async fn insert_pending(&self, orders: &[Order]) -> PortResult<()>;
    /// [`Store::insert_pending`], and `creates` published in the same atomic write, durable on return,
    /// where this store writes its bus's messages in its own writes (the standalone store opened with
    /// its bus): `None`. Elsewhere only the views are written and the creates come back, for the caller
    /// to publish.
    async fn insert_pending_publishing(
        &self,
        orders: &[Order],
        creates: Vec<Outgoing>,
    ) -> PortResult<Option<Vec<Outgoing>>> {
        self.insert_pending(orders).await.map(|()| Some(creates))
    }
    /// Deletes the `pending` views among `order_nos` (orders in any other state are left alone): the
    /// views of an entry answered with an error.
    async fn forget_pending(&self, order_nos: &[OrderNo]) -> PortResult<()>;
    /// Every order still `pending`: accepted, not created or rejected yet.
    async fn pending_orders(&self) -> PortResult<Vec<Order>>;
    /// One atomic write for the batch: each pending (or absent) order becomes `to_pay` with its stock
    /// deducted (never below zero) and its outbox events, or `rejected`. Already-created orders are left
    /// alone (redelivery).
    async fn create_orders(&self, batch: &[CreateRequest], now_ms: u64) -> PortResult<Vec<CreateOutcome>>;
    async fn order(&self, order_no: OrderNo) -> PortResult<Option<Order>>;
    /// Several orders at once, one answer per number in the same order (a worker's batch: a store that
    /// can, reads them by one statement).
    async fn orders(&self, order_nos: &[OrderNo]) -> PortResult<Vec<Option<Order>>> {
        let mut orders = Vec::with_capacity(order_nos.len());
        for &order_no in order_nos {
            orders.push(self.order(order_no).await?);
        }
        Ok(orders)
    }
    /// The buyer's orders, newest first, strictly older than `before` when given.
    async fn orders_of(&self, buyer: Uid, before: Option<OrderNo>, limit: usize) -> PortResult<Vec<Order>>;
    /// Every order and every stock level as of one moment, for the audit: an order read before a
    /// transition and stock read after it would show stock that is not there.
    async fn audit_view(&self) -> PortResult<(Vec<Order>, Vec<(CommodityId, StockLevel)>)>;
    /// Applies a change to an order atomically with its effects: through the order FSM (an action, a
    /// payment's end), the stock it returns, the outbox event it owes, its safe-pay entry. Cancel and
    /// auto-cancel are refused while a payment is in flight.
    async fn change_order(&self, order_no: OrderNo, change: OrderChange, now_ms: u64) -> ChangeResult;
    /// [`OrderChange::Action`].
    async fn transition(&self, order_no: OrderNo, action: OrderAction, now_ms: u64) -> ChangeResult {
        self.change_order(order_no, OrderChange::Action(action), now_ms).await
    }
    /// `to_pay` with no attempt in flight → attempt recorded and put in the safe-pay set.
    async fn begin_payment(&self, order_no: OrderNo, attempt: PaymentAttempt) -> ChangeResult {
        self.change_order(order_no, OrderChange::BeginPayment(attempt), attempt.started_ms).await
    }
    /// Ends the attempt: success → `paid` (FSM pay); otherwise back to `to_pay`. Leaves the safe-pay set.
    async fn finish_payment(&self, order_no: OrderNo, result: PaymentResult, now_ms: u64) -> ChangeResult {
        self.change_order(order_no, OrderChange::FinishPayment(result), now_ms).await
    }
    /// Safe-pay entries due at `now_ms`, earliest first.
    async fn payments_due(&self, now_ms: u64, limit: usize) -> PortResult<Vec<OrderNo>>;
    /// Moves a safe-pay entry to a later check.
    async fn postpone_payment_check(&self, order_no: OrderNo, at_ms: u64) -> PortResult<()>;
    /// Number of entries in the safe-pay set.
    async fn payments_pending(&self) -> PortResult<usize>;

    /// Oldest outbox events first, with their ids.
    async fn outbox(&self, limit: usize) -> PortResult<Vec<(u64, OutboxEvent)>>;
    /// Need not be durable: a replayed event is idempotent.
    async fn outbox_done(&self, ids: &[u64]) -> PortResult<()>;

    async fn idempotency_begin(
        &self,
        buyer: Uid,
        key: &str,
        record: &IdempotencyRecord,
    ) -> PortResult<IdempotencyBegin>;
    /// Need not be durable: a lost answer makes a retry re-run the idempotent flow.
    async fn idempotency_answer(&self, buyer: Uid, key: &str, answer: StoredAnswer) -> PortResult<()>;

    /// Small named values (the id generator's lease).
    async fn meta(&self, key: &str) -> PortResult<Option<u64>>;
    /// Sets `key` to `value` if it holds `expected` now (`None`: absent), durably; whether it did. The
    /// id generator's fencing: a holder whose value was replaced by another's cannot write again.
    async fn replace_meta(&self, key: &str, expected: Option<u64>, value: u64) -> PortResult<bool>;

    /// Keeps the largest fence seen for `name` (a role's leader, [`crate::Registry::lead`]): whether
    /// `fence` is it — `false` for a leader that was replaced, however long it slept. Atomic.
    async fn fence(&self, name: &str, fence: u64) -> PortResult<bool>;

    /// Takes or renews the lease `name` for `holder` until `until_ms`, if it is free (expired at
    /// `now_ms`) or `holder`'s already: one active instance of a role among many processes. Whether
    /// `holder` holds it now. Atomic; need not be durable (a lease lost in a crash is taken again).
    async fn lease(&self, name: &str, holder: u64, now_ms: u64, until_ms: u64) -> PortResult<bool>;
}

/// The message bus: durable publish, at-least-once delivery, delayed delivery.
#[async_trait]
pub trait Bus: Send + Sync + std::fmt::Debug {
    /// Durable when it returns.
    async fn publish(&self, messages: Vec<Outgoing>) -> PortResult<()>;
    /// Publishes messages that guard state held only in the stock cache (the reservation checks, for a
    /// cache that does not keep them itself: [`StockCache::keeps_checks`]). They must be exactly as
    /// durable as the cache's reservations: a profile whose cache dies with the process may lose them in
    /// the same crash. By default as durable as [`Bus::publish`].
    async fn publish_guards(&self, messages: Vec<Outgoing>) -> PortResult<()> {
        self.publish(messages).await
    }
    /// Up to `max` messages of `topic` that are due; each comes back unless acked or retried.
    async fn receive(&self, topic: Topic, max: usize) -> PortResult<Vec<Delivery>>;
    async fn ack(&self, receipts: &[Vec<u8>]) -> PortResult<()>;
    /// Delivers the message again at `at_ms`.
    async fn retry(&self, receipt: &[u8], at_ms: u64) -> PortResult<()>;
    /// Moves the message to the dead-letter queue with its reason, for an operator.
    async fn dead_letter(&self, receipt: &[u8], reason: &str) -> PortResult<()>;
    /// Messages waiting (due or not) per topic, and dead letters.
    async fn depth(&self) -> PortResult<BusDepth>;
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BusDepth {
    pub queued: Vec<(Topic, usize)>,
    pub dead_letters: usize,
}

#[derive(Debug, Clone)]
pub struct ChargeRequest {
    pub order_no: OrderNo,
    pub amount: orderly_domain::Money,
    /// One per payment attempt: a retry of the attempt never charges twice.
    pub idempotency_key: String,
    /// The service must not start the charge after this time.
    pub deadline_ms: u64,
    /// The order's trace context (`traceparent`), sent along as gRPC metadata ([`crate::trace`]).
    pub trace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Succeeded { payment_id: String },
    Declined { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentStatus {
    Succeeded {
        payment_id: String,
    },
    Declined {
        reason: String,
    },
    /// Started, no definite answer yet.
    Processing,
    NotFound,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    /// Everything refunded on this order so far, this refund included (a retry of the same refund key
    /// answers the same and refunds nothing more).
    Refunded { total: orderly_domain::Money },
    /// Nothing refunded.
    Refused { reason: RefundRefusal },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundRefusal {
    /// The order has no successful charge.
    NotCharged,
    /// Zero, negative, or more than what is left to refund.
    AmountOutOfRange,
}

/// A short-lived copy of orders for the buyers' queries (the seed's order cache in Redis). Never the
/// truth: every change and every worker reads the store. A change deletes the copy at once and again a
/// moment later (the seed's delayed double delete: a query that read the store just before the change
/// may put the old order back in between); entries also expire.
#[async_trait]
pub trait OrderCache: Send + Sync + std::fmt::Debug {
    async fn get(&self, order_no: OrderNo) -> PortResult<Option<Order>>;
    async fn put(&self, order: &Order) -> PortResult<()>;
    /// Deletes the copies of these orders (one round trip for a batch).
    async fn forget(&self, order_nos: &[OrderNo]) -> PortResult<()>;
}

/// The payment service. An `Err` from `charge` means *unknown outcome*: the charge may have happened.
/// An order with a successful charge is never charged again, whatever the key.
#[async_trait]
pub trait Payments: Send + Sync + std::fmt::Debug {
    async fn charge(&self, request: ChargeRequest) -> PortResult<ChargeOutcome>;
    async fn query(&self, order_no: OrderNo) -> PortResult<PaymentStatus>;
    /// Refunds `amount` of a successful charge; idempotent per `refund_key`; never more than was charged.
    async fn refund(
        &self,
        order_no: OrderNo,
        amount: orderly_domain::Money,
        refund_key: &str,
    ) -> PortResult<RefundOutcome>;
    /// Every successful charge, for the audit (I5).
    async fn succeeded(&self) -> PortResult<Vec<(OrderNo, String)>>;
}

/// What a shared bucket gave ([`SharedRates::take`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Tokens granted now, at most what was asked.
    pub granted: u32,
    /// When none was granted: milliseconds until the bucket has one.
    pub wait_ms: u64,
}

/// Token buckets shared by every process of a cluster (the entry's process-wide and per-commodity rate
/// rules): a process takes a few tokens at a time and spends them locally. The engine's own clock
/// decides (the processes' clocks are not compared).
#[async_trait]
pub trait SharedRates: Send + Sync + std::fmt::Debug {
    /// Up to `want` tokens of bucket `key` — `per_second` sustained, at most `burst` at once — taken
    /// atomically: as many as it holds now, none beyond.
    async fn take(&self, key: &str, per_second: u32, burst: u32, want: u32) -> PortResult<Taken>;
}
