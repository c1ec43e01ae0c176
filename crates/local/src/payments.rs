//! The payment service's ledger in the embedded database: [`LocalLedgerBook`] (one entry per order) and
//! [`LocalCaptureBook`] (the simulated acquirer's records), the storage behind
//! [`orderly_ledger::PaymentLedger`], which holds the rules. One process owns the database,
//! so a mutex makes each read-decide-write atomic; the group commit makes it durable before it returns.

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use orderly_app::Clock;
use orderly_app::ports::{ChargeRequest, PortResult, RefundOutcome};
use orderly_domain::{Money, OrderNo};
use orderly_ledger::{
    CaptureBook, CaptureOutcome, CaptureRecord, ChargeStep, LedgerBook, LedgerConfig, LedgerEntry, LedgerState,
    PaymentLedger, RefundStep, SimulatedAcquirer, charge_step, refund_step, settle_step,
};

pub use orderly_ledger::AcquirerConfig;

use crate::db::LocalDb;
use crate::{decode, encode, storage_error};

/// The payment service in process: the ledger and the simulated acquirer, both in `db`.
pub fn local_payments(
    db: LocalDb,
    acquirer: AcquirerConfig,
    clock: Arc<dyn Clock>,
    config: LedgerConfig,
) -> PaymentLedger {
    let (book, captures) = local_payment_books(db);
    PaymentLedger::new(book, SimulatedAcquirer::new(captures, acquirer, Arc::clone(&clock)), clock, config)
}

/// The ledger's and the acquirer's books in `db`.
pub fn local_payment_books(db: LocalDb) -> (Arc<LocalLedgerBook>, Arc<LocalCaptureBook>) {
    let captures = Arc::new(LocalCaptureBook { db: db.clone(), lock: Mutex::new(()) });
    (Arc::new(LocalLedgerBook { db, lock: Mutex::new(()) }), captures)
}

fn locked(lock: &Mutex<()>) -> PortResult<MutexGuard<'_, ()>> {
    // It guards no data of its own (each step is one atomic write): a holder that panicked left nothing.
    Ok(lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

#[derive(Debug)]
pub struct LocalLedgerBook {
    db: LocalDb,
    /// Serialises read-decide-writes.
    lock: Mutex<()>,
}

impl LocalLedgerBook {
    fn read(&self, order_no: OrderNo) -> PortResult<Option<LedgerEntry>> {
        self.db.payment_ledger.get(order_no.to_key()).map_err(storage_error)?.map(|b| decode(&b)).transpose()
    }

    fn write(&self, order_no: OrderNo, entry: &LedgerEntry) -> PortResult<()> {
        self.db.payment_ledger.insert(order_no.to_key(), encode(entry)?).map_err(storage_error)
    }
}

#[async_trait]
impl LedgerBook for LocalLedgerBook {
    async fn entry(&self, order_no: OrderNo) -> PortResult<Option<LedgerEntry>> {
        self.read(order_no)
    }

    async fn begin_charge(
        &self,
        request: &ChargeRequest,
        now_ms: u64,
        config: &LedgerConfig,
    ) -> PortResult<ChargeStep> {
        let step = {
            let _lock = locked(&self.lock)?;
            let step = charge_step(self.read(request.order_no)?.as_ref(), request, now_ms, config);
            if let ChargeStep::Start(entry) = &step {
                self.write(request.order_no, entry)?;
            }
            step
        };
        if matches!(step, ChargeStep::Start(_)) {
            self.db.sync().await?;
        }
        Ok(step)
    }

    async fn settle(
        &self,
        order_no: OrderNo,
        running: &LedgerEntry,
        state: LedgerState,
    ) -> PortResult<Option<LedgerEntry>> {
        // No sync of its own: the state copies the acquirer's record, synced already (see `LedgerBook`).
        let _lock = locked(&self.lock)?;
        let Some(entry) = self.read(order_no)? else { return Ok(None) };
        match settle_step(&entry, &running.idempotency_key, state) {
            Some(settled) => {
                self.write(order_no, &settled)?;
                Ok(Some(settled))
            }
            None => Ok(Some(entry)),
        }
    }

    async fn refund(&self, order_no: OrderNo, amount: Money, refund_key: &str) -> PortResult<RefundOutcome> {
        let outcome = {
            let _lock = locked(&self.lock)?;
            match refund_step(self.read(order_no)?.as_ref(), amount, refund_key)? {
                RefundStep::Answer(outcome) => return Ok(outcome),
                RefundStep::Record(entry, outcome) => {
                    self.write(order_no, &entry)?;
                    outcome
                }
            }
        };
        self.db.sync().await?;
        Ok(outcome)
    }
}

#[derive(Debug)]
pub struct LocalCaptureBook {
    db: LocalDb,
    /// Makes "first writer wins" atomic.
    lock: Mutex<()>,
}

impl LocalCaptureBook {
    fn read(&self, capture_id: &str) -> PortResult<Option<CaptureRecord>> {
        self.db.captures.get(capture_id).map_err(storage_error)?.map(|b| decode(&b)).transpose()
    }
}

#[async_trait]
impl CaptureBook for LocalCaptureBook {
    async fn record_first(&self, capture_id: &str, record: &CaptureRecord) -> PortResult<CaptureRecord> {
        let first = {
            let _lock = locked(&self.lock)?;
            if let Some(existing) = self.read(capture_id)? {
                existing
            } else {
                self.db.captures.insert(capture_id, encode(record)?).map_err(storage_error)?;
                record.clone()
            }
        };
        // Also for a record found: its writer may still be waiting for the sync.
        self.db.sync().await?;
        Ok(first)
    }

    async fn captured(&self) -> PortResult<Vec<(OrderNo, String)>> {
        let mut all = Vec::new();
        for guard in self.db.captures.iter() {
            let (key, value) = guard.into_inner().map_err(storage_error)?;
            let record: CaptureRecord = decode(&value)?;
            if record.outcome == CaptureOutcome::Captured {
                all.push((record.order_no, String::from_utf8_lossy(&key).into_owned()));
            }
        }
        Ok(all)
    }
}
