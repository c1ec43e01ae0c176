//! The payment service's ledger, written once for its two homes — the embedded store (standalone) and
//! PostgreSQL (cluster, shared by every payment instance) — and the simulated acquirer behind it.
//!
//! [`PaymentLedger`] implements the [`Payments`] port over two storage ports: a [`LedgerBook`] (one entry
//! per order) and a [`CaptureBook`] (the acquirer's record per attempt). The rules:
//!
//! - An entry is written PROCESSING, with a lease (`processing_until_ms`), before the acquirer is asked.
//!   While the lease holds, a query answers "processing" and another attempt is told to come back.
//! - The acquirer keeps one record per attempt (order and idempotency key), **first writer wins**: a
//!   capture, a decline, or a void. When a lease runs out without a definite answer (the instance died, the
//!   acquirer never answered), whoever asks next voids the attempt at the acquirer unless a capture is
//!   already there, and settles the entry from that record. A capture arriving after the void is refused,
//!   so the ledger and the acquirer never disagree, whichever instance settles and whenever.
//! - A retry of an attempt returns its first result; a new attempt is allowed only after a decline; an
//!   order with a success is never charged again, whatever the key (I5).
//! - Refunds are idempotent per refund key and never exceed the charge.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use orderly_domain::{Money, OrderNo};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use orderly_app::ports::{
    ChargeOutcome, ChargeRequest, Clock, PaymentStatus, Payments, PortError, PortResult, RefundOutcome, RefundRefusal,
};

pub use orderly_app::ports::NO_ANSWER_REASON;

/// How long a started charge owns its order's entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// A PROCESSING entry older than this is settled by the next question about it. Longer than the
    /// acquirer ever takes, or a slow capture is voided (safe — never a contradiction — but a needless
    /// decline). Instances sharing a ledger must have clocks within a fraction of it.
    pub charge_lease_ms: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig { charge_lease_ms: 10_000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LedgerState {
    Processing,
    Succeeded { payment_id: String },
    Declined { reason: String },
}

impl LedgerState {
    pub fn as_str(&self) -> &'static str {
        match self {
            LedgerState::Processing => "processing",
            LedgerState::Succeeded { .. } => "succeeded",
            LedgerState::Declined { .. } => "declined",
        }
    }

    /// The definite answer, if there is one.
    pub fn outcome(&self) -> Option<ChargeOutcome> {
        match self {
            LedgerState::Succeeded { payment_id } => Some(ChargeOutcome::Succeeded { payment_id: payment_id.clone() }),
            LedgerState::Declined { reason } => Some(ChargeOutcome::Declined { reason: reason.clone() }),
            LedgerState::Processing => None,
        }
    }
}

/// The ledger's entry for one order: its latest attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LedgerEntry {
    pub amount: Money,
    pub idempotency_key: String,
    pub state: LedgerState,
    /// While PROCESSING, the attempt's lease (0 in entries written before leases: settle at once).
    #[serde(default)]
    pub processing_until_ms: u64,
    /// Refunds of a successful charge: (refund key, amount).
    #[serde(default)]
    pub refunds: Vec<(String, Money)>,
}

impl LedgerEntry {
    /// PROCESSING and its lease ran out: the next question settles it at the acquirer.
    pub fn needs_settling(&self, now_ms: u64) -> bool {
        self.state == LedgerState::Processing && now_ms >= self.processing_until_ms
    }

    pub fn status(&self) -> PaymentStatus {
        match &self.state {
            LedgerState::Succeeded { payment_id } => PaymentStatus::Succeeded { payment_id: payment_id.clone() },
            LedgerState::Declined { reason } => PaymentStatus::Declined { reason: reason.clone() },
            LedgerState::Processing => PaymentStatus::Processing,
        }
    }

    fn refunded(&self) -> Option<Money> {
        self.refunds.iter().try_fold(Money::ZERO, |sum, (_, amount)| sum.plus(*amount))
    }
}

/// What a charge request does to the order's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeStep {
    /// Definite already: the same attempt's answer, or the order's success.
    Answer(ChargeOutcome),
    /// Another attempt of this order is running under its lease: no definite answer yet.
    Busy,
    /// A PROCESSING entry whose lease ran out: settle it at the acquirer, then decide again.
    Settle(LedgerEntry),
    /// The request's deadline passed before the charge started: nothing done.
    TooLate,
    /// Write this PROCESSING entry, then ask the acquirer.
    Start(LedgerEntry),
}

