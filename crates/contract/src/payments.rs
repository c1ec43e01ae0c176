//! The payment ledger contract: [`PaymentLedger`] over an adapter's [`LedgerBook`] and [`CaptureBook`].
//! The rules are written once in `orderly_ledger`; what these cases check is that a pair
//! of books makes each step atomic — racing retries and racing attempts capture once, first writer wins at
//! the acquirer — and durable answers: a retry returns the first result, a lease holds then settles,
//! refunds never exceed the charge. In every case an order has at most one capture (I5).

use std::sync::Arc;

use async_trait::async_trait;
use orderly_app::ports::{
    ChargeOutcome, ChargeRequest, Clock, PaymentStatus, Payments, PortResult, RefundOutcome, RefundRefusal,
};
use orderly_app::time::ManualClock;
use orderly_domain::{Money, OrderNo, SnowflakeId, Uid};
use orderly_ledger::{
    AcquirerConfig, CaptureBook, CaptureOutcome, CaptureRecord, ChargeStep, LedgerBook, LedgerConfig, LedgerEntry,
    LedgerState, PaymentLedger, SimulatedAcquirer,
};

const T0_MS: u64 = 1_800_000_000_000;
const LEASE_MS: u64 = 5_000;

/// The books of one fresh, empty ledger.
pub type Books = (Arc<dyn LedgerBook>, Arc<dyn CaptureBook>);

struct Ledger {
    payments: Arc<PaymentLedger>,
    clock: Arc<ManualClock>,
    books: Books,
}

impl Ledger {
    fn new(books: Books, acquirer: AcquirerConfig) -> Ledger {
        Ledger::with_clock(books, acquirer, Arc::new(ManualClock::new(T0_MS)))
    }

    fn with_clock(books: Books, acquirer: AcquirerConfig, clock: Arc<ManualClock>) -> Ledger {
        let payments = Arc::new(PaymentLedger::new(
            Arc::clone(&books.0),
            SimulatedAcquirer::new(Arc::clone(&books.1), acquirer, Arc::clone(&clock) as Arc<dyn Clock>),
            Arc::clone(&clock) as Arc<dyn Clock>,
            LedgerConfig { charge_lease_ms: LEASE_MS },
        ));
        Ledger { payments, clock, books }
    }

    fn advance_ms(&self, ms: u64) {
        self.clock.advance_ms(ms);
    }

    /// Waits for every racer, moving the clock on by `step_ms` whenever the acquirer waits on it (its
    /// latency) so a charge runs to its end. Bounded.
    async fn join_on_clock<T>(&self, racers: Vec<tokio::task::JoinHandle<T>>, step_ms: u64) -> Vec<T> {
        // Time moves when every racer still running waits on the clock — or, should one wait on something
        // else behind a sleeper, after a long quiet spell. Moving it at every yield let a racer that was
        // merely slow to be scheduled (a loaded machine) see its own lease run out under it.
        let mut quiet = 0;
        for _ in 0..10_000_000 {
            let running = racers.iter().filter(|racer| !racer.is_finished()).count();
            if running == 0 {
                break;
            }
            let sleepers = self.clock.sleepers();
            quiet += 1;
            if sleepers > 0 && (sleepers >= running || quiet >= 1_000) {
                self.clock.advance_ms(step_ms);
                quiet = 0;
            }
            tokio::task::yield_now().await;
        }
        let mut answers = Vec::with_capacity(racers.len());
        for racer in racers {
            answers.push(racer.await.expect("task"));
        }
        answers
    }

    async fn captures_of(&self, n: u64) -> usize {
        self.payments.succeeded().await.expect("captures").iter().filter(|(no, _)| *no == order(n)).count()
    }
}

fn order(n: u64) -> OrderNo {
    OrderNo::new(SnowflakeId(n), Uid(42))
}

fn charge(n: u64, key: &str) -> ChargeRequest {
    ChargeRequest {
        order_no: order(n),
        amount: Money::from_cents(2_999),
        idempotency_key: key.to_owned(),
        deadline_ms: T0_MS + 60_000,
        trace: None,
    }
}

fn faults(decline: f64, timeout: f64, lost: f64) -> AcquirerConfig {
    AcquirerConfig { decline_rate: decline, timeout_rate: timeout, lost_answer_rate: lost, ..AcquirerConfig::default() }
}

