//! Bounds and delays of the flow. Every bound has a default that suits one small machine.

use orderly_domain::CartLimits;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowConfig {
    pub cart: CartLimits,
    /// Delay of the reservation check armed before each reservation (the seed's 10 s).
    pub reservation_check_delay_ms: u64,
    /// An order still unpaid this long after creation is closed and its stock returned.
    pub unpaid_timeout_ms: u64,
    /// Deadline of one call to the payment service.
    pub payment_call_timeout_ms: u64,
    /// First wait before the reconciler asks again about a payment without a definite answer.
    pub reconcile_backoff_ms: u64,
    /// Longest wait between two questions about the same payment.
    pub reconcile_backoff_ms_max: u64,
    /// Messages taken from the bus in one step of a worker.
    pub worker_batch_max: usize,
    /// Messages of one batch handled at once (timeouts, charges, checks).
    pub worker_concurrency_max: usize,
    /// Deliveries of one message before it goes to the dead-letter queue.
    pub delivery_attempts_max: u32,
    /// Wait before a failed message is delivered again; doubled per failed delivery.
    pub redelivery_delay_ms: u64,
    /// Longest wait between two deliveries of a failing message.
    pub redelivery_delay_ms_max: u64,
    /// How long an unpaid timeout waits again when a payment for the order is still in flight.
    pub unpaid_timeout_retry_ms: u64,
    /// Longest wait for one dependency call of a buyer's request (store, cache, bus, ids): a dependency
    /// that is down is answered 503 with Retry-After within this, not after a pool's own timeout.
    pub entry_call_timeout_ms: u64,
    /// Orders listed per page, at most.
    pub page_size_max: usize,
    /// How often a process reads the store's catalog version to learn whether the entries it keeps
    /// changed (0: keep none, read the store every time). A price change made through another process
    /// applies here within this.
    pub catalog_cache_ms: u64,
    /// How long a process answers "sold out" from memory after it saw a commodity's counter at zero
    /// (0: never from memory). Stock that comes back is sold again within this.
    pub sold_out_memory_ms: u64,
    /// With an order cache: the second delete of an order's copy comes this long after a change.
    pub order_cache_second_delete_ms: u64,
    /// Length of a lease on a role that runs once in a cluster (the outbox relay, the reconciler): with
    /// the store's leases, another process takes the role this long after its holder stopped; elected
    /// in a registry, the registry's lease decides, and the holder checks its fence every half of this.
    pub lease_ms: u64,
    /// What one buyer may hold ([`crate::caps`]): units of one commodity, unpaid orders.
    pub buyer_caps: BuyerCaps,
}

/// The buyer's caps (docs/API.md "Limits"), checked at the entry by one atomic call per cart
/// ([`crate::ports::Holdings`]); 0 turns a cap off. Off by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuyerCaps {
    /// Units of one commodity a buyer may hold in live orders (`pending`, `to_pay`, `paid`) placed within
    /// `window_ms`; cancelled, closed and rejected orders hold nothing.
    pub units_per_commodity: u32,
    /// How far back a paid order counts towards `units_per_commodity` (a day: "two per buyer per day").
    pub window_ms: u64,
    /// Orders a buyer may have unpaid (`pending` or `to_pay`) at once: stock hoarded in unpaid orders is
    /// stock nobody else can buy until their timeout.
    pub unpaid_orders: u32,
}

impl BuyerCaps {
    pub fn any(&self) -> bool {
        self.units_per_commodity > 0 || self.unpaid_orders > 0
    }
}

impl Default for BuyerCaps {
    fn default() -> Self {
        BuyerCaps { units_per_commodity: 0, window_ms: 24 * 3600 * 1000, unpaid_orders: 0 }
    }
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            cart: CartLimits::default(),
            reservation_check_delay_ms: 10_000,
            unpaid_timeout_ms: 15 * 60 * 1000,
            payment_call_timeout_ms: 2_000,
            reconcile_backoff_ms: 1_000,
            reconcile_backoff_ms_max: 60_000,
            worker_batch_max: 256,
            worker_concurrency_max: 64,
            delivery_attempts_max: 10,
            redelivery_delay_ms: 1_000,
            redelivery_delay_ms_max: 30_000,
            unpaid_timeout_retry_ms: 5_000,
            entry_call_timeout_ms: 1_000,
            page_size_max: 100,
            catalog_cache_ms: 1_000,
            sold_out_memory_ms: 250,
            order_cache_second_delete_ms: 1_000,
            lease_ms: 10_000,
            buyer_caps: BuyerCaps::default(),
        }
    }
}