/// Decides a charge request against the order's entry (`None`: never charged).
pub fn charge_step(
    entry: Option<&LedgerEntry>,
    request: &ChargeRequest,
    now_ms: u64,
    config: &LedgerConfig,
) -> ChargeStep {
    if let Some(entry) = entry {
        match &entry.state {
            LedgerState::Succeeded { .. } => return entry.state.outcome().map_or(ChargeStep::Busy, ChargeStep::Answer),
            LedgerState::Processing if entry.needs_settling(now_ms) => return ChargeStep::Settle(entry.clone()),
            LedgerState::Processing => return ChargeStep::Busy,
            LedgerState::Declined { .. } if entry.idempotency_key == request.idempotency_key => {
                return entry.state.outcome().map_or(ChargeStep::Busy, ChargeStep::Answer);
            }
            // A new attempt after a decline: charge anew.
            LedgerState::Declined { .. } => {}
        }
    }
    if now_ms > request.deadline_ms {
        return ChargeStep::TooLate;
    }
    ChargeStep::Start(LedgerEntry {
        amount: request.amount,
        idempotency_key: request.idempotency_key.clone(),
        state: LedgerState::Processing,
        processing_until_ms: now_ms.saturating_add(config.charge_lease_ms),
        refunds: Vec::new(),
    })
}

/// Sets the state of a PROCESSING entry of attempt `key`; any other entry is left as it is (another
/// question settled it first, with the same acquirer record). Returns the entry to write, if any.
pub fn settle_step(entry: &LedgerEntry, key: &str, state: LedgerState) -> Option<LedgerEntry> {
    (entry.state == LedgerState::Processing && entry.idempotency_key == key).then(|| LedgerEntry {
        state,
        processing_until_ms: 0,
        ..entry.clone()
    })
}

/// What a refund request does to the order's entry (`None`: never charged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundStep {
    Answer(RefundOutcome),
    /// Write this entry, then answer.
    Record(LedgerEntry, RefundOutcome),
}

pub fn refund_step(entry: Option<&LedgerEntry>, amount: Money, refund_key: &str) -> PortResult<RefundStep> {
    let not_charged = RefundStep::Answer(RefundOutcome::Refused { reason: RefundRefusal::NotCharged });
    let Some(entry) = entry else { return Ok(not_charged) };
    if !matches!(entry.state, LedgerState::Succeeded { .. }) {
        return Ok(not_charged);
    }
    let refunded = entry.refunded().ok_or_else(|| PortError::corrupt("payments", "refund total overflows"))?;
    if entry.refunds.iter().any(|(key, _)| key == refund_key) {
        return Ok(RefundStep::Answer(RefundOutcome::Refunded { total: refunded }));
    }
    match refunded.plus(amount) {
        Some(total) if amount.cents() > 0 && total.cents() <= entry.amount.cents() => {
            let mut entry = entry.clone();
            entry.refunds.push((refund_key.to_owned(), amount));
            Ok(RefundStep::Record(entry, RefundOutcome::Refunded { total }))
        }
        _ => Ok(RefundStep::Answer(RefundOutcome::Refused { reason: RefundRefusal::AmountOutOfRange })),
    }
}

/// Where the ledger's entries live. Each method is one atomic read-decide-write of one order's entry
/// (the decisions are the functions above), durable when it returns — except `settle`, which may be
/// lost in a crash: a settled state is the acquirer's durable record copied, so a lost one leaves the
/// entry PROCESSING and the next question after its lease copies the same record again. A PROCESSING
/// entry, though, must be durable before the acquirer is asked, or a capture could outlive the only
/// trace that the order was being charged (and a new attempt would charge it again).
#[async_trait]
pub trait LedgerBook: Send + Sync + std::fmt::Debug {
    async fn entry(&self, order_no: OrderNo) -> PortResult<Option<LedgerEntry>>;
    /// Decides with [`charge_step`] and writes the entry of a `Start`.
    async fn begin_charge(&self, request: &ChargeRequest, now_ms: u64, config: &LedgerConfig)
    -> PortResult<ChargeStep>;
    /// Settles `running` (a PROCESSING entry as read or started: one attempt's PROCESSING entry is
    /// written once, so its key identifies it) with `state` if the order's entry is still it — what
    /// [`settle_step`] decides; returns the entry as it is afterwards. Need not be durable (see above).
    async fn settle(
        &self,
        order_no: OrderNo,
        running: &LedgerEntry,
        state: LedgerState,
    ) -> PortResult<Option<LedgerEntry>>;
    /// Decides with [`refund_step`] and writes the entry of a `Record`.
    async fn refund(&self, order_no: OrderNo, amount: Money, refund_key: &str) -> PortResult<RefundOutcome>;
}

