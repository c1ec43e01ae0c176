//! [`LocalPayments`]: the payment service in process, with its own ledger, in front of a
//! [`SimulatedAcquirer`] (the bank side) whose latency, declines, timeouts and lost answers are set by
//! configuration, so every payment path of the flow can run.
//!
//! The ledger holds one entry per order, written PROCESSING before the acquirer is asked; the acquirer
//! captures at most once per idempotency key (one per attempt). A retry of an attempt returns its first
//! result; a new attempt is allowed only after a decline; an order with a success is never charged again;
//! a call racing a PROCESSING charge gets "no definite answer" and the reconciler asks again later.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use orderly_app::ports::{
    ChargeOutcome, ChargeRequest, PaymentStatus, Payments, PortResult, RefundOutcome, RefundRefusal,
};
use orderly_app::{Clock, PortError};
use orderly_domain::{Money, OrderNo};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::db::LocalDb;
use crate::{decode, encode, storage_error};

/// Faults and latency of the simulated acquirer. Rates are probabilities in [0, 1].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AcquirerConfig {
    pub latency_ms: u64,
    /// The card is declined (definite: nothing captured).
    pub decline_rate: f64,
    /// The acquirer does not answer in time: it did *not* capture, but the caller cannot know.
    pub timeout_rate: f64,
    /// The acquirer captured, then the answer was lost: the case that makes safe-pay necessary.
    pub lost_answer_rate: f64,
    /// Seed of the fault dice, so a run can be replayed.
    pub seed: u64,
}

impl Default for AcquirerConfig {
    fn default() -> Self {
        AcquirerConfig { latency_ms: 0, decline_rate: 0.0, timeout_rate: 0.0, lost_answer_rate: 0.0, seed: 7 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum LedgerState {
    Processing,
    Succeeded { payment_id: String },
    Declined { reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LedgerEntry {
    amount: Money,
    idempotency_key: String,
    state: LedgerState,
    /// Refunds of a successful charge: (refund key, amount).
    #[serde(default)]
    refunds: Vec<(String, Money)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Capture {
    order_no: OrderNo,
    amount: Money,
}

enum AcquirerAnswer {
    Captured(String),
    Declined(String),
    /// Unknown to the caller; `captured` says what really happened.
    NoAnswer,
}

/// The bank side: captures money at most once per idempotency key, durably (the audit counts them).
#[derive(Debug)]
pub struct SimulatedAcquirer {
    db: LocalDb,
    config: AcquirerConfig,
    dice: Mutex<SmallRng>,
}

impl SimulatedAcquirer {
    pub fn new(db: LocalDb, config: AcquirerConfig) -> SimulatedAcquirer {
        let dice = Mutex::new(SmallRng::seed_from_u64(config.seed));
        SimulatedAcquirer { db, config, dice }
    }

    fn roll(&self) -> f64 {
        self.dice.lock().map_or(1.0, |mut rng| rng.random::<f64>())
    }

    /// Scoped to the order: a key reused for another order is another capture, never "already done"
    /// (which would report a success for money never taken).
    fn capture_id(order_no: OrderNo, key: &str) -> String {
        format!("cap-{order_no}-{key}")
    }

    async fn capture(&self, order_no: OrderNo, key: &str, amount: Money) -> PortResult<AcquirerAnswer> {
        if self.config.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.config.latency_ms)).await;
        }
        let capture_id = Self::capture_id(order_no, key);
        if self.db.captures.contains_key(&capture_id).map_err(storage_error)? {
            return Ok(AcquirerAnswer::Captured(capture_id));
        }
        let roll = self.roll();
        if roll < self.config.decline_rate {
            return Ok(AcquirerAnswer::Declined("insufficient_funds".to_owned()));
        }
        if roll < self.config.decline_rate + self.config.timeout_rate {
            return Ok(AcquirerAnswer::NoAnswer);
        }
        self.db.captures.insert(&capture_id, encode(&Capture { order_no, amount })?).map_err(storage_error)?;
        self.db.sync().await?;
        if roll < self.config.decline_rate + self.config.timeout_rate + self.config.lost_answer_rate {
            return Ok(AcquirerAnswer::NoAnswer);
        }
        Ok(AcquirerAnswer::Captured(capture_id))
    }

    fn captured(&self, order_no: OrderNo, key: &str) -> PortResult<Option<String>> {
        let capture_id = Self::capture_id(order_no, key);
        Ok(self.db.captures.contains_key(&capture_id).map_err(storage_error)?.then_some(capture_id))
    }
}

#[derive(Debug)]
pub struct LocalPayments {
    db: LocalDb,
    acquirer: SimulatedAcquirer,
    clock: Arc<dyn Clock>,
    /// Serialises ledger read-check-writes.
    ledger_lock: Mutex<()>,
    /// Orders whose charge is running in this process: their PROCESSING entry must not be settled by a
    /// query, or a capture landing afterwards would contradict the answer.
    in_flight: Arc<Mutex<HashSet<OrderNo>>>,
}

/// Removes an order from the in-flight set when its charge ends, however it ends (even dropped).
struct InFlight {
    set: Arc<Mutex<HashSet<OrderNo>>>,
    order_no: OrderNo,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.order_no);
        }
    }
}

