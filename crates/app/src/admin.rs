//! The admin's use-cases: the catalog and its stock, the work still to do. (The audit is in
//! [`crate::audit`].) The API calls these, never the ports behind them.

use std::collections::HashSet;

use orderly_domain::{CatalogEntry, CommodityId, Money, ShopId};

use crate::model::{Restock, StockLevel, Topic};
use crate::orderly::Orderly;
use crate::ports::{BusDepth, PortError};

/// Outbox events counted, at most (an operator only needs "none" or "some").
pub const OUTBOX_COUNT_MAX: usize = 1_000;

/// Why the admin's catalog was refused (nothing of it written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogRejection {
    #[error("commodity id 0 names no commodity")]
    ZeroId,
    #[error("commodity {commodity_id}: the price must be above zero")]
    ZeroPrice { commodity_id: CommodityId },
    #[error("commodity {commodity_id} appears more than once")]
    Duplicate { commodity_id: CommodityId },
    #[error("commodity {commodity_id} is sold by shop {shop_id}; it cannot move to shop {to}")]
    ShopChange { commodity_id: CommodityId, shop_id: ShopId, to: ShopId },
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Refused(#[from] CatalogRejection),
    #[error(transparent)]
    Unavailable(#[from] PortError),
}

/// The checks of [`CatalogRejection`] that need no store: an id, a price, each commodity once.
fn check_entries(entries: &[CatalogEntry]) -> Result<(), CatalogRejection> {
    let mut seen = HashSet::with_capacity(entries.len());
    for entry in entries {
        let commodity_id = entry.commodity_id;
        if commodity_id.0 == 0 {
            return Err(CatalogRejection::ZeroId);
        }
        if entry.unit_price == Money::ZERO {
            return Err(CatalogRejection::ZeroPrice { commodity_id });
        }
        if !seen.insert(commodity_id) {
            return Err(CatalogRejection::Duplicate { commodity_id });
        }
    }
    Ok(())
}

/// A commodity's stock, for the operator's view ([`Orderly::hot_stock`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HotStock {
    pub commodity_id: CommodityId,
    /// Everything ever added.
    pub initial: u64,
    /// Deducted in the store by live orders (to pay or paid).
    pub deducted: u64,
    /// What the cache can still sell now (accepted orders not yet created are already out of it);
    /// `None` when the cache has not loaded the commodity.
    pub selling: Option<u64>,
}

/// Work still to do: zero everywhere (dead letters aside) means quiet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkToDo {
    /// Messages waiting per topic, delayed ones included; `reservation_check` counts the checks the stock
    /// cache keeps too.
    pub queued: Vec<(Topic, usize)>,
    pub dead_letters: usize,
    /// Outbox events not relayed yet, up to [`OUTBOX_COUNT_MAX`].
    pub outbox: usize,
    /// Payments without a definite answer.
    pub payments_pending: usize,
}

impl WorkToDo {
    /// Nothing waiting, to relay or to settle (dead letters wait for an operator, not for the system).
    pub fn is_quiet(&self) -> bool {
        self.queued.iter().all(|(_, waiting)| *waiting == 0) && self.outbox == 0 && self.payments_pending == 0
    }
}

impl Orderly {
    /// Price and stock of a commodity: the cache's view (what can still be sold), loaded if needed.
    pub async fn commodity(&self, id: CommodityId) -> Result<Option<(CatalogEntry, u64)>, PortError> {
        let Some(entry) = self.catalog_entry(id).await? else { return Ok(None) };
        let mut available = self.ports.cache.available(&[id]).await?;
        if available.first().copied().flatten().is_none() {
            self.load_into_cache(&[id]).await?;
            available = self.ports.cache.available(&[id]).await?;
        }
        Ok(Some((entry, available.first().copied().flatten().unwrap_or(0))))
    }

    /// Admin: catalog entries and stock to add. Stock reaches the cache as a versioned restock, so it
    /// is counted once whether or not the cache had loaded the commodity. All entries or none: each is
    /// checked ([`CatalogRejection`]) before anything is written.
    pub async fn load_catalog(
        &self,
        entries: &[CatalogEntry],
        stock: &[(CommodityId, u32)],
    ) -> Result<(), CatalogError> {
        check_entries(entries)?;
        // A commodity's counters live with its shop (a cache sharded by shop) and its orders name it:
        // it stays with the shop that first sold it.
        for entry in entries {
            if let Some(known) = self.ports.store.commodity(entry.commodity_id).await?
                && known.shop_id != entry.shop_id
            {
                return Err(CatalogRejection::ShopChange {
                    commodity_id: entry.commodity_id,
                    shop_id: known.shop_id,
                    to: entry.shop_id,
                }
                .into());
            }
        }
        self.write_catalog(entries, stock).await
    }

