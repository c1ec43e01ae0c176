//! The fjall database shared by the store, the bus and the payment ledger, and its group commit.
//!
//! Writers write (into the memtable and the journal buffer), then wait for a sync that *started after*
//! their write. One background task runs syncs back to back; every writer waiting when a sync starts is
//! answered by it, so N concurrent commits cost one fsync, not N.
//!
//! A sync does not hold the journal's lock across its `fdatasync`, as fjall's own `persist` does: every
//! commit (taken on the runtime's threads) would wait for the disk behind that lock, and with syncs back
//! to back under load that is most of the time. So [`JournalSync`] empties the journal's buffer into the
//! file under the lock (`PersistMode::Buffer`: a `write`), then syncs the active journal file by a handle
//! of its own, outside the lock.

use std::fs::File;
use std::path::{Path, PathBuf};
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

/// fjall's background threads (flushes, compactions): three. fjall 3.1's first worker hands every
/// compaction message back to the queue and takes it again while the others are busy (`worker_pool.rs`:
/// it keeps itself free for flushes), a busy loop as long as every other worker compacts: with two
/// workers (fjall's default on this machine) that was 5–9 % of the server's CPU under load, with three
/// 1.3 %. One worker was tried too, and let memtable rotations starve under sustained load — a 450 MB
/// journal and RSS rising ~15 MB/s within a minute (docs/BENCHMARKS.md).
const FJALL_WORKERS: usize = 3;

impl LocalDb {
    /// Opens (or recovers) the database under `path`. Must run inside a tokio runtime.
    pub fn open(path: &Path, durability: Durability) -> Result<LocalDb, PortError> {
        let db = Database::builder(path)
            .max_journaling_size(JOURNAL_BYTES)
            .worker_threads(FJALL_WORKERS)
            .open()
            .map_err(storage_error)?;
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
        let journal = JournalSync::new(path, mode);
        tokio::spawn(group_commit(Arc::new(db), journal, commit_rx));
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
    journal: JournalSync,
    mut requests: mpsc::UnboundedReceiver<oneshot::Sender<Result<(), String>>>,
) {
    let journal = Arc::new(std::sync::Mutex::new(journal));
    while let Some(first) = requests.recv().await {
        let mut waiting = vec![first];
        while let Ok(next) = requests.try_recv() {
            waiting.push(next);
        }
        let (db, journal) = (Arc::clone(&db), Arc::clone(&journal));
        let result = tokio::task::spawn_blocking(move || {
            // One sync at a time (this loop), so the lock is never contended.
            journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner).sync(&db)
        })
        .await
        .unwrap_or_else(|e| Err(format!("sync task failed: {e}")));
        for waiter in waiting {
            // A waiter that went away no longer needs the answer.
            let _ = waiter.send(result.clone());
        }
    }
}

/// Makes everything committed so far durable, without holding the journal's lock across the disk.
///
/// fjall (pinned in Cargo.toml: this relies on its journal's layout) keeps its journal in
/// `<data dir>/<id>.jnl`, writes only the one of the highest id, and syncs a journal fully (under its
/// lock) before it creates the next, `<id + 1>.jnl`. So after the buffer is written out under the lock,
/// every commit before it is in the active file found afterwards, or in an older one already synced;
/// syncing that file by any handle to it makes them durable. The directory is listed once; a rotation
/// since the last sync is seen by the next id's file existing (a `stat`, no descriptor). When no journal
/// is found, or its file cannot be opened, the sync falls back to fjall's own, under its lock.
///
/// A failed sync fails every later one, as fjall poisons its database when its own sync fails: after a
/// write-back error the kernel may report a later `fdatasync` as successful while the pages it could
/// not write are gone, so no commit after it may be acknowledged.
#[derive(Debug)]
pub(crate) struct JournalSync {
    dir: PathBuf,
    mode: PersistMode,
    /// The active journal's id and a handle to it, from the last sync.
    active: Option<(u64, File)>,
    failed: Option<String>,
}

impl JournalSync {
    pub(crate) fn new(dir: &Path, mode: PersistMode) -> JournalSync {
        JournalSync { dir: dir.to_path_buf(), mode, active: None, failed: None }
    }

