//! Contract suites: what every adapter of a port must do, written once and run against each adapter
//! (TiKV's engine tests, in spirit). An adapter crate instantiates a suite in one line of its tests:
//!
//! ```ignore
//! orderly_contract::stock_cache_contract!(|| async { Arc::new(MyCache::new()) as Arc<dyn StockCache> });
//! ```
//!
//! The factory is called once per case and must return a fresh, empty adapter.
//!
//! # Layout
//! - [`stock_cache`]: the reservation token lifecycle, all-or-nothing reserve, empty rollback, hanging
//!   reserve, versioned restock, init-if-absent, and a race for the last units.

pub mod stock_cache;

pub use orderly_app::StockCache;

/// One `#[tokio::test]` per case of [`stock_cache`], each on a fresh adapter from `$factory`.
#[macro_export]
macro_rules! stock_cache_contract {
    ($factory:expr) => {
        $crate::stock_cache_contract!(@cases $factory;
            init_sets_only_absent_levels,
            reserve_is_all_or_nothing,
            reserve_of_an_unloaded_commodity_changes_nothing,
            reserve_is_idempotent_per_token,
            token_moves_reserved_claimed_confirmed,
            release_returns_stock_exactly_once,
            release_of_an_unknown_token_is_an_empty_rollback_and_blocks_a_late_reserve,
            release_if_reserved_leaves_a_claimed_token_to_its_worker,
            a_claimed_reservation_starts_claimed,
            restock_counts_once_per_key_and_skips_loaded_versions,
            restock_of_an_unloaded_commodity_waits_for_the_load,
            racing_buyers_never_get_more_than_the_stock,
            shops_are_kept_apart,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let cache: ::std::sync::Arc<dyn $crate::StockCache> = ($factory)().await;
                $crate::stock_cache::$case(cache).await;
            }
        )*
    };
}
