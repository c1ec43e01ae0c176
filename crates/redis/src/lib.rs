//! Redis adapters of orderly.
//!
//! # Layout
//! - [`stock_cache`]: [`RedisStockCache`], the `StockCache` port as the seed's Lua scripts (kept as
//!   `.lua` files under `lua/`, called by EVALSHA and reloaded on NOSCRIPT), each guarded against a
//!   shard that lost writes in a failover.
//! - [`connection`]: [`RedisConnection`], a single server or a Redis Cluster ([`RedisTarget`]).
//! - [`error`]: [`CacheError`], what can fail here, mapped to the ports' error.
//! - [`order_cache`]: [`RedisOrderCache`], copies of orders for the buyers' queries.
//! - [`shared_rates`]: [`RedisSharedRates`], token buckets shared by a cluster's APIs (the entry's rate rules).
//! - [`holdings`]: [`RedisHoldings`], the gate of the buyer's caps, one key per buyer.

pub mod connection;
pub mod error;
pub mod holdings;
pub mod order_cache;
pub mod shared_rates;
pub mod stock_cache;

pub use connection::{RedisConnection, RedisTarget};
pub use error::CacheError;
pub use holdings::RedisHoldings;
pub use order_cache::RedisOrderCache;
pub use shared_rates::RedisSharedRates;
pub use stock_cache::{RedisCacheConfig, RedisStockCache};

/// Maps a Redis failure to the port's: connection trouble is retryable, anything else is not.
pub(crate) fn port_error(error: redis::RedisError) -> orderly_app::PortError {
    CacheError::from(error).into()
}

/// An answer the scripts' contract does not allow.
pub(crate) fn bad_answer(detail: impl std::fmt::Display) -> orderly_app::PortError {
    CacheError::BadAnswer(detail.to_string()).into()
}