impl LocalPayments {
    pub fn new(db: LocalDb, acquirer: SimulatedAcquirer, clock: Arc<dyn Clock>) -> LocalPayments {
        LocalPayments { db, acquirer, clock, ledger_lock: Mutex::new(()), in_flight: Arc::default() }
    }

    fn read(&self, order_no: OrderNo) -> PortResult<Option<LedgerEntry>> {
        self.db.payment_ledger.get(order_no.to_key()).map_err(storage_error)?.map(|b| decode(&b)).transpose()
    }

    fn write(&self, order_no: OrderNo, entry: &LedgerEntry) -> PortResult<()> {
        self.db.payment_ledger.insert(order_no.to_key(), encode(entry)?).map_err(storage_error)
    }

    fn lock(&self) -> PortResult<std::sync::MutexGuard<'_, ()>> {
        self.ledger_lock.lock().map_err(|_| PortError::corrupt("payments", "ledger lock poisoned"))
    }

    fn definite(state: &LedgerState) -> Option<ChargeOutcome> {
        match state {
            LedgerState::Succeeded { payment_id } => Some(ChargeOutcome::Succeeded { payment_id: payment_id.clone() }),
            LedgerState::Declined { reason } => Some(ChargeOutcome::Declined { reason: reason.clone() }),
            LedgerState::Processing => None,
        }
    }

    /// Settles a PROCESSING entry from what the acquirer really did (it knows: it is the bank).
    fn resolve(&self, order_no: OrderNo, entry: &mut LedgerEntry) -> PortResult<()> {
        let running = self.in_flight.lock().map_or(true, |set| set.contains(&order_no));
        if entry.state == LedgerState::Processing && !running {
            entry.state = match self.acquirer.captured(order_no, &entry.idempotency_key)? {
                Some(payment_id) => LedgerState::Succeeded { payment_id },
                None => LedgerState::Declined { reason: "acquirer_timeout".to_owned() },
            };
            self.write(order_no, entry)?;
        }
        Ok(())
    }
}