/// The acquirer's record of one attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CaptureRecord {
    pub order_no: OrderNo,
    pub amount: Money,
    /// Records written before voids existed are captures.
    #[serde(default)]
    pub outcome: CaptureOutcome,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CaptureOutcome {
    /// The money was taken.
    #[default]
    Captured,
    /// The card was declined.
    Declined { reason: String },
    /// Settled without an answer: nothing was taken, and nothing will be for this attempt.
    Voided,
}

impl CaptureOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            CaptureOutcome::Captured => "captured",
            CaptureOutcome::Declined { .. } => "declined",
            CaptureOutcome::Voided => "voided",
        }
    }
}

/// Where the (simulated) acquirer keeps its records, by capture id.
#[async_trait]
pub trait CaptureBook: Send + Sync + std::fmt::Debug {
    /// Writes `record` unless the id has one; returns the id's record either way (first writer wins,
    /// atomically, across every process sharing the book). Durable when it returns.
    async fn record_first(&self, capture_id: &str, record: &CaptureRecord) -> PortResult<CaptureRecord>;
    /// Every capture (outcome `Captured`): (order, capture id).
    async fn captured(&self) -> PortResult<Vec<(OrderNo, String)>>;
}

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

/// The bank side, simulated: one record per attempt in a [`CaptureBook`], faults rolled from seeded dice.
#[derive(Debug)]
pub struct SimulatedAcquirer {
    book: Arc<dyn CaptureBook>,
    config: AcquirerConfig,
    dice: Mutex<SmallRng>,
    /// The acquirer's latency passes on it.
    clock: Arc<dyn Clock>,
}

impl SimulatedAcquirer {
    pub fn new(book: Arc<dyn CaptureBook>, config: AcquirerConfig, clock: Arc<dyn Clock>) -> SimulatedAcquirer {
        let dice = Mutex::new(SmallRng::seed_from_u64(config.seed));
        SimulatedAcquirer { book, config, dice, clock }
    }

    fn roll(&self) -> f64 {
        self.dice.lock().map_or(1.0, |mut rng| rng.random::<f64>())
    }

    /// Scoped to the order: a key reused for another order is another attempt, never "already done"
    /// (which would report a success for money never taken).
    pub fn capture_id(order_no: OrderNo, key: &str) -> String {
        format!("cap-{order_no}-{key}")
    }

    /// The definite state a record gives its attempt.
    fn state_of(capture_id: String, record: &CaptureRecord) -> LedgerState {
        match &record.outcome {
            CaptureOutcome::Captured => LedgerState::Succeeded { payment_id: capture_id },
            CaptureOutcome::Declined { reason } => LedgerState::Declined { reason: reason.clone() },
            CaptureOutcome::Voided => LedgerState::Declined { reason: NO_ANSWER_REASON.to_owned() },
        }
    }

    /// Takes `amount` for attempt `key` of the order, at most once: an attempt that has a record already
    /// gets that record's answer (a capture after a void is refused). `None`: no answer reached the caller
    /// (the record, or its absence, says what really happened).
    pub async fn capture(&self, order_no: OrderNo, key: &str, amount: Money) -> PortResult<Option<LedgerState>> {
        if self.config.latency_ms > 0 {
            self.clock.sleep_ms(self.config.latency_ms).await;
        }
        let roll = self.roll();
        let config = &self.config;
        let outcome = if roll < config.decline_rate {
            CaptureOutcome::Declined { reason: "insufficient_funds".to_owned() }
        } else if roll < config.decline_rate + config.timeout_rate {
            return Ok(None);
        } else {
            CaptureOutcome::Captured
        };
        let capture_id = Self::capture_id(order_no, key);
        let record = self.book.record_first(&capture_id, &CaptureRecord { order_no, amount, outcome }).await?;
        let lost = roll < config.decline_rate + config.timeout_rate + config.lost_answer_rate;
        if lost && record.outcome == CaptureOutcome::Captured {
            return Ok(None);
        }
        Ok(Some(Self::state_of(capture_id, &record)))
    }

