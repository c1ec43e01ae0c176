//! The entry's limits. A static rate limit: a token bucket (GCRA, `governor`) shared by the whole
//! process; a refused request gets 429 with `Retry-After` and costs nothing else (early fail). And load
//! shedding: at most `in_flight_max` buyer requests are served at once; one more is answered 503 at
//! once instead of queueing, so under overload the accepted requests keep a bounded latency.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Order requests admitted per second, sustained.
    pub orders_per_second: u32,
    /// Order requests admitted at once after a quiet spell.
    pub burst: u32,
    /// Buyer requests (`/api/orders…`, `/api/commodities…`) served at once; more are shed with 503.
    pub in_flight_max: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig { orders_per_second: 20_000, burst: 2_000, in_flight_max: 512 }
    }
}

#[derive(Debug)]
pub struct EntryLimiter {
    limiter: RateLimiter<governor::state::NotKeyed, governor::state::InMemoryState, DefaultClock>,
    /// The token bucket's own monotonic clock (governor's), for `Retry-After`; not the Clock port.
    bucket_clock: DefaultClock,
}

impl EntryLimiter {
    pub fn new(config: &RateLimitConfig) -> EntryLimiter {
        let rate = NonZeroU32::new(config.orders_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let clock = DefaultClock::default();
        EntryLimiter {
            limiter: RateLimiter::direct_with_clock(Quota::per_second(rate).allow_burst(burst), clock.clone()),
            bucket_clock: clock,
        }
    }

    /// `Err(wait)` when the bucket is empty.
    pub fn admit(&self) -> Result<(), Duration> {
        self.limiter.check().map_err(|not_until| not_until.wait_time_from(self.bucket_clock.now()))
    }
}
