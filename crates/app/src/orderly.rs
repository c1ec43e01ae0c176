//! The wiring of one profile: [`Ports`] (what the profile's adapters provide) and [`Orderly`], the
//! ports with this process's own state (catalog copies, leases) and the flow's settings. Its fields are
//! private: callers use the use-cases — the entry ([`crate::entry`]), the buyer's actions
//! ([`crate::buyer`]), the admin's ([`crate::admin`], [`crate::audit`]) and the workers
//! ([`crate::workers`]). What several of them share lives here: bounded dependency calls, the reserve
//! that loads the cache, the order cache's copies.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use orderly_domain::{CatalogEntry, CommodityId, OrderNo, ShopId};

use crate::catalog::CatalogCache;
use crate::config::FlowConfig;
use crate::model::{Order, Token};
use crate::ports::{Bus, Clock, Held, Holdings, IdGen, OrderCache, Payments, PortError, Reserve, StockCache, Store};
use crate::registry::{Lead, Registry};
use crate::sold_out::SoldOutMemory;

/// The ports of one profile, as its adapters were opened.
#[derive(Debug, Clone)]
pub struct Ports {
    pub cache: Arc<dyn StockCache>,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub payments: Arc<dyn Payments>,
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn IdGen>,
    /// Copies of orders for the buyers' queries; `None`: every query reads the store.
    pub orders: Option<Arc<dyn OrderCache>>,
    /// The gate of the buyer's caps.
    pub holdings: Arc<dyn Holdings>,
}

/// A profile's ports wired to the flow. Cheap to clone: every clone shares the same state.
#[derive(Debug, Clone)]
pub struct Orderly {
    pub(crate) ports: Ports,
    /// The flow's settings, replaced whole when they change at run time ([`Orderly::set_config`]).
    pub(crate) config: Arc<arc_swap::ArcSwap<FlowConfig>>,
    /// Catalog entries this process read, kept while the store's catalog version stays (`crate::catalog`).
    pub(crate) catalog: Arc<CatalogCache>,
    /// Commodities this process saw sold out lately (`config.sold_out_memory_ms`).
    pub(crate) sold_out: Arc<SoldOutMemory>,
    /// The leases this process holds on roles that run once in a cluster.
    pub(crate) leases: Arc<Leases>,
    /// One counter load at a time in this process: after the cache is lost, every request finds its
    /// counters missing at once, and one load (which reads the pending orders) serves them all.
    pub(crate) loading: Arc<tokio::sync::Mutex<()>>,
    /// When this process looks next for the reservation checks the cache keeps, and the shops it looks in.
    pub(crate) kept_checks: Arc<Mutex<KeptChecks>>,
    /// The order-cache copies changed in the last [`SECOND_DELETE_WINDOW_MS`], deleted again together.
    pub(crate) second_deletes: SecondDeletes,
    /// Where the roles that run once in the system are elected ([`Orderly::elected_through`]); none:
    /// by leases in the store.
    pub(crate) registry: Option<Arc<dyn Registry>>,
}

/// Until when this process holds each lease on a role that runs once in a cluster (it holds them as
/// its id generator's instance, unique among the processes). Taken and renewed by
/// [`crate::workers`].
#[derive(Debug, Default)]
pub(crate) struct Leases {
    held_until: Mutex<HashMap<&'static str, u64>>,
    /// What this process last led each role with (elected in a registry).
    fences: Mutex<HashMap<&'static str, Lead>>,
}

impl Leases {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, u64>> {
        // Plain values: a holder that panicked left nothing half-written.
        self.held_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Until when lease `name` is held (0: not held).
    pub(crate) fn held_until(&self, name: &'static str) -> u64 {
        self.held().get(name).copied().unwrap_or(0)
    }

    pub(crate) fn set(&self, name: &'static str, until_ms: u64) {
        self.held().insert(name, until_ms);
    }

    /// The fence this process last led `name` with, if it led it.
    pub(crate) fn fence(&self, name: &'static str) -> Option<Lead> {
        self.fences.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).copied()
    }

    pub(crate) fn set_fence(&self, name: &'static str, fence: Option<Lead>) {
        let mut fences = self.fences.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match fence {
            Some(fence) => fences.insert(name, fence),
            None => fences.remove(name),
        };
    }
}