pub async fn a_retry_answers_the_first_result_and_a_paid_order_is_never_charged_again(books: Books) {
    let ledger = Ledger::new(books, AcquirerConfig::default());
    let payments = &ledger.payments;
    let first = payments.charge(charge(1, "k1")).await.expect("charge");
    let ChargeOutcome::Succeeded { payment_id } = first.clone() else { panic!("declined: {first:?}") };
    assert_eq!(payments.charge(charge(1, "k1")).await.expect("retry"), first);
    assert_eq!(payments.charge(charge(1, "k2")).await.expect("new key"), first, "never a second charge");
    assert_eq!(payments.query(order(1)).await.expect("query"), PaymentStatus::Succeeded { payment_id });
    assert_eq!(payments.query(order(2)).await.expect("query"), PaymentStatus::NotFound);
    assert_eq!(ledger.captures_of(1).await, 1);
}

pub async fn racing_retries_of_one_attempt_capture_once(books: Books) {
    let ledger = Ledger::new(books, AcquirerConfig { latency_ms: 30, ..AcquirerConfig::default() });
    let racers: Vec<_> = (0..16)
        .map(|_| {
            let payments = Arc::clone(&ledger.payments);
            tokio::spawn(async move { payments.charge(charge(7, "same")).await })
        })
        .collect();
    let mut succeeded = 0;
    for answer in ledger.join_on_clock(racers, 30).await {
        match answer {
            Ok(ChargeOutcome::Succeeded { .. }) => succeeded += 1,
            Err(error) => assert!(error.is_retryable(), "an unknown outcome, never a failure: {error}"),
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(succeeded >= 1, "the racer that started the charge got its answer");
    assert!(matches!(ledger.payments.query(order(7)).await.expect("query"), PaymentStatus::Succeeded { .. }));
    assert_eq!(ledger.captures_of(7).await, 1, "charged exactly once");
}

pub async fn racing_attempts_with_different_keys_capture_once(books: Books) {
    let ledger = Ledger::new(books, AcquirerConfig { latency_ms: 10, ..AcquirerConfig::default() });
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let payments = Arc::clone(&ledger.payments);
            tokio::spawn(async move { payments.charge(charge(8, &format!("attempt-{i}"))).await })
        })
        .collect();
    let answers: Vec<ChargeOutcome> = ledger.join_on_clock(racers, 10).await.into_iter().flatten().collect();
    assert!(!answers.is_empty());
    assert!(answers.windows(2).all(|pair| pair[0] == pair[1]), "one success, told to all: {answers:?}");
    assert_eq!(ledger.captures_of(8).await, 1);
}

pub async fn a_decline_is_definite_and_captures_nothing(books: Books) {
    let ledger = Ledger::new(books, faults(1.0, 0.0, 0.0));
    let declined = ledger.payments.charge(charge(3, "k1")).await.expect("charge");
    assert!(matches!(declined, ChargeOutcome::Declined { .. }), "{declined:?}");
    assert_eq!(ledger.payments.charge(charge(3, "k1")).await.expect("retry"), declined, "the same answer");
    assert!(matches!(ledger.payments.query(order(3)).await.expect("query"), PaymentStatus::Declined { .. }));
    // A new attempt after a decline is charged anew (and declined again by this card).
    assert!(matches!(ledger.payments.charge(charge(3, "k2")).await.expect("charge"), ChargeOutcome::Declined { .. }));
    assert_eq!(ledger.captures_of(3).await, 0);
}

pub async fn a_lost_answer_stays_processing_under_its_lease_then_settles_as_captured(books: Books) {
    let ledger = Ledger::new(books, faults(0.0, 0.0, 1.0));
    let error = ledger.payments.charge(charge(4, "k1")).await.expect_err("no answer");
    assert!(error.is_retryable(), "unknown, never a decline: {error}");
    assert_eq!(ledger.payments.query(order(4)).await.expect("query"), PaymentStatus::Processing);
    assert!(ledger.payments.charge(charge(4, "k2")).await.expect_err("busy").is_retryable(), "another attempt waits");

    ledger.advance_ms(LEASE_MS);
    let status = ledger.payments.query(order(4)).await.expect("query");
    let PaymentStatus::Succeeded { payment_id } = status else { panic!("not settled from the capture: {status:?}") };
    let again = ledger.payments.charge(charge(4, "k2")).await.expect("charge");
    assert_eq!(again, ChargeOutcome::Succeeded { payment_id });
    assert_eq!(ledger.captures_of(4).await, 1);
}