#[async_trait]
impl Payments for LocalPayments {
    async fn charge(&self, request: ChargeRequest) -> PortResult<ChargeOutcome> {
        let order_no = request.order_no;
        {
            let _ledger = self.lock()?;
            if let Some(entry) = self.read(order_no)? {
                match &entry.state {
                    // Never a second charge for a paid order.
                    LedgerState::Succeeded { .. } => {
                        return Self::definite(&entry.state)
                            .ok_or_else(|| PortError::corrupt("payments", "unreachable"));
                    }
                    LedgerState::Processing => {
                        return Err(PortError::unavailable("payments", "a charge for this order is in progress"));
                    }
                    // The same attempt again: its answer. A new attempt after a decline: charge anew.
                    LedgerState::Declined { .. } if entry.idempotency_key == request.idempotency_key => {
                        return Self::definite(&entry.state)
                            .ok_or_else(|| PortError::corrupt("payments", "unreachable"));
                    }
                    LedgerState::Declined { .. } => {}
                }
            }
            if self.clock.now_ms() > request.deadline_ms {
                return Err(PortError::unavailable("payments", "charge deadline passed; not started"));
            }
            let entry = LedgerEntry {
                amount: request.amount,
                idempotency_key: request.idempotency_key.clone(),
                state: LedgerState::Processing,
                refunds: Vec::new(),
            };
            self.write(order_no, &entry)?;
            self.in_flight.lock().map_err(|_| PortError::corrupt("payments", "lock poisoned"))?.insert(order_no);
        }
        let _in_flight = InFlight { set: Arc::clone(&self.in_flight), order_no };
        self.db.sync().await?;
        let answer = self.acquirer.capture(order_no, &request.idempotency_key, request.amount).await?;
        let state = match answer {
            AcquirerAnswer::Captured(payment_id) => LedgerState::Succeeded { payment_id },
            AcquirerAnswer::Declined(reason) => LedgerState::Declined { reason },
            AcquirerAnswer::NoAnswer => {
                return Err(PortError::unavailable("payments", "the acquirer did not answer"));
            }
        };
        {
            let _ledger = self.lock()?;
            self.write(
                order_no,
                &LedgerEntry {
                    amount: request.amount,
                    idempotency_key: request.idempotency_key,
                    state: state.clone(),
                    refunds: Vec::new(),
                },
            )?;
        }
        self.db.sync().await?;
        Self::definite(&state).ok_or_else(|| PortError::corrupt("payments", "settled state is not definite"))
    }

    async fn query(&self, order_no: OrderNo) -> PortResult<PaymentStatus> {
        let status = {
            let _ledger = self.lock()?;
            let Some(mut entry) = self.read(order_no)? else { return Ok(PaymentStatus::NotFound) };
            self.resolve(order_no, &mut entry)?;
            match entry.state {
                LedgerState::Succeeded { payment_id } => PaymentStatus::Succeeded { payment_id },
                LedgerState::Declined { reason } => PaymentStatus::Declined { reason },
                LedgerState::Processing => PaymentStatus::Processing,
            }
        };
        self.db.sync().await?;
        Ok(status)
    }

    async fn refund(&self, order_no: OrderNo, amount: Money, refund_key: &str) -> PortResult<RefundOutcome> {
        let outcome = {
            let _ledger = self.lock()?;
            let Some(mut entry) = self.read(order_no)? else {
                return Ok(RefundOutcome::Refused { reason: RefundRefusal::NotCharged });
            };
            self.resolve(order_no, &mut entry)?;
            if !matches!(entry.state, LedgerState::Succeeded { .. }) {
                return Ok(RefundOutcome::Refused { reason: RefundRefusal::NotCharged });
            }
            let total = |refunds: &[(String, Money)]| {
                refunds.iter().try_fold(Money::ZERO, |sum, (_, amount)| sum.plus(*amount))
            };
            if entry.refunds.iter().any(|(key, _)| key == refund_key) {
                let total = total(&entry.refunds).ok_or_else(|| PortError::corrupt("payments", "refund overflow"))?;
                return Ok(RefundOutcome::Refunded { total });
            }
            let after = total(&entry.refunds).and_then(|sum| sum.plus(amount));
            if amount.cents() <= 0 || after.is_none_or(|after| after.cents() > entry.amount.cents()) {
                return Ok(RefundOutcome::Refused { reason: RefundRefusal::AmountOutOfRange });
            }
            entry.refunds.push((refund_key.to_owned(), amount));
            self.write(order_no, &entry)?;
            RefundOutcome::Refunded { total: after.unwrap_or(amount) }
        };
        self.db.sync().await?;
        Ok(outcome)
    }

    async fn succeeded(&self) -> PortResult<Vec<(OrderNo, String)>> {
        let mut all = Vec::new();
        for guard in self.db.captures.iter() {
            let (key, value) = guard.into_inner().map_err(storage_error)?;
            let capture: Capture = decode(&value)?;
            all.push((capture.order_no, String::from_utf8_lossy(&key).into_owned()));
        }
        Ok(all)
    }
}