impl Orderly {
    /// A profile's ports wired together, with this process's own state empty (catalog copies, leases).
    pub fn new(ports: Ports, config: FlowConfig) -> Orderly {
        Orderly {
            ports,
            config: Arc::new(arc_swap::ArcSwap::from_pointee(config)),
            catalog: Arc::default(),
            sold_out: Arc::default(),
            leases: Arc::default(),
            loading: Arc::default(),
            kept_checks: Arc::default(),
            second_deletes: Arc::default(),
            registry: None,
        }
    }

    /// The roles that run once in the system (the outbox relay, the reconciler) are led through
    /// `registry` (this process must be registered in it), each step checked against the store's fence.
    pub fn elected_through(mut self, registry: Arc<dyn Registry>) -> Orderly {
        self.registry = Some(registry);
        self
    }

    /// The flow's settings now (each use reads them once: a change applies from the next use).
    pub fn config(&self) -> Arc<FlowConfig> {
        self.config.load_full()
    }

    /// Replaces the flow's settings in this process (and its clones), without a restart.
    pub fn set_config(&self, config: FlowConfig) {
        self.config.store(Arc::new(config));
    }

    /// A catalog entry, from this process's copies or the store (`crate::catalog`).
    pub(crate) async fn catalog_entry(&self, id: CommodityId) -> Result<Option<CatalogEntry>, PortError> {
        let period_ms = self.config().catalog_cache_ms;
        if period_ms == 0 {
            return self.bounded("store", self.ports.store.commodity(id)).await;
        }
        let arrived_ms = self.ports.clock.steady_ms();
        if !self.catalog_version_fresh(arrived_ms, period_ms) {
            self.bounded("store", self.read_catalog_version(arrived_ms, period_ms)).await?;
        }
        if let Some(entry) = self.catalog.get(id) {
            return Ok(Some(entry));
        }
        let epoch = self.catalog.epoch();
        let entry = self.bounded("store", self.ports.store.commodity(id)).await?;
        if let Some(entry) = entry {
            self.catalog.put(entry, epoch);
        }
        Ok(entry)
    }

    /// Reads the store's catalog version for a caller that arrived at `arrived_ms`, one read at a time:
    /// a caller that waited for the turn takes the read it waited for if that began within the period
    /// before the caller arrived (a change committed before then is in it), and its failure if it failed,
    /// so none queues behind more than one read of another's.
    async fn read_catalog_version(&self, arrived_ms: u64, period_ms: u64) -> Result<(), PortError> {
        let failures = self.catalog.version_failures();
        let _turn = self.catalog.version_turn().await;
        if self.catalog_version_fresh(arrived_ms, period_ms) {
            return Ok(());
        }
        if self.catalog.version_failures() != failures {
            return Err(PortError::unavailable("store", "the catalog version could not be read"));
        }
        let read_ms = self.ports.clock.steady_ms();
        match self.ports.store.catalog_version().await {
            Ok(version) => {
                self.catalog.version_read(version, read_ms);
                Ok(())
            }
            Err(error) => {
                self.catalog.version_failed();
                Err(error)
            }
        }
    }

    /// The catalog version was read by a read that began less than `period_ms` before `at_ms` (steady
    /// time: a step of the wall clock neither keeps it longer nor drops it early).
    fn catalog_version_fresh(&self, at_ms: u64, period_ms: u64) -> bool {
        self.catalog.version_read_ms().is_some_and(|read_ms| at_ms.saturating_sub(read_ms) < period_ms)
    }

    /// One dependency call of a buyer's request, bounded by `entry_call_timeout_ms`: a dependency that is
    /// down answers 503 quickly. A call cut off may still have happened; every call bounded here is one
    /// the request can leave behind safely (idempotent, or undone by the abort or the reservation check).
    pub(crate) async fn bounded<T>(
        &self,
        what: &'static str,
        call: impl std::future::Future<Output = Result<T, PortError>>,
    ) -> Result<T, PortError> {
        let limit_ms = self.config().entry_call_timeout_ms;
        match crate::time::within(&*self.ports.clock, limit_ms, call).await {
            Some(result) => result,
            None => Err(PortError::unavailable(what, format!("no answer within {limit_ms} ms"))),
        }
    }