    /// Entries checked, and any known commodity's shop unchanged: written, and their stock added.
    async fn write_catalog(&self, entries: &[CatalogEntry], stock: &[(CommodityId, u32)]) -> Result<(), CatalogError> {
        // Nothing to write (a catalog file loaded again at a start): the catalog's version stays, and with
        // it every process's copies.
        if !entries.is_empty() {
            self.ports.store.put_commodities(entries).await?;
            self.catalog.forget_all();
        }
        for &(id, quantity) in stock {
            self.stock_added(id, quantity).await?;
        }
        Ok(())
    }

    /// Admin: the commodities the store does not know yet, each with the stock it starts with; known ones
    /// are skipped with their stock, so a catalog file loaded at every start adds nothing the second
    /// time. How many were new.
    pub async fn load_new_commodities(&self, commodities: &[(CatalogEntry, u32)]) -> Result<usize, CatalogError> {
        let mut entries = Vec::new();
        let mut stock = Vec::new();
        for &(entry, quantity) in commodities {
            if self.ports.store.commodity(entry.commodity_id).await?.is_some() {
                continue;
            }
            entries.push(entry);
            if quantity > 0 {
                stock.push((entry.commodity_id, quantity));
            }
        }
        // Every one was just found unknown: no shop to compare with.
        check_entries(&entries)?;
        self.write_catalog(&entries, &stock).await?;
        Ok(entries.len())
    }

    /// Admin: stock added to a commodity of the catalog. `None`: no such commodity (nothing added);
    /// else what is available in the store afterwards.
    pub async fn add_stock(&self, id: CommodityId, add: u32) -> Result<Option<u64>, PortError> {
        if self.ports.store.commodity(id).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(self.stock_added(id, add).await?.available))
    }

    /// Adds stock in the store, then tells the cache by a versioned restock; the store's level after.
    async fn stock_added(&self, id: CommodityId, quantity: u32) -> Result<StockLevel, PortError> {
        let level = self.ports.store.add_stock(id, u64::from(quantity)).await?;
        let restock = Restock {
            key: format!("add-stock:{id}:{}", level.version),
            shop_id: level.shop_id,
            lines: vec![(id, quantity, level.version)],
        };
        self.ports.cache.restock(&restock).await?;
        Ok(level)
    }

    /// The bus's queues and dead letters.
    pub async fn bus_depth(&self) -> Result<BusDepth, PortError> {
        self.ports.bus.depth().await
    }

    pub async fn work_to_do(&self) -> Result<WorkToDo, PortError> {
        let mut depth = self.ports.bus.depth().await?;
        // The reservation checks the cache keeps wait like those on the bus: counted with them.
        if self.ports.cache.keeps_checks() {
            let armed = self.ports.cache.checks_armed(&self.shops_with_stock().await?).await?;
            match depth.queued.iter_mut().find(|(topic, _)| *topic == Topic::ReservationCheck) {
                Some((_, waiting)) => *waiting += armed,
                None => depth.queued.push((Topic::ReservationCheck, armed)),
            }
        }
        Ok(WorkToDo {
            queued: depth.queued,
            dead_letters: depth.dead_letters,
            outbox: self.ports.store.outbox(OUTBOX_COUNT_MAX).await?.len(),
            payments_pending: self.ports.store.payments_pending().await?,
        })
    }

    /// The `n` commodities with the most units deducted by live orders in the store (`initial -
    /// available`), most first, with what the cache can still sell of each now (`None`: not loaded).
    pub async fn hot_stock(&self, n: usize) -> Result<Vec<HotStock>, PortError> {
        let mut levels = self.ports.store.all_stock().await?;
        levels.sort_by_key(|(id, level)| (std::cmp::Reverse(level.initial.saturating_sub(level.available)), *id));
        levels.truncate(n);
        let ids: Vec<CommodityId> = levels.iter().map(|(id, _)| *id).collect();
        let selling = self.ports.cache.available(&ids).await?;
        Ok(levels
            .into_iter()
            .zip(selling)
            .map(|((commodity_id, level), selling)| HotStock {
                commodity_id,
                initial: level.initial,
                deducted: level.initial.saturating_sub(level.available),
                selling,
            })
            .collect())
    }

    /// The wall clock, for the API's token expiry.
    pub fn now_ms(&self) -> u64 {
        self.ports.clock.now_ms()
    }
}
