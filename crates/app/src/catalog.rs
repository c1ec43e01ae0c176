//! The catalog as the entry reads it. Every cart line's price is checked against the catalog, so it is
//! read on every request, and prices change rarely: entries are kept `catalog_cache_ms` per process (a
//! change made through another process reaches this one within that). A commodity not found is not
//! kept, so a new one sells at once.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use orderly_domain::{CatalogEntry, CommodityId};

/// Entries kept at most; past it the cache starts over (a catalog read is cheap, just not free).
const ENTRIES_MAX: usize = 100_000;

#[derive(Debug, Default)]
pub struct CatalogCache {
    /// Entry, and when it was read.
    entries: Mutex<HashMap<CommodityId, (CatalogEntry, u64)>>,
}

impl CatalogCache {
    fn entries(&self) -> MutexGuard<'_, HashMap<CommodityId, (CatalogEntry, u64)>> {
        // The map holds plain values: a holder that panicked left nothing half-written.
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The entry if it was read less than `ttl_ms` before `now_ms`.
    pub fn get(&self, id: CommodityId, now_ms: u64, ttl_ms: u64) -> Option<CatalogEntry> {
        let entries = self.entries();
        let (entry, read_ms) = entries.get(&id)?;
        (now_ms.saturating_sub(*read_ms) < ttl_ms).then_some(*entry)
    }

    pub fn put(&self, entry: CatalogEntry, now_ms: u64) {
        let mut entries = self.entries();
        if entries.len() >= ENTRIES_MAX {
            entries.clear();
        }
        entries.insert(entry.commodity_id, (entry, now_ms));
    }

    /// After this process changed the catalog.
    pub fn forget_all(&self) {
        self.entries().clear();
    }
}

#[cfg(test)]
mod tests {
    use orderly_domain::{Money, ShopId};

    use super::*;

    #[test]
    fn entries_are_kept_for_the_ttl_then_read_again() {
        let cache = CatalogCache::default();
        let entry = CatalogEntry { commodity_id: CommodityId(1), shop_id: ShopId(9), unit_price: Money::from_cents(5) };
        assert_eq!(cache.get(CommodityId(1), 1_000, 500), None);
        cache.put(entry, 1_000);
        assert_eq!(cache.get(CommodityId(1), 1_499, 500), Some(entry));
        assert_eq!(cache.get(CommodityId(1), 1_500, 500), None, "expired");
        assert_eq!(cache.get(CommodityId(1), 1_000, 0), None, "a TTL of 0 keeps nothing");
        cache.forget_all();
        assert_eq!(cache.get(CommodityId(1), 1_001, 500), None);
    }
}