    /// The definite state of attempt `key`: its record, or a void written now (so no capture can follow).
    pub async fn settle(&self, order_no: OrderNo, key: &str, amount: Money) -> PortResult<LedgerState> {
        let capture_id = Self::capture_id(order_no, key);
        let void = CaptureRecord { order_no, amount, outcome: CaptureOutcome::Voided };
        let record = self.book.record_first(&capture_id, &void).await?;
        Ok(Self::state_of(capture_id, &record))
    }

    pub async fn captured(&self) -> PortResult<Vec<(OrderNo, String)>> {
        self.book.captured().await
    }
}

/// The payment service's ledger in front of the acquirer: the [`Payments`] port that `orderly payment`
/// serves (and the standalone profile calls in process).
#[derive(Debug)]
pub struct PaymentLedger {
    book: Arc<dyn LedgerBook>,
    acquirer: SimulatedAcquirer,
    clock: Arc<dyn Clock>,
    config: LedgerConfig,
}

impl PaymentLedger {
    pub fn new(
        book: Arc<dyn LedgerBook>,
        acquirer: SimulatedAcquirer,
        clock: Arc<dyn Clock>,
        config: LedgerConfig,
    ) -> PaymentLedger {
        PaymentLedger { book, acquirer, clock, config }
    }

    /// Settles an entry whose lease ran out from the acquirer's record; returns the entry afterwards.
    async fn settle(&self, order_no: OrderNo, entry: &LedgerEntry) -> PortResult<Option<LedgerEntry>> {
        let state = self.acquirer.settle(order_no, &entry.idempotency_key, entry.amount).await?;
        self.book.settle(order_no, entry, state).await
    }

    /// The order's entry, settled first if its lease ran out.
    async fn current(&self, order_no: OrderNo) -> PortResult<Option<LedgerEntry>> {
        match self.book.entry(order_no).await? {
            Some(entry) if entry.needs_settling(self.clock.now_ms()) => self.settle(order_no, &entry).await,
            entry => Ok(entry),
        }
    }
}

#[async_trait]
impl Payments for PaymentLedger {
    async fn charge(&self, request: ChargeRequest) -> PortResult<ChargeOutcome> {
        let order_no = request.order_no;
        // At most: settle an expired attempt, then decide again (a third round means a race with another
        // settler, which is an unknown outcome for this caller).
        for _ in 0..3 {
            match self.book.begin_charge(&request, self.clock.now_ms(), &self.config).await? {
                ChargeStep::Answer(outcome) => return Ok(outcome),
                ChargeStep::Busy => {
                    return Err(PortError::unavailable("payments", "a charge for this order is in progress"));
                }
                ChargeStep::TooLate => {
                    return Err(PortError::unavailable("payments", "charge deadline passed; not started"));
                }
                ChargeStep::Settle(entry) => {
                    self.settle(order_no, &entry).await?;
                }
                ChargeStep::Start(started) => {
                    let key = &request.idempotency_key;
                    // Decided in time, but the entry may have become durable only later (a store failing
                    // over held the write): past the deadline, the caller may have asked, found no entry and
                    // concluded that nothing was charged. The attempt is voided, never captured.
                    if self.clock.now_ms() > request.deadline_ms {
                        let state = self.acquirer.settle(order_no, key, request.amount).await?;
                        self.book.settle(order_no, &started, state).await?;
                        return Err(PortError::unavailable(
                            "payments",
                            "charge deadline passed while starting; voided",
                        ));
                    }
                    let Some(state) = self.acquirer.capture(order_no, key, request.amount).await? else {
                        return Err(PortError::unavailable("payments", "the acquirer did not answer"));
                    };
                    // If a question settled the attempt meanwhile, it did so from the same record.
                    self.book.settle(order_no, &started, state.clone()).await?;
                    return state
                        .outcome()
                        .ok_or_else(|| PortError::corrupt("payments", "settled state is not definite"));
                }
            }
        }
        Err(PortError::unavailable("payments", "the order's payment is being settled"))
    }

    async fn query(&self, order_no: OrderNo) -> PortResult<PaymentStatus> {
        Ok(self.current(order_no).await?.map_or(PaymentStatus::NotFound, |entry| entry.status()))
    }

