//! Wiring of the standalone profile: every port on one fjall database under a data directory.

use std::path::Path;
use std::sync::Arc;

use orderly_app::ids::LeasedSnowflake;
use orderly_app::payment_ledger::{LedgerConfig, PaymentLedger};
use orderly_app::ports::Payments;
use orderly_app::{Clock, FlowConfig, Orderly, PortError, StockCache, Store};
use serde::{Deserialize, Serialize};

use crate::{AcquirerConfig, Durability, LocalBus, LocalDb, LocalStockCache, LocalStore, local_payments};

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
    /// How long the cache remembers a token.
    pub token_ttl_ms: u64,
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
            bus_lease_ms: 30_000,
            acquirer: AcquirerConfig::default(),
            ledger: LedgerConfig::default(),
        }
    }
}

/// Opens (or recovers) the standalone profile under `data_dir` and rebuilds the cache from the store:
/// after a crash the store is the authority, and in-flight orders re-reserve against it.
pub async fn open(
    data_dir: &Path,
    clock: Arc<dyn Clock>,
    flow: FlowConfig,
    local: &LocalConfig,
) -> Result<Orderly, PortError> {
    open_with_payments(data_dir, clock, flow, local, None).await
}

/// The payment service's own ledger (and its simulated acquirer) on a data directory of its own: what
/// `orderly payment` serves over gRPC.
pub fn open_payment_ledger(
    data_dir: &Path,
    clock: Arc<dyn Clock>,
    local: &LocalConfig,
) -> Result<PaymentLedger, PortError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| PortError::corrupt("payment ledger", format!("{}: {e}", data_dir.display())))?;
    let db = LocalDb::open(data_dir, local.durability)?;
    Ok(local_payments(db, local.acquirer.clone(), clock, local.ledger.clone()))
}

/// Like [`open`], with the payment service elsewhere (`Some`: over gRPC) instead of in process.
pub async fn open_with_payments(
    data_dir: &Path,
    clock: Arc<dyn Clock>,
    flow: FlowConfig,
    local: &LocalConfig,
    payments: Option<Arc<dyn Payments>>,
) -> Result<Orderly, PortError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| PortError::corrupt("local store", format!("{}: {e}", data_dir.display())))?;
    let db = LocalDb::open(data_dir, local.durability)?;
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(db.clone())?);
    let cache: Arc<dyn StockCache> = Arc::new(LocalStockCache::new(Arc::clone(&clock), local.token_ttl_ms));
    cache.init(&store.all_stock().await?).await?;
    let bus = Arc::new(LocalBus::new(db.clone(), Arc::clone(&clock), local.bus_lease_ms)?);
    let payments = match payments {
        Some(payments) => payments,
        None => Arc::new(local_payments(db, local.acquirer.clone(), Arc::clone(&clock), local.ledger.clone())),
    };
    let ids = Arc::new(
        LeasedSnowflake::start(Arc::clone(&store), Arc::clone(&clock), local.worker_id, local.id_lease_ms).await?,
    );
    Ok(Orderly::new(cache, store, bus, payments, clock, ids, flow))
}
