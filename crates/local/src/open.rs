//! Opens the standalone adapters: every port on one fjall database under a data directory. The binary
//! wires them to the flow (`Orderly::new`); tests do the same with a manual clock.

use std::path::Path;
use std::sync::Arc;

use orderly_app::ids::LeasedSnowflake;
use orderly_app::ports::{Held, Payments};
use orderly_app::{Clock, PortError, Ports, StockCache, Store};
use orderly_ledger::{LedgerConfig, PaymentLedger};
use serde::{Deserialize, Serialize};

use crate::error::LocalError;
use crate::{
    AcquirerConfig, Durability, LocalBus, LocalDb, LocalRegistry, LocalStockCache, LocalStore, local_payments,
};

/// Settings of the standalone adapters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalConfig {
    pub durability: Durability,
    /// Snowflake worker id of this process (0–1023).
    pub worker_id: u16,
    /// How far ahead the id generator leases time; below the snowflake's drift bound (5 s), since after
    /// a restart ids start at the last lease.
    pub id_lease_ms: u64,
    /// How long the cache keeps a reservation nobody claimed (its reservation check gives it back long
    /// before) and remembers a released or refused token (an error answer's late create must find it
    /// refused).
    pub token_ttl_ms: u64,
    /// How long the cache remembers a confirmed reservation and a restock's marker: past that the store
    /// says what the cache forgot (at least `cache::SETTLED_TTL_MIN_MS`, a minute; at most `token_ttl_ms`).
    /// The cache's memory grows with the orders of this window, not of `token_ttl_ms`.
    pub settled_token_ttl_ms: u64,
    /// How long a handed-out message stays hidden before it is delivered again.
    pub bus_lease_ms: u64,
    /// The simulated acquirer behind the payment ledger (in process, or `orderly payment`'s).
    pub acquirer: AcquirerConfig,
    /// The payment ledger's charge lease (in process, or `orderly payment`'s).
    pub ledger: LedgerConfig,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            durability: Durability::Fsync,
            worker_id: 0,
            id_lease_ms: 2_000,
            token_ttl_ms: 60 * 60 * 1000,
            settled_token_ttl_ms: 60 * 1000,
            bus_lease_ms: 30_000,
            acquirer: AcquirerConfig::default(),
            ledger: LedgerConfig::default(),
        }
    }
}

/// The payment service's own ledger (and its simulated acquirer) on a data directory of its own: what
/// `orderly payment` serves over gRPC.
pub fn open_payment_ledger(
    data_dir: &Path,
    clock: Arc<dyn Clock>,
    local: &LocalConfig,
) -> Result<PaymentLedger, PortError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|source| LocalError::Directory { path: data_dir.display().to_string(), source })?;
    let db = LocalDb::open(data_dir, local.durability)?;
    Ok(local_payments(db, local.acquirer.clone(), clock, local.ledger.clone()))
}

/// Opens (or recovers) the standalone adapters under `data_dir` and rebuilds the cache from the store:
/// after a crash the store is the authority, and in-flight orders re-reserve against it. The payment
/// service is in process on the same database, or `payments` (over gRPC) when given.
pub async fn open(
    data_dir: &Path,
    clock: Arc<dyn Clock>,
    local: &LocalConfig,
    payments: Option<Arc<dyn Payments>>,
) -> Result<Ports, PortError> {
    Ok(open_with_registry(data_dir, clock, local, payments).await?.0)
}

/// [`open`], and the in-process registry whose settings are kept in the same database.
pub async fn open_with_registry(
    data_dir: &Path,
    clock: Arc<dyn Clock>,
    local: &LocalConfig,
    payments: Option<Arc<dyn Payments>>,
) -> Result<(Ports, LocalRegistry), PortError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|source| LocalError::Directory { path: data_dir.display().to_string(), source })?;
    let db = LocalDb::open(data_dir, local.durability)?;
    let bus = Arc::new(LocalBus::new(db.clone(), Arc::clone(&clock), local.bus_lease_ms)?);
    let store: Arc<dyn Store> = Arc::new(LocalStore::with_bus(db.clone(), Arc::clone(&bus))?);
    let cache: Arc<dyn StockCache> =
        Arc::new(LocalStockCache::new(Arc::clone(&clock), local.token_ttl_ms, local.settled_token_ttl_ms));
    // Nothing else runs yet: the levels and the pending orders are one moment's. Accepted orders not
    // created yet keep their units (their reservations are made again), so the rebuilt counters do not
    // sell them a second time.
    // No reservation checks for them: each view's create was written with it (one write) and settles it.
    let held: Vec<Held> = store
        .pending_orders()
        .await?
        .iter()
        .map(|order| Held { token: order.entry_token(), lines: order.stock_lines(), check_at_ms: None })
        .collect();
    cache.init(&store.all_stock().await?, &held).await?;
    let registry = LocalRegistry::open(Some(db.clone()))?;
    let payments = match payments {
        Some(payments) => payments,
        None => Arc::new(local_payments(db, local.acquirer.clone(), Arc::clone(&clock), local.ledger.clone())),
    };
    let ids = Arc::new(
        LeasedSnowflake::start(Arc::clone(&store), Arc::clone(&clock), local.worker_id, local.id_lease_ms).await?,
    );
    let holdings = Arc::new(crate::LocalHoldings::new());
    Ok((Ports { cache, store, bus, payments, clock, ids, orders: None, holdings }, registry))
}
