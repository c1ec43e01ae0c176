//! The `StockCache` contract suite against the in-process cache.

use std::sync::Arc;

use orderly_app::StockCache;
use orderly_app::time::ManualClock;
use orderly_local::LocalStockCache;

orderly_contract::stock_cache_contract!(|| async {
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    Arc::new(LocalStockCache::new(clock, 60 * 60 * 1000, 60 * 1000)) as Arc<dyn StockCache>
});
