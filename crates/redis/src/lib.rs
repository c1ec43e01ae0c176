//! Redis adapters of orderly.
//!
//! # Layout
//! - [`stock_cache`]: [`RedisStockCache`], the `StockCache` port as the seed's Lua scripts (kept as
//!   `.lua` files under `lua/`, called by EVALSHA and reloaded on NOSCRIPT).
//! - [`order_cache`]: [`RedisOrderCache`], copies of orders for the buyers' queries.

pub mod order_cache;
pub mod stock_cache;

pub use order_cache::RedisOrderCache;
pub use stock_cache::{RedisCacheConfig, RedisStockCache};

/// Maps a Redis failure to the port's: connection trouble is retryable, anything else is not.
pub(crate) fn port_error(error: redis::RedisError) -> orderly_app::PortError {
    if error.is_io_error() || error.is_connection_dropped() || error.is_timeout() || error.is_connection_refusal() {
        orderly_app::PortError::unavailable("redis", error)
    } else {
        orderly_app::PortError::corrupt("redis", error)
    }
}