/// The entry's overload protection (docs/API.md "Limits"): rate rules, each a token bucket with a mode, and
/// the concurrency limit that adapts to latency, shared by priority.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Carts admitted per second, sustained (the global rule): by the whole cluster when `shared`, else
    /// by each process.
    pub orders_per_second: u32,
    /// Carts admitted at once after a quiet spell.
    pub burst: u32,
    /// The global rule's mode: 0 refuses a cart over the rate at once (429); more makes it wait up to
    /// this long for its turn, and refuses it only if its turn is further away.
    pub queue_ms: u64,
    /// Carts per buyer.
    pub buyer: KeyRule,
    /// Cart lines per commodity (the hot parameter: one sale's buyers cannot crowd out the others).
    pub commodity: KeyRule,
    /// Cart lines per shop.
    pub shop: KeyRule,
    /// In a cluster, the global and per-commodity rules hold across every API (buckets in Redis, taken
    /// a few tokens at a time; each API's share locally while Redis does not answer). Off, or without
    /// a cluster: each process enforces them on its own.
    pub shared: bool,
    /// Buyer requests (`/api/orders…`, `/api/commodities…`) served at once: the adaptive limit's ceiling,
    /// or the fixed limit when adaptation is off (each kind's guaranteed part may go past it). More are
    /// shed with 503 `overloaded`.
    pub in_flight_max: usize,
    pub adaptive: AdaptiveConfig,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            orders_per_second: 20_000,
            burst: 2_000,
            queue_ms: 0,
            buyer: KeyRule::default(),
            commodity: KeyRule::default(),
            shop: KeyRule::default(),
            shared: true,
            in_flight_max: 512,
            adaptive: AdaptiveConfig::default(),
        }
    }
}

/// A token bucket per key (buyer, commodity or shop), each key its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyRule {
    /// Admitted per second per key, sustained; 0 turns the rule off.
    pub per_second: u32,
    /// Admitted at once per key after a quiet spell (at least 1 when the rule is on).
    pub burst: u32,
    /// Mode: 0 refuses at once; more waits up to this long for the key's turn.
    pub queue_ms: u64,
}

impl Default for KeyRule {
    fn default() -> Self {
        KeyRule { per_second: 0, burst: 1, queue_ms: 0 }
    }
}

/// The concurrency limit that follows latency (Gradient2), and how it is shared by priority.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveConfig {
    /// Off: the limit stays at `in_flight_max`.
    pub enabled: bool,
    /// The limit never goes below this (nor above `in_flight_max`, which wins when it is lower).
    pub min: usize,
    /// How much slower than the long-term latency a window may be before the limit shrinks (≥ 1).
    pub rtt_tolerance: f64,
    /// Weight of each new estimate in the limit (0 < smoothing ≤ 1).
    pub smoothing: f64,
    /// Windows averaged into the long-term latency.
    pub long_window: usize,
    /// A window lasts at least this long and holds at least `window_requests` requests; its mean
    /// latency is one sample of the algorithm (Netflix's `WindowedLimit`: a single request says nothing).
    pub window_ms: u64,
    pub window_requests: usize,
    pub priorities: Priorities,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            enabled: true,
            min: 32,
            rtt_tolerance: 2.0,
            smoothing: 0.2,
            long_window: 600,
            window_ms: 100,
            window_requests: 10,
            priorities: Priorities::default(),
        }
    }
}

/// Who goes first when the limit is near: each kind of buyer request is shed once the requests in flight
/// reach its part of the limit — queries first, then new orders; pay and cancel may use the whole of it.
/// So the slots above a lower kind's part are kept for the kinds above it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Priorities {
    /// `POST /api/orders` is admitted while fewer than this part of the limit are in flight.
    pub orders_below: f64,
    /// Every buyer `GET` is admitted while fewer than this part of the limit are in flight.
    pub queries_below: f64,
    /// However busy, each kind is admitted while it holds less than this part of the limit itself:
    /// no kind starves.
    pub guaranteed: f64,
}

impl Default for Priorities {
    fn default() -> Self {
        Priorities { orders_below: 0.85, queries_below: 0.7, guaranteed: 0.05 }
    }
}