    /// Reserves, loading commodities the cache does not hold yet from the store (the seed's init).
    /// `NotLoaded` only for a commodity the store has no stock for; a cache emptied again between the
    /// load and the reserve (a flush racing it) is loaded again, and after [`RELOAD_ATTEMPTS`] it is
    /// "unavailable" — never taken for "no stock".
    ///
    /// `Entry(check)` reserves an entry token (RESERVED), arming its reservation check at `check` where
    /// the cache keeps the checks; `Worker` a worker's own token (CLAIMED).
    pub(crate) async fn reserve(
        &self,
        token: Token,
        lines: &[(CommodityId, u32)],
        by: Reserving,
    ) -> Result<Reserve, PortError> {
        for _ in 0..RELOAD_ATTEMPTS {
            let reserved = match by {
                Reserving::Entry { check_at_ms: Some(check_at_ms) } => {
                    self.ports.cache.reserve_checked(token, lines, check_at_ms).await?
                }
                Reserving::Entry { check_at_ms: None } => self.ports.cache.reserve(token, lines, false).await?,
                Reserving::Worker => self.ports.cache.reserve(token, lines, true).await?,
            };
            match reserved {
                Reserve::NotLoaded(ids) => {
                    if !self.load_into_cache(&ids).await? {
                        return Ok(Reserve::NotLoaded(ids));
                    }
                }
                other => return Ok(other),
            }
        }
        Err(PortError::unavailable("stock cache", "the counters did not stay loaded (is the cache being flushed?)"))
    }

    /// Loads the counters into the cache — every one that is absent, since a cache is lost whole (a
    /// flush, a restart) and one load then serves every request that finds its counters missing — with
    /// the reservations of the accepted orders not created yet (their `pending` views): a cache that lost
    /// those would otherwise sell their units a second time, and the accepted orders would be rejected.
    /// One load at a time in this process; `false`: the store has no stock for some of `ids`.
    ///
    /// Read in this order: the pending orders, the levels, the pending orders again. An order pending at
    /// the second read was not created before the levels were read, so its units are in them and are
    /// held back once; one created in between is not held, and its creation's deductions reach the
    /// counter by its confirmation.
    pub(crate) async fn load_into_cache(&self, ids: &[CommodityId]) -> Result<bool, PortError> {
        let _one_at_a_time = self.loading.lock().await;
        // Loaded by the load this one waited for?
        if !self.ports.cache.available(ids).await?.contains(&None) {
            return Ok(true);
        }
        // A commodity without a stock ledger is never loaded: answered at once, without the full load.
        if self.ports.store.stock(ids).await?.contains(&None) {
            return Ok(false);
        }
        let before = self.ports.store.pending_orders().await?;
        let levels = self.ports.store.all_stock().await?;
        let check_at_ms = self.ports.clock.now_ms() + self.config().reservation_check_delay_ms;
        let still: HashSet<OrderNo> =
            self.ports.store.pending_orders().await?.iter().map(|order| order.order_no).collect();
        let held: Vec<Held> = before
            .iter()
            .filter(|order| still.contains(&order.order_no))
            .map(|order| Held {
                token: order.entry_token(),
                lines: order.stock_lines(),
                check_at_ms: Some(check_at_ms),
            })
            .collect();
        self.ports.cache.init(&levels, &held).await?;
        Ok(true)
    }

    /// The shops that have a stock ledger, each once: a reservation (and its check) can only be on one.
    pub(crate) async fn shops_with_stock(&self) -> Result<Vec<ShopId>, PortError> {
        let mut shops: Vec<ShopId> = self.ports.store.all_stock().await?.iter().map(|(_, l)| l.shop_id).collect();
        shops.sort_unstable();
        shops.dedup();
        Ok(shops)
    }

    /// The entry's reservations of a cart it refuses, given back. Only from RESERVED: a CLAIMED token is
    /// a worker's, creating its order on it (a retry with a key meets its first attempt's). Best effort:
    /// a release that fails here is done by the reservation check instead.
    pub(crate) async fn release_all(&self, orders: impl IntoIterator<Item = &Order>) {
        for order in orders {
            if let Err(error) = self.ports.cache.release_if_reserved(order.entry_token()).await {
                tracing::warn!(order_no = %order.order_no, %error, "release failed; the reservation check will do it");
            }
        }
    }

    /// The cache is a copy: when it fails, or does not answer within `entry_call_timeout_ms` (a Redis
    /// Cluster failing over retries for longer), the store answers. `Err`: the cache failed (a caller
    /// does not put a copy back then, so a failing cache costs a query one bound, not two); `Ok(None)`:
    /// a miss, or no cache.
    pub(crate) async fn cached_order(&self, order_no: OrderNo) -> Result<Option<Order>, PortError> {
        let Some(orders) = self.ports.orders.as_ref() else { return Ok(None) };
        self.bounded("order cache", orders.get(order_no)).await.inspect_err(|error| {
            tracing::debug!(%order_no, %error, "order cache unavailable; reading the store");
        })
    }

