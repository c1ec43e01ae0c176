//! The catalog as the entry reads it. Every cart line's price is checked against the catalog, so it is
//! read on every request, and prices change rarely: a process keeps the entries it read for as long as
//! the store's catalog version ([`crate::ports::Store::catalog_version`], changed by every catalog write)
//! stays the same, and reads that version again once `catalog_cache_ms` has passed since it last did —
//! so a change made through another process reaches this one within that, for one small read a period
//! instead of a read per entry and period. A commodity not found is not kept, so a new one sells at once.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use orderly_domain::{CatalogEntry, CommodityId};

/// Entries kept at most; past it the cache starts over (a catalog read is cheap, just not free).
const ENTRIES_MAX: usize = 100_000;

#[derive(Debug, Default)]
pub struct CatalogCache {
    kept: Mutex<Kept>,
    /// One version read at a time: the callers that find it due wait for that one.
    checking: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Kept {
    entries: HashMap<CommodityId, CatalogEntry>,
    /// The store's catalog version the entries belong to, and when it was read (`Clock::steady_ms`);
    /// `None`: to be read before any entry is used.
    version: Option<(u64, u64)>,
    /// Counts the times the entries were dropped: an entry read from the store before a drop may be
    /// older than the version that caused it, and is not kept.
    epoch: u64,
    /// Counts the version reads that failed: a caller that waited for another's read and finds the count
    /// moved answers as that read did instead of trying again (with the store down, the callers waiting
    /// for the turn would otherwise each wait out a read of their own, one after the other).
    failures: u64,
}

impl Kept {
    fn drop_entries(&mut self) {
        self.entries.clear();
        self.epoch += 1;
    }
}

impl CatalogCache {
    fn kept(&self) -> MutexGuard<'_, Kept> {
        // The map holds plain values: a holder that panicked left nothing half-written.
        self.kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The turn to read the version: callers that find it due wait here, and the first one reads it.
    pub async fn version_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.checking.lock().await
    }

    /// When the version was last read (`Clock::steady_ms`), if it was.
    pub fn version_read_ms(&self) -> Option<u64> {
        self.kept().version.map(|(_, read_ms)| read_ms)
    }

    /// The store's catalog version as read by a read that began at `read_ms`: the entries kept are
    /// dropped unless it is the version they belong to — after [`CatalogCache::forget_all`] too, since
    /// an entry read then may be older than this version.
    pub fn version_read(&self, version: u64, read_ms: u64) {
        let mut kept = self.kept();
        if kept.version.map(|(known, _)| known) != Some(version) {
            kept.drop_entries();
        }
        kept.version = Some((version, read_ms));
    }

    /// How many version reads failed so far.
    pub fn version_failures(&self) -> u64 {
        self.kept().failures
    }

    pub fn version_failed(&self) {
        self.kept().failures += 1;
    }

    /// The entry kept for `id`, if any. Only while the version is fresh: the caller reads it first.
    pub fn get(&self, id: CommodityId) -> Option<CatalogEntry> {
        self.kept().entries.get(&id).copied()
    }

    /// The epoch to give [`CatalogCache::put`] for a store read that begins now.
    pub fn epoch(&self) -> u64 {
        self.kept().epoch
    }

    /// Keeps an entry read from the store by a read that began at `epoch`, unless the entries were
    /// dropped since.
    pub fn put(&self, entry: CatalogEntry, epoch: u64) {
        let mut kept = self.kept();
        if kept.epoch != epoch {
            return;
        }
        if kept.entries.len() >= ENTRIES_MAX {
            kept.entries.clear();
        }
        kept.entries.insert(entry.commodity_id, entry);
    }

    /// After this process changed the catalog: every entry is read again, and the version with them.
    pub fn forget_all(&self) {
        let mut kept = self.kept();
        kept.drop_entries();
        kept.version = None;
    }
}

#[cfg(test)]
mod tests {
    use orderly_domain::{Money, ShopId};

    use super::*;

    fn entry(cents: i64) -> CatalogEntry {
        CatalogEntry { commodity_id: CommodityId(1), shop_id: ShopId(9), unit_price: Money::from_cents(cents) }
    }

    #[test]
    fn entries_are_kept_while_the_version_stays_and_dropped_when_it_changes() {
        let cache = CatalogCache::default();
        assert_eq!(cache.version_read_ms(), None, "nothing read yet");
        cache.version_read(3, 1_000);
        cache.put(entry(5), cache.epoch());
        cache.version_read(3, 2_000);
        assert_eq!((cache.get(CommodityId(1)), cache.version_read_ms()), (Some(entry(5)), Some(2_000)));
        cache.version_read(4, 3_000);
        assert_eq!(cache.get(CommodityId(1)), None, "another version: read again");
    }

    #[test]
    fn an_entry_read_before_the_entries_were_dropped_is_not_kept() {
        let cache = CatalogCache::default();
        cache.version_read(3, 1_000);
        let before = cache.epoch();
        cache.version_read(4, 1_500); // while the read was on its way: it may hold the old price
        cache.put(entry(5), before);
        assert_eq!(cache.get(CommodityId(1)), None);
        let before = cache.epoch();
        cache.forget_all();
        cache.put(entry(5), before);
        assert_eq!((cache.get(CommodityId(1)), cache.version_read_ms()), (None, None));
    }

    #[test]
    fn a_version_read_after_forget_all_drops_what_was_read_in_between() {
        let cache = CatalogCache::default();
        cache.version_read(3, 1_000);
        cache.forget_all();
        let between = cache.epoch();
        // Read between the forgetting and the next version read: it may be older than that version.
        cache.version_read(5, 1_500);
        cache.put(entry(5), between);
        assert_eq!(cache.get(CommodityId(1)), None);
    }
}