pub async fn a_timeout_settles_as_declined_and_voids_a_late_capture(books: Books) {
    let ledger = Ledger::new(books, faults(0.0, 1.0, 0.0));
    assert!(ledger.payments.charge(charge(5, "k1")).await.expect_err("no answer").is_retryable());
    ledger.advance_ms(LEASE_MS);
    assert!(matches!(ledger.payments.query(order(5)).await.expect("query"), PaymentStatus::Declined { .. }));

    // The acquirer gets the attempt late (a slow instance): the void refuses it.
    let late = SimulatedAcquirer::new(Arc::clone(&ledger.books.1), AcquirerConfig::default(), ledger.clock.clone());
    let answer = late.capture(order(5), "k1", Money::from_cents(2_999)).await.expect("acquirer");
    assert!(matches!(answer, Some(LedgerState::Declined { .. })), "{answer:?}");
    assert_eq!(ledger.captures_of(5).await, 0);
    assert!(matches!(ledger.payments.query(order(5)).await.expect("query"), PaymentStatus::Declined { .. }));
}

pub async fn a_charge_past_its_deadline_is_not_started(books: Books) {
    let ledger = Ledger::new(books, AcquirerConfig::default());
    ledger.advance_ms(60_001);
    assert!(ledger.payments.charge(charge(6, "k1")).await.expect_err("too late").is_retryable());
    assert_eq!(ledger.payments.query(order(6)).await.expect("query"), PaymentStatus::NotFound);
    assert_eq!(ledger.captures_of(6).await, 0);
}

/// A charge decided in time whose entry became durable only after the deadline is never captured: the
/// caller's reconciler may have asked meanwhile, found no entry past the deadline, and concluded that
/// nothing was charged (and the order was then closed). The attempt is voided instead. Found by
/// `scripts/failover both`: a PostgreSQL failover held the insert for 10 s, the charge went through after
/// the order closed.
pub async fn a_charge_whose_entry_lands_past_its_deadline_is_voided_not_captured(books: Books) {
    let clock = Arc::new(ManualClock::new(T0_MS));
    let late: Books = (Arc::new(Faulty::LateStart(Arc::clone(&books.0), Arc::clone(&clock))), Arc::clone(&books.1));
    let ledger = Ledger::with_clock(late, AcquirerConfig::default(), clock);
    assert!(ledger.payments.charge(charge(14, "k1")).await.expect_err("too late").is_retryable());
    assert_eq!(ledger.captures_of(14).await, 0, "nothing is captured past the deadline");
    let status = ledger.payments.query(order(14)).await.expect("query");
    assert!(matches!(status, PaymentStatus::Declined { .. }), "a definite no: {status:?}");
}

pub async fn refunds_are_idempotent_per_key_and_never_exceed_the_charge(books: Books) {
    let ledger = Ledger::new(books, AcquirerConfig::default());
    let payments = &ledger.payments;
    assert!(matches!(payments.charge(charge(9, "k")).await.expect("charge"), ChargeOutcome::Succeeded { .. }));
    let refund = |cents: i64, key: &'static str| async move {
        payments.refund(order(9), Money::from_cents(cents), key).await.expect("refund")
    };
    let total = |cents| RefundOutcome::Refunded { total: Money::from_cents(cents) };
    assert_eq!(refund(1_000, "r1").await, total(1_000));
    assert_eq!(refund(1_000, "r1").await, total(1_000), "a retry refunds nothing more");
    assert_eq!(refund(2_000, "r2").await, RefundOutcome::Refused { reason: RefundRefusal::AmountOutOfRange });
    assert_eq!(refund(1_999, "r3").await, total(2_999));
    assert_eq!(refund(1, "r4").await, RefundOutcome::Refused { reason: RefundRefusal::AmountOutOfRange });
    let unpaid = payments.refund(order(10), Money::from_cents(1), "r").await.expect("refund");
    assert_eq!(unpaid, RefundOutcome::Refused { reason: RefundRefusal::NotCharged });
}

pub async fn racing_refunds_never_exceed_the_charge(books: Books) {
    let ledger = Ledger::new(books, AcquirerConfig::default());
    assert!(matches!(ledger.payments.charge(charge(11, "k")).await.expect("charge"), ChargeOutcome::Succeeded { .. }));
    // 2 999 cents; 16 refunds of 500 under different keys: at most 5 fit.
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let payments = Arc::clone(&ledger.payments);
            tokio::spawn(async move { payments.refund(order(11), Money::from_cents(500), &format!("r{i}")).await })
        })
        .collect();
    let mut refunded = 0;
    for racer in racers {
        if let RefundOutcome::Refunded { .. } = racer.await.expect("task").expect("refund") {
            refunded += 1;
        }
    }
    assert_eq!(refunded, 5);
    let last = ledger.payments.refund(order(11), Money::from_cents(499), "last").await.expect("refund");
    assert_eq!(last, RefundOutcome::Refunded { total: Money::from_cents(2_999) });
}

