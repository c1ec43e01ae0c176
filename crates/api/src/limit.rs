//! The entry's limits. A rate limit (changed at run time by replacing the bucket whole): a token bucket (GCRA, `governor`) shared by the whole
//! process; a refused request gets 429 with `Retry-After` and costs nothing else (early fail). And load
//! shedding: at most `in_flight_max` buyer requests are served at once; one more is answered 503 at
//! once instead of queueing, so under overload the accepted requests keep a bounded latency.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
pub use orderly_app::config::RateLimitConfig;

#[derive(Debug)]
pub struct EntryLimiter {
    /// What it was built from: `orders_per_second` and `burst`.
    rate: (u32, u32),
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
            rate: (config.orders_per_second, config.burst),
            limiter: RateLimiter::direct_with_clock(Quota::per_second(rate).allow_burst(burst), clock.clone()),
            bucket_clock: clock,
        }
    }

    /// Whether this limiter enforces `config`'s rate and burst.
    pub fn enforces(&self, config: &RateLimitConfig) -> bool {
        self.rate == (config.orders_per_second, config.burst)
    }

    /// The rate (orders per second) and burst it enforces.
    pub fn rate(&self) -> (u32, u32) {
        self.rate
    }

    /// `Err(wait)` when the bucket is empty.
    pub fn admit(&self) -> Result<(), Duration> {
        self.limiter.check().map_err(|not_until| not_until.wait_time_from(self.bucket_clock.now()))
    }
}