    fn sync(&mut self, db: &Database) -> Result<(), String> {
        if let Some(failed) = &self.failed {
            return Err(failed.clone());
        }
        let synced = self.try_sync(db);
        if let Err(error) = &synced {
            self.failed =
                Some(format!("the journal could not be made durable, nothing is acknowledged any more: {error}"));
        }
        synced
    }

    fn try_sync(&mut self, db: &Database) -> Result<(), String> {
        db.persist(PersistMode::Buffer).map_err(|e| e.to_string())?;
        if self.mode == PersistMode::Buffer {
            return Ok(());
        }
        let mode = self.mode;
        let Some(file) = self.active_file() else {
            return db.persist(mode).map_err(|e| e.to_string());
        };
        match mode {
            PersistMode::SyncAll => file.sync_all(),
            _ => file.sync_data(),
        }
        .map_err(|e| e.to_string())
    }

    /// A handle to the active journal, `None` when it cannot be found or opened.
    fn active_file(&mut self) -> Option<&File> {
        let known = match &self.active {
            Some((id, _)) => *id,
            None => active_journal(&self.dir).ok()??,
        };
        let mut id = known;
        while self.dir.join(format!("{}.jnl", id + 1)).exists() {
            id += 1;
        }
        if self.active.is_none() || id != known {
            self.active = None;
            let file = File::open(self.dir.join(format!("{id}.jnl"))).ok()?;
            self.active = Some((id, file));
        }
        self.active.as_ref().map(|(_, file)| file)
    }
}

/// The highest journal id in `dir`, if any.
fn active_journal(dir: &Path) -> std::io::Result<Option<u64>> {
    let mut highest = None;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let id = name.to_str().and_then(|name| name.strip_suffix(".jnl")).and_then(|id| id.parse::<u64>().ok());
        highest = highest.max(id);
    }
    Ok(highest)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_active_journal_is_the_highest_id() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(active_journal(dir.path()).expect("read"), None);
        for name in ["0.jnl", "12.jnl", "3.jnl", "x.jnl", "7.jnl.tmp", "version"] {
            std::fs::write(dir.path().join(name), b"").expect("write");
        }
        std::fs::create_dir(dir.path().join("keyspaces")).expect("dir");
        assert_eq!(active_journal(dir.path()).expect("read"), Some(12));
    }

    #[test]
    fn a_sync_finds_fjalls_journal_and_follows_its_rotation() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Database::builder(dir.path()).open().expect("db");
        let keyspace = db.keyspace("k", KeyspaceCreateOptions::default).expect("keyspace");
        keyspace.insert("a", "1").expect("insert");
        let mut journal = JournalSync::new(dir.path(), PersistMode::SyncData);
        journal.sync(&db).expect("sync");
        let (id, _) = journal.active.as_ref().expect("the journal was found (fjall's layout as assumed)");
        let first = *id;
        assert_eq!(Some(first), active_journal(dir.path()).expect("read"));
        // fjall starts the next journal when a flush finds the active one past 64 MB (of incompressible
        // values: the journal compresses).
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for n in 0..70u32 {
            let value: Vec<u8> = (0..1 << 17)
                .flat_map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()
                })
                .collect();
            keyspace.insert(n.to_be_bytes(), value).expect("insert");
        }
        keyspace.rotate_memtable_and_wait().expect("rotated");
        keyspace.insert("b", "2").expect("insert");
        let newest = active_journal(dir.path()).expect("read").expect("a journal");
        assert!(newest > first, "fjall rotated its journal ({first} → {newest})");
        journal.sync(&db).expect("sync");
        assert_eq!(journal.active.as_ref().map(|(id, _)| *id), Some(newest), "the sync follows the rotation");
    }

    #[test]
    fn a_failed_sync_fails_every_later_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Database::builder(dir.path()).open().expect("db");
        let mut journal = JournalSync::new(dir.path(), PersistMode::SyncData);
        journal.sync(&db).expect("sync");
        let id = journal.active.as_ref().map(|(id, _)| *id).expect("found");
        // A handle whose fdatasync fails (a pipe: EINVAL) in place of the journal's.
        let (reader, _writer) = std::io::pipe().expect("pipe");
        journal.active = Some((id, File::from(std::os::fd::OwnedFd::from(reader))));
        assert!(journal.sync(&db).is_err());
        journal.active = None;
        assert!(journal.sync(&db).is_err(), "not acknowledged after a failure, though the journal is fine");
    }
}