pub async fn the_first_record_of_an_attempt_wins_at_the_acquirer(books: Books) {
    let (_, captures) = books;
    let mut racers = Vec::new();
    for n in 0..20u64 {
        for outcome in [CaptureOutcome::Captured, CaptureOutcome::Voided] {
            let captures = Arc::clone(&captures);
            racers.push(tokio::spawn(async move {
                let record = CaptureRecord { order_no: order(n), amount: Money::from_cents(1), outcome };
                (n, captures.record_first(&format!("cap-{n}"), &record).await.expect("record"))
            }));
        }
    }
    let mut seen: std::collections::HashMap<u64, CaptureOutcome> = std::collections::HashMap::new();
    for racer in racers {
        let (n, record) = racer.await.expect("task");
        let first = seen.entry(n).or_insert_with(|| record.outcome.clone());
        assert_eq!(*first, record.outcome, "both writers of cap-{n} see the one record");
    }
    let captured = captures.captured().await.expect("list");
    let expected = seen.values().filter(|outcome| **outcome == CaptureOutcome::Captured).count();
    assert_eq!(captured.len(), expected, "the list holds the captures and only them");
}

/// The book under test with a fault: its `settle` writes lost (what a crash right after an unsynced
/// settle does), or its charge entries durable only once the clock has passed the request's deadline (a
/// store failing over under the write: the insert waited for the new primary).
#[derive(Debug)]
enum Faulty {
    ForgetsAnswers(Arc<dyn LedgerBook>),
    LateStart(Arc<dyn LedgerBook>, Arc<ManualClock>),
}

impl Faulty {
    fn book(&self) -> &Arc<dyn LedgerBook> {
        match self {
            Faulty::ForgetsAnswers(book) | Faulty::LateStart(book, _) => book,
        }
    }
}

#[async_trait]
impl LedgerBook for Faulty {
    async fn entry(&self, order_no: OrderNo) -> PortResult<Option<LedgerEntry>> {
        self.book().entry(order_no).await
    }
    async fn begin_charge(
        &self,
        request: &ChargeRequest,
        now_ms: u64,
        config: &LedgerConfig,
    ) -> PortResult<ChargeStep> {
        let step = self.book().begin_charge(request, now_ms, config).await;
        if let Faulty::LateStart(_, clock) = self {
            clock.advance_ms(request.deadline_ms.saturating_sub(now_ms) + 1);
        }
        step
    }
    async fn settle(
        &self,
        order_no: OrderNo,
        running: &LedgerEntry,
        state: LedgerState,
    ) -> PortResult<Option<LedgerEntry>> {
        match self {
            Faulty::ForgetsAnswers(book) => book.entry(order_no).await,
            Faulty::LateStart(book, _) => book.settle(order_no, running, state).await,
        }
    }
    async fn refund(&self, order_no: OrderNo, amount: Money, refund_key: &str) -> PortResult<RefundOutcome> {
        self.book().refund(order_no, amount, refund_key).await
    }
}

/// A settled state need not be durable: lost, the entry stays PROCESSING under its lease, and the next
/// question after it copies the same acquirer record again — the answer the caller got.
pub async fn a_lost_answer_write_is_copied_again_from_the_acquirer(books: Books) {
    let forgetful: Books = (Arc::new(Faulty::ForgetsAnswers(Arc::clone(&books.0))), Arc::clone(&books.1));
    let before_crash = Ledger::new(forgetful, AcquirerConfig::default());
    let paid = before_crash.payments.charge(charge(12, "k1")).await.expect("charge");
    let ChargeOutcome::Succeeded { payment_id } = paid.clone() else { panic!("declined: {paid:?}") };
    let declined = Ledger::new(
        (Arc::new(Faulty::ForgetsAnswers(Arc::clone(&books.0))), Arc::clone(&books.1)),
        faults(1.0, 0.0, 0.0),
    );
    let refused = declined.payments.charge(charge(13, "k1")).await.expect("charge");
    assert!(matches!(refused, ChargeOutcome::Declined { .. }), "{refused:?}");

    // After the crash: the books as they are, the answers never written.
    let after = Ledger::new(books, AcquirerConfig::default());
    assert_eq!(after.payments.query(order(12)).await.expect("query"), PaymentStatus::Processing);
    after.advance_ms(LEASE_MS);
    assert_eq!(after.payments.query(order(12)).await.expect("query"), PaymentStatus::Succeeded { payment_id });
    assert_eq!(after.payments.charge(charge(12, "k2")).await.expect("charge"), paid, "never charged again");
    assert!(matches!(after.payments.query(order(13)).await.expect("query"), PaymentStatus::Declined { .. }));
    assert_eq!(after.payments.charge(charge(13, "k1")).await.expect("retry"), refused, "the same decline");
    assert_eq!((after.captures_of(12).await, after.captures_of(13).await), (1, 0));
}
