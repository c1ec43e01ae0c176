//! What the ports exchange.

use orderly_domain::{CommodityId, Money, OrderLine, OrderNo, OrderState, ShopId, Uid};
use serde::{Deserialize, Serialize};

/// One order, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_no: OrderNo,
    pub buyer: Uid,
    pub to_uid: Uid,
    pub shop_id: ShopId,
    pub pay_at_once: bool,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub state: OrderState,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Set while a charge is in flight or without a definite answer; cancel waits for it.
    pub payment_attempt: Option<PaymentAttempt>,
    /// The payment service's id for the successful charge.
    pub payment_id: Option<String>,
    /// Why the last charge was declined, for the buyer.
    pub last_decline: Option<String>,
    /// Why the order was rejected after acceptance.
    pub rejected_for: Option<CommodityId>,
    /// Generation of the cache reservation its creation consumed, so the other can be released.
    pub token_generation: Option<u8>,
    /// Per line, the stock version its deduction made in the store; empty until created. A cache that
    /// lost the reservation uses it to tell whether a counter it reloaded already counts the deduction.
    #[serde(default)]
    pub stock_versions: Vec<u64>,
    /// The trace context (`traceparent`) of the request that placed it: its steps in every process log
    /// under it ([`crate::trace`]).
    #[serde(default)]
    pub trace: Option<String>,
}

impl Order {
    pub fn stock_lines(&self) -> Vec<(CommodityId, u32)> {
        self.lines.iter().map(|l| (l.commodity_id, l.quantity)).collect()
    }

    /// The reservation made at the entry.
    pub fn entry_token(&self) -> Token {
        Token::entry(self.order_no, self.shop_id)
    }

    /// The reservation a worker makes when the entry's was released or lost.
    pub fn worker_token(&self) -> Token {
        Token::worker(self.order_no, self.shop_id)
    }

    /// What its creation took from the store: (commodity, quantity, stock version after), per line.
    /// Empty for an order not created (or created before versions were recorded).
    pub fn deductions(&self) -> Vec<StockChange> {
        if self.stock_versions.len() != self.lines.len() {
            return Vec::new();
        }
        self.lines.iter().zip(&self.stock_versions).map(|(l, v)| (l.commodity_id, l.quantity, *v)).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAttempt {
    pub started_ms: u64,
    /// The payment service refuses to start this charge after this time, so after it a "not found"
    /// from the service is definite.
    pub charge_deadline_ms: u64,
}

/// A cache reservation: the order number plus a generation. Generation 0 is reserved at the entry; a
/// worker that finds it released or lost reserves generation 1 instead (the seed's token carried a
/// timestamp for the same purpose: to tell a retried reservation from the first). It names the order's
/// shop, whose commodities it reserves: a cache sharded by shop keeps the token beside that stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Token {
    pub order_no: OrderNo,
    pub shop_id: ShopId,
    pub generation: u8,
}

impl Token {
    pub fn entry(order_no: OrderNo, shop_id: ShopId) -> Token {
        Token { order_no, shop_id, generation: 0 }
    }
    pub fn worker(order_no: OrderNo, shop_id: ShopId) -> Token {
        Token { order_no, shop_id, generation: 1 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    Reserved,
    Claimed,
    Confirmed,
    Released,
}

/// Durable stock of one commodity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevel {
    /// The shop selling it: a cache sharded by shop keeps its counter there.
    pub shop_id: ShopId,
    /// Everything ever added by the admin.
    pub initial: u64,
    /// Not deducted by any live order.
    pub available: u64,
    /// Bumped on every change of `available` (stock added, deducted, returned), so the cache can tell
    /// whether a change is already part of what it loaded.
    pub version: u64,
}

/// One change of a commodity's durable stock, for the cache to follow: (commodity, quantity, the
/// stock version the change made).
pub type StockChange = (CommodityId, u32, u64);

/// A stock return for the cache, one per (order, reason).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restock {
    /// Idempotency key of the event.
    pub key: String,
    /// Every line's commodity is sold by this shop (a restock never spans shops).
    pub shop_id: ShopId,
    /// What came back, with the store version after the return.
    pub lines: Vec<StockChange>,
}

/// Work the store records in the same atomic write as a state change, carried out by the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxEvent {
    RestockCache(Restock),
    ScheduleUnpaidTimeout { order_no: OrderNo, at_ms: u64 },
    Charge { order_no: OrderNo },
}

impl OutboxEvent {
    /// The bus message this event is carried out as, due at once (`now_ms`) or at its time; `None` for a
    /// restock, which the relay applies to the cache itself. The relay's rule, and a store's that shares
    /// its bus's atomic writes (the standalone one writes these messages in the change's own write).
    pub fn message(&self, now_ms: u64) -> Option<Outgoing> {
        match self {
            OutboxEvent::RestockCache(_) => None,
            OutboxEvent::ScheduleUnpaidTimeout { order_no, at_ms } => {
                Some(Outgoing { message: Message::UnpaidTimeout { order_no: *order_no }, deliver_at_ms: *at_ms })
            }
            OutboxEvent::Charge { order_no } => {
                Some(Outgoing { message: Message::Charge { order_no: *order_no }, deliver_at_ms: now_ms })
            }
        }
    }
}

/// Messages on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    CreateOrder(Box<Order>),
    ReservationCheck { token: Token },
    UnpaidTimeout { order_no: OrderNo },
    Charge { order_no: OrderNo },
}

/// Queues, one per kind of message, so a backlog of one kind never delays another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    CreateOrder,
    ReservationCheck,
    UnpaidTimeout,
    Charge,
}

impl Topic {
    pub const ALL: [Topic; 4] = [Topic::CreateOrder, Topic::ReservationCheck, Topic::UnpaidTimeout, Topic::Charge];

    pub fn as_str(self) -> &'static str {
        match self {
            Topic::CreateOrder => "create_order",
            Topic::ReservationCheck => "reservation_check",
            Topic::UnpaidTimeout => "unpaid_timeout",
            Topic::Charge => "charge",
        }
    }
}

impl Message {
    pub fn topic(&self) -> Topic {
        match self {
            Message::CreateOrder(_) => Topic::CreateOrder,
            Message::ReservationCheck { .. } => Topic::ReservationCheck,
            Message::UnpaidTimeout { .. } => Topic::UnpaidTimeout,
            Message::Charge { .. } => Topic::Charge,
        }
    }
}

/// A message to publish, due at `deliver_at_ms` (now, or later for a delayed message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub message: Message,
    pub deliver_at_ms: u64,
}

/// What a broker's dead-letter queue holds, for an operator: the message (`None` when it could not even
/// be read), its topic, why it was given up, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub topic: Topic,
    pub message: Option<Message>,
    pub reason: String,
    pub at_ms: u64,
}

/// A message handed to a consumer. It comes back unless acked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Bus-specific handle for ack and retry.
    pub receipt: Vec<u8>,
    pub message: Message,
    /// 1 on the first delivery.
    pub attempt: u32,
    /// When it was due (published, or its delay or retry over): how long it waited is `now - due_ms`.
    pub due_ms: u64,
}

/// What the entry answered to an `Idempotency-Key`, kept so a retry gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The request body, canonical JSON: the same key with another body is refused.
    pub request: String,
    /// Order numbers pinned to this key before anything else happened.
    pub order_nos: Vec<OrderNo>,
    pub answer: Option<StoredAnswer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredAnswer {
    Accepted,
    SoldOut { commodity_id: CommodityId },
}