    pub(crate) async fn cache_order(&self, order: &Order) {
        if let Some(orders) = &self.ports.orders
            && let Err(error) = self.bounded("order cache", orders.put(order)).await
        {
            tracing::debug!(order_no = %order.order_no, %error, "order cache unavailable");
        }
    }

    /// After a change of an order in the store: its cached copy is deleted now and again after
    /// `order_cache_second_delete_ms` (a query that read the store before the change may have put the
    /// old order back). A failed delete leaves the copy to its expiry; the first is waited for no longer
    /// than `entry_call_timeout_ms` (the second tries again).
    ///
    /// The second deletes of the changes in one [`SECOND_DELETE_WINDOW_MS`] go together, as one call,
    /// once the window has closed and the delay has passed since: each comes at least the delay after its
    /// change (about the delay plus the window at most), and a process makes one call per window instead
    /// of one per change (they were a seventh of the cluster's Redis commands).
    pub(crate) async fn orders_changed(&self, order_nos: Vec<OrderNo>) {
        let Some(orders) = &self.ports.orders else { return };
        if order_nos.is_empty() {
            return;
        }
        if let Err(error) = self.bounded("order cache", orders.forget(&order_nos)).await {
            tracing::warn!(orders = order_nos.len(), %error, "order cache: delete failed; the copies expire on their own");
        }
        let opened = {
            let mut open = self.second_deletes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match open.as_mut() {
                Some(window) => {
                    window.extend(order_nos);
                    false
                }
                None => {
                    *open = Some(order_nos);
                    true
                }
            }
        };
        if !opened {
            return;
        }
        // The window's wait starts now, at its opening; the delay once it is closed, so a change that
        // joined it late (the task scheduled late) still gets the whole delay, read from the settings then.
        let window = self.ports.clock.sleep_ms(SECOND_DELETE_WINDOW_MS);
        let (orders, clock, config) = (Arc::clone(orders), Arc::clone(&self.ports.clock), Arc::clone(&self.config));
        let mut closing = CloseWindow(Some(Arc::clone(&self.second_deletes)));
        tokio::spawn(async move {
            window.await;
            // Closed: a change from now on opens the next window.
            let mut closed = closing.close();
            closed.sort_unstable();
            closed.dedup();
            clock.sleep_ms(config.load().order_cache_second_delete_ms).await;
            if let Err(error) = orders.forget(&closed).await {
                tracing::warn!(orders = closed.len(), %error, "order cache: second delete failed; the copies expire on their own");
            }
        });
    }
}

/// Closes a window of second deletes: when its task does, or when the task is dropped before (a runtime
/// shutting down), so that no window stays open with nothing to close it.
struct CloseWindow(Option<SecondDeletes>);

impl CloseWindow {
    fn close(&mut self) -> Vec<OrderNo> {
        self.0
            .take()
            .and_then(|window| window.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take())
            .unwrap_or_default()
    }
}

impl Drop for CloseWindow {
    fn drop(&mut self) {
        self.close();
    }
}

/// The open window of a process's second deletes (`None`: none open), shared with the task closing it.
pub(crate) type SecondDeletes = Arc<Mutex<Option<Vec<OrderNo>>>>;

/// How long the second deletes of an order cache's changes gather before they go as one call.
pub const SECOND_DELETE_WINDOW_MS: u64 = 20;

/// How often a reserve loads counters that a flush keeps emptying before it answers "unavailable".
const RELOAD_ATTEMPTS: usize = 3;

/// Where the workers stand in their sweep of the reservation checks a cache keeps
/// ([`crate::ports::StockCache::keeps_checks`]).
#[derive(Debug, Default)]
pub(crate) struct KeptChecks {
    /// Not before this (the Clock port's milliseconds).
    pub(crate) next_sweep_ms: u64,
    /// The shops that have stock, read from the store at `shops_read_ms`: a reservation (and so its
    /// check) can only be on one of them.
    pub(crate) shops: Vec<ShopId>,
    pub(crate) shops_read_ms: Option<u64>,
    /// Not before this, the look at the pending views left longer than [`crate::workers`]' stale age.
    pub(crate) next_stale_look_ms: u64,
    /// The last of those the previous look took (more than a batch are taken in turns).
    pub(crate) stale_looked_through: Option<OrderNo>,
}

/// Whose reservation [`Orderly::reserve`] makes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reserving {
    /// The entry's token, RESERVED; with the time its check is due where the cache keeps the checks.
    Entry { check_at_ms: Option<u64> },
    /// A worker's own token, CLAIMED from the start.
    Worker,
}
