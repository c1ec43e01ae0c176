//! The fjall database shared by the store, the bus and the payment ledger, and its group commit.
//!
//! Writers write (into the memtable and the journal buffer), then wait for a sync that *started after*
//! their write. One background task runs syncs back to back; every writer waiting when a sync starts is
//! answered by it, so N concurrent commits cost one fsync, not N.

use std::path::Path;
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use orderly_app::PortError;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::error::LocalError;
use crate::storage_error;

/// How far a commit goes before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// `fdatasync`: survives power loss.
    #[default]
    Fsync,
    /// Written to the OS: survives `kill -9`, not power loss.
    Os,
}

#[derive(Clone)]
pub struct LocalDb {
    pub(crate) db: Database,
    pub(crate) catalog: Keyspace,
    pub(crate) stock: Keyspace,
    pub(crate) orders: Keyspace,
    pub(crate) orders_by_buyer: Keyspace,
    pub(crate) outbox: Keyspace,
    pub(crate) safe_pay: Keyspace,
    pub(crate) safe_pay_due: Keyspace,
    pub(crate) idempotency: Keyspace,
    pub(crate) meta: Keyspace,
    pub(crate) bus: Keyspace,
    pub(crate) dead_letters: Keyspace,
    pub(crate) payment_ledger: Keyspace,
    pub(crate) captures: Keyspace,
    commit_tx: mpsc::UnboundedSender<oneshot::Sender<Result<(), String>>>,
}

impl std::fmt::Debug for LocalDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDb").finish_non_exhaustive()
    }
}

/// A keyspace's memtable, at most, before it is flushed (fjall's default: 64 MiB; with thirteen keyspaces
/// that let the server's memory pass 1.7 GB under load). Kept with the keyspace when it is created: a
/// data directory made by an earlier build keeps its 64 MiB. (fjall 3.1's cap on all memtables together,
/// `max_write_buffer_size`, is not implemented yet.)
const MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;

/// The journal on disk, at most, before the memtables it covers are flushed (fjall's default: 512 MiB).
const JOURNAL_BYTES: u64 = 128 * 1024 * 1024;

impl LocalDb {
    /// Opens (or recovers) the database under `path`. Must run inside a tokio runtime.
    pub fn open(path: &Path, durability: Durability) -> Result<LocalDb, PortError> {
        let db = Database::builder(path).max_journaling_size(JOURNAL_BYTES).open().map_err(storage_error)?;
        let keyspace = |name: &str| {
            db.keyspace(name, || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES))
                .map_err(storage_error)
        };
        let (commit_tx, commit_rx) = mpsc::unbounded_channel();
        let local = LocalDb {
            catalog: keyspace("catalog")?,
            stock: keyspace("stock")?,
            orders: keyspace("orders")?,
            orders_by_buyer: keyspace("orders_by_buyer")?,
            outbox: keyspace("outbox")?,
            safe_pay: keyspace("safe_pay")?,
            safe_pay_due: keyspace("safe_pay_due")?,
            idempotency: keyspace("idempotency")?,
            meta: keyspace("meta")?,
            bus: keyspace("bus")?,
            dead_letters: keyspace("dead_letters")?,
            payment_ledger: keyspace("payment_ledger")?,
            captures: keyspace("captures")?,
            db: db.clone(),
            commit_tx,
        };
        let mode = match durability {
            Durability::Fsync => PersistMode::SyncData,
            Durability::Os => PersistMode::Buffer,
        };
        tokio::spawn(group_commit(Arc::new(db), mode, commit_rx));
        Ok(local)
    }

    pub(crate) fn batch(&self) -> fjall::OwnedWriteBatch {
        self.db.batch()
    }

    /// Waits until everything written before this call is durable.
    pub(crate) async fn sync(&self) -> Result<(), PortError> {
        let (done_tx, done_rx) = oneshot::channel();
        self.commit_tx.send(done_tx).map_err(|_| PortError::from(LocalError::GroupCommitStopped))?;
        done_rx.await.map_err(|_| PortError::from(LocalError::GroupCommitStopped))?.map_err(storage_error)
    }
}

async fn group_commit(
    db: Arc<Database>,
    mode: PersistMode,
    mut requests: mpsc::UnboundedReceiver<oneshot::Sender<Result<(), String>>>,
) {
    while let Some(first) = requests.recv().await {
        let mut waiting = vec![first];
        while let Ok(next) = requests.try_recv() {
            waiting.push(next);
        }
        let db = Arc::clone(&db);
        let result = tokio::task::spawn_blocking(move || db.persist(mode).map_err(|e| e.to_string()))
            .await
            .unwrap_or_else(|e| Err(format!("sync task failed: {e}")));
        for waiter in waiting {
            // A waiter that went away no longer needs the answer.
            let _ = waiter.send(result.clone());
        }
    }
}

/// Big-endian u64 key.
pub(crate) fn u64_key(value: u64) -> [u8; 8] {
    value.to_be_bytes()
}

pub(crate) fn key_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// The last u64-keyed sequence number used in a keyspace whose keys start with `prefix`.
pub(crate) fn last_sequence(keyspace: &Keyspace) -> Result<u64, PortError> {
    match keyspace.last_key_value() {
        None => Ok(0),
        Some(guard) => {
            let (key, _) = guard.into_inner().map_err(storage_error)?;
            Ok(key_u64(&key[key.len().saturating_sub(8)..]).unwrap_or(0))
        }
    }
}
