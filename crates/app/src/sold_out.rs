//! What the entry knows is sold out. In a flash sale most carts ask for a commodity that is gone; each
//! would cost a reservation check on the bus and a reserve in the cache only to be told so. A process
//! that saw a commodity's counter at zero answers "sold out" from memory for `sold_out_memory_ms`,
//! touching nothing remote; after that one look at the counter (a cache read, nothing on the bus)
//! either keeps it sold out for another while or, if stock came back, forgets it and sells again. So
//! stock returned by a cancellation or a restock is sold within `sold_out_memory_ms` of its return.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use orderly_domain::CommodityId;

/// Commodities remembered at most; past it the memory starts over.
const ENTRIES_MAX: usize = 100_000;

#[derive(Debug, Default)]
pub struct SoldOutMemory {
    /// Commodity, and when its counter was last seen at zero (wall clock).
    seen: Mutex<HashMap<CommodityId, u64>>,
}

/// What the memory says of a commodity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Seen at zero within the window: sold out, ask nobody.
    SoldOut,
    /// Seen at zero before the window: look at the counter again.
    Stale,
    Unknown,
}

impl SoldOutMemory {
    fn seen(&self) -> MutexGuard<'_, HashMap<CommodityId, u64>> {
        // Plain values: a holder that panicked left nothing half-written.
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A wall clock stepped back before the sighting makes it stale, never older than it is.
    pub fn known(&self, id: CommodityId, now_ms: u64, window_ms: u64) -> Known {
        match self.seen().get(&id) {
            Some(&seen_ms) if now_ms >= seen_ms && now_ms - seen_ms < window_ms => Known::SoldOut,
            Some(_) => Known::Stale,
            None => Known::Unknown,
        }
    }

    pub fn remember(&self, id: CommodityId, now_ms: u64) {
        let mut seen = self.seen();
        if seen.len() >= ENTRIES_MAX {
            seen.clear();
        }
        seen.insert(id, now_ms);
    }

    pub fn forget(&self, id: CommodityId) {
        self.seen().remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sighting_holds_for_the_window_then_goes_stale_until_forgotten() {
        let memory = SoldOutMemory::default();
        let id = CommodityId(7);
        assert_eq!(memory.known(id, 1_000, 250), Known::Unknown);
        memory.remember(id, 1_000);
        assert_eq!(memory.known(id, 1_249, 250), Known::SoldOut);
        assert_eq!(memory.known(id, 1_250, 250), Known::Stale);
        assert_eq!(memory.known(id, 999, 250), Known::Stale, "the wall clock stepped back");
        assert_eq!(memory.known(id, 1_000, 0), Known::Stale, "a window of 0 answers nothing from memory");
        memory.forget(id);
        assert_eq!(memory.known(id, 1_100, 250), Known::Unknown);
    }
}