    async fn refund(&self, order_no: OrderNo, amount: Money, refund_key: &str) -> PortResult<RefundOutcome> {
        self.current(order_no).await?;
        self.book.refund(order_no, amount, refund_key).await
    }

    async fn succeeded(&self) -> PortResult<Vec<(OrderNo, String)>> {
        self.acquirer.captured().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderly_domain::{SnowflakeId, Uid};

    fn request(key: &str, deadline_ms: u64) -> ChargeRequest {
        ChargeRequest {
            order_no: OrderNo::new(SnowflakeId(1), Uid(1)),
            amount: Money::from_cents(500),
            idempotency_key: key.to_owned(),
            deadline_ms,
            trace: None,
        }
    }

    fn entry(key: &str, state: LedgerState, until_ms: u64) -> LedgerEntry {
        LedgerEntry {
            amount: Money::from_cents(500),
            idempotency_key: key.to_owned(),
            state,
            processing_until_ms: until_ms,
            refunds: Vec::new(),
        }
    }

    #[test]
    fn a_charge_starts_once_and_a_paid_order_is_never_charged_again() {
        let config = LedgerConfig { charge_lease_ms: 100 };
        let ChargeStep::Start(started) = charge_step(None, &request("a", 50), 10, &config) else { panic!() };
        assert_eq!((started.state.clone(), started.processing_until_ms), (LedgerState::Processing, 110));
        assert_eq!(charge_step(None, &request("a", 50), 51, &config), ChargeStep::TooLate);
        assert_eq!(charge_step(Some(&started), &request("b", 500), 109, &config), ChargeStep::Busy);
        assert_eq!(charge_step(Some(&started), &request("a", 500), 110, &config), ChargeStep::Settle(started.clone()));

        let paid = entry("a", LedgerState::Succeeded { payment_id: "p".into() }, 0);
        let answer = ChargeStep::Answer(ChargeOutcome::Succeeded { payment_id: "p".into() });
        assert_eq!(charge_step(Some(&paid), &request("b", 500), 10, &config), answer);
        let declined = entry("a", LedgerState::Declined { reason: "r".into() }, 0);
        let same = ChargeStep::Answer(ChargeOutcome::Declined { reason: "r".into() });
        assert_eq!(charge_step(Some(&declined), &request("a", 500), 10, &config), same);
        assert!(matches!(charge_step(Some(&declined), &request("b", 500), 10, &config), ChargeStep::Start(_)));
    }

    #[test]
    fn only_the_running_attempt_is_settled() {
        let running = entry("a", LedgerState::Processing, 100);
        let paid = LedgerState::Succeeded { payment_id: "p".into() };
        assert_eq!(settle_step(&running, "a", paid.clone()).map(|e| e.state), Some(paid.clone()));
        assert_eq!(settle_step(&running, "b", paid.clone()), None, "another attempt's answer");
        assert_eq!(settle_step(&entry("a", paid.clone(), 0), "a", LedgerState::Processing), None);
    }

    #[test]
    fn refunds_are_idempotent_and_bounded_by_the_charge() {
        let mut paid = entry("a", LedgerState::Succeeded { payment_id: "p".into() }, 0);
        let refunded = |total| RefundOutcome::Refunded { total: Money::from_cents(total) };
        let out_of_range = RefundStep::Answer(RefundOutcome::Refused { reason: RefundRefusal::AmountOutOfRange });
        let Ok(RefundStep::Record(after, outcome)) = refund_step(Some(&paid), Money::from_cents(200), "r1") else {
            panic!()
        };
        assert_eq!(outcome, refunded(200));
        paid = after;
        assert_eq!(
            refund_step(Some(&paid), Money::from_cents(200), "r1").ok(),
            Some(RefundStep::Answer(refunded(200)))
        );
        assert_eq!(refund_step(Some(&paid), Money::from_cents(301), "r2").ok(), Some(out_of_range.clone()));
        assert_eq!(refund_step(Some(&paid), Money::from_cents(0), "r3").ok(), Some(out_of_range));
        let not_charged = RefundStep::Answer(RefundOutcome::Refused { reason: RefundRefusal::NotCharged });
        assert_eq!(refund_step(None, Money::from_cents(1), "r").ok(), Some(not_charged.clone()));
        let running = entry("a", LedgerState::Processing, 100);
        assert_eq!(refund_step(Some(&running), Money::from_cents(1), "r").ok(), Some(not_charged));
    }
}
