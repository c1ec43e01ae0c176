//! The load generator: closed loop (N connections, each sends its next request when the last one is
//! answered) or fixed rate (requests started on a schedule, latency measured from the *scheduled* start,
//! so a slow server cannot hide its queueing — no coordinated omission).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::orders::{Target, lock};
use crate::workload::{FollowUp, Workload};

/// What one phase sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `GET /healthz`: the same server's trivial endpoint, the HTTP ceiling.
    Healthz,
    /// `POST /api/orders` with a cart of the workload.
    Order,
    /// `POST /api/baseline/orders` (the naive design: one synchronous store transaction per cart) with a
    /// cart of a workload of its own. Its orders are created when answered: not followed up or verified.
    NaiveOrder,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Mode {
    Closed { connections: usize },
    Rate { per_second: u64, in_flight_max: usize },
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseSpec {
    pub name: String,
    pub kind: Kind,
    #[serde(flatten)]
    pub mode: Mode,
    pub duration: Duration,
    /// Stop after this many requests, if sooner than `duration`.
    pub requests_max: Option<u64>,
}

/// Outcome class of one answer; `code` is the API's stable error code.
fn outcome_of(status: u16, body: &Value) -> String {
    if status == 200 {
        return "ok".to_owned();
    }
    match body.get("code").and_then(Value::as_str) {
        Some(code) => code.to_owned(),
        None => format!("http_{status}"),
    }
}

/// No answer reached the buyer: the cart may or may not have been accepted.
fn is_unanswered(outcome: &str) -> bool {
    matches!(outcome, "client_timeout" | "transport_error") || outcome.ends_with("_unreadable")
}

fn is_shed(outcome: &str) -> bool {
    matches!(outcome, "rate_limited" | "overloaded" | "unavailable")
}

/// One second of a phase.
#[derive(Debug)]
pub struct Second {
    pub accepted: u64,
    pub sold_out: u64,
    pub shed: u64,
    pub other: u64,
    pub latency_us: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits; auto-resize never needed within the bounds.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|e| unreachable!("constant bounds: {e}"))
}

impl Second {
    fn new() -> Second {
        Second {
            accepted: 0,
            sold_out: 0,
            shed: 0,
            other: 0,
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 2)
                .unwrap_or_else(|e| unreachable!("constant bounds: {e}")),
        }
    }
}

/// An accepted order: who owns it, and what its buyer will do next.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub order_no: String,
    pub uid: u64,
    pub follow_up: Option<FollowUp>,
    pub pay_at_once: bool,
    /// When the cart was sent: the server accepted it after this (monotonic, the bench's clock).
    pub sent: Instant,
    pub at: Instant,
}

/// One look at an API's concurrency limit during a phase (`GET /api/admin/limits`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LimitSample {
    /// Seconds since the phase started.
    pub at_s: f64,
    /// Which API (its index among the bench's URLs).
    pub api: usize,
    pub limit: u64,
    pub in_flight: u64,
}

/// Everything one phase measured.
#[derive(Debug)]
pub struct Recorder {
    pub seconds: Vec<Second>,
    /// Latency of accepted orders (or of every healthz answer).
    pub accept_us: Histogram<u64>,
    /// Latency of sold-out answers (a flash sale answers most buyers this way: it must be fast).
    pub sold_out_us: Histogram<u64>,
    /// Latency of every answer.
    pub all_us: Histogram<u64>,
    pub outcomes: BTreeMap<String, u64>,
    pub accepted: Vec<Accepted>,
    /// Buyers who got an answer other than 200 for a cart (sold out, shed, unavailable, refused): none
    /// of those carts may leave an order behind.
    pub refused_uids: std::collections::BTreeSet<u64>,
    /// Buyers with a cart whose answer never arrived (a timeout, a dropped connection): its orders may
    /// exist, so their orders are not judged.
    pub unanswered_uids: std::collections::BTreeSet<u64>,
    /// Fixed rate only: requests the schedule called for but the client had no free slot for.
    pub client_dropped: u64,
    pub elapsed: Duration,
    /// CPU milliseconds each process group of the run spent during the phase ([`crate::cpu`]).
    pub cpu_ms: BTreeMap<String, f64>,
    /// The machine's cores busy during the phase ([`crate::cpu::cores_busy`]).
    pub cores_busy: Option<crate::cpu::CoresBusy>,
    /// Calls each engine served during the phase (`--engine-calls`), by counter.
    pub engine_calls: BTreeMap<String, u64>,
    /// Where the APIs' carts waited during the phase ([`crate::waits`]).
    pub entry_waits: crate::waits::Waits,
    /// The APIs' concurrency limits, looked at every 250 ms.
    pub limits: Vec<LimitSample>,
    /// When each outcome was first answered by each API (its index).
    pub first_answered: BTreeMap<(String, usize), Instant>,
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder {
            seconds: Vec::new(),
            accept_us: histogram(),
            sold_out_us: histogram(),
            all_us: histogram(),
            outcomes: BTreeMap::new(),
            accepted: Vec::new(),
            refused_uids: Default::default(),
            unanswered_uids: Default::default(),
            client_dropped: 0,
            elapsed: Duration::ZERO,
            cpu_ms: BTreeMap::new(),
            cores_busy: None,
            engine_calls: BTreeMap::new(),
            entry_waits: crate::waits::Waits::new(),
            limits: Vec::new(),
            first_answered: BTreeMap::new(),
        }
    }

    fn record(&mut self, at: Duration, latency: Duration, outcome: &str) {
        let second = at.as_secs() as usize;
        while self.seconds.len() <= second {
            self.seconds.push(Second::new());
        }
        let latency_us = (latency.as_micros() as u64).clamp(1, 600_000_000);
        let bucket = &mut self.seconds[second];
        match outcome {
            "ok" => {
                bucket.accepted += 1;
                bucket.latency_us.saturating_record(latency_us);
                self.accept_us.saturating_record(latency_us);
            }
            "sold_out" => {
                bucket.sold_out += 1;
                self.sold_out_us.saturating_record(latency_us);
            }
            shed if is_shed(shed) => bucket.shed += 1,
            _ => bucket.other += 1,
        }
        self.all_us.saturating_record(latency_us);
        *self.outcomes.entry(outcome.to_owned()).or_insert(0) += 1;
    }

    pub fn answered(&self) -> u64 {
        self.outcomes.values().sum()
    }
}

/// Live counters for the progress bar.
#[derive(Debug, Default)]
pub struct Live {
    pub answered: AtomicU64,
    pub accepted: AtomicU64,
}

struct Shared {
    target: Target,
    workload: Arc<Workload>,
    kind: Kind,
    start: Instant,
    recorder: Mutex<Recorder>,
    live: Arc<Live>,
    /// Requests started so far (the `requests_max` budget).
    started: AtomicU64,
    requests_max: u64,
    follow_ups: FollowUps,
}

impl Shared {
    /// A buyer's cart, posted to `path` of the next server; which server it was.
    async fn post_cart(&self, path: &str, uid: u64, body: &Value) -> (usize, reqwest::Result<reqwest::Response>) {
        let (api, base) = self.target.next_base();
        let url = format!("{base}{path}");
        (api, self.target.http.post(url).bearer_auth(self.target.buyer_token(uid)).json(body).send().await)
    }

    /// The orders an accepted cart's answer numbers, with what their buyer will do next (drawn once per
    /// cart).
    fn accepted(
        &self,
        rng: &mut SmallRng,
        answer: &Value,
        uid: u64,
        pay_at_once: bool,
        sent: Instant,
    ) -> Vec<Accepted> {
        let order_nos: Vec<String> = answer["data"]["order_no"]
            .as_array()
            .map(|nos| nos.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let follow_up = (!pay_at_once).then(|| self.workload.follow_up(rng));
        let at = Instant::now();
        order_nos.into_iter().map(|order_no| Accepted { order_no, uid, follow_up, pay_at_once, sent, at }).collect()
    }

    /// Queues the buyers' pays and cancels of these orders.
    fn follow_up(&self, accepted: &[Accepted]) {
        for order in accepted.iter().filter(|a| a.follow_up.is_some_and(|f| f != FollowUp::Abandon)) {
            self.follow_ups.send(order.clone());
        }
    }

    /// Sends one request and records it against `scheduled` (its intended start).
    async fn one(&self, rng: &mut SmallRng, scheduled: Instant) {
        let mut buyer = None;
        let (api, outcome, accepted) = match self.kind {
            Kind::Healthz => {
                let (api, base) = self.target.next_base();
                let answer = self.target.http.get(format!("{base}/healthz")).send().await;
                (api, classify(answer).await.0, None)
            }
            Kind::NaiveOrder => {
                let (uid, body, pay_at_once) = self.workload.cart(rng);
                let sent = Instant::now();
                let (api, answer) = self.post_cart("/api/baseline/orders", uid, &body).await;
                let (outcome, body) = classify(answer).await;
                // Its buyers pay and cancel as the scenario's do, so both designs are measured doing the
                // same work per cart; the naive design's orders are not judged by the checks.
                if outcome == "ok" {
                    self.follow_up(&self.accepted(rng, &body, uid, pay_at_once, sent));
                }
                (api, outcome, None)
            }
            Kind::Order => {
                let (uid, body, pay_at_once) = self.workload.cart(rng);
                buyer = Some(uid);
                let sent = Instant::now();
                let (api, answer) = self.post_cart("/api/orders", uid, &body).await;
                let (outcome, body) = classify(answer).await;
                let accepted = (outcome == "ok").then(|| self.accepted(rng, &body, uid, pay_at_once, sent));
                if let Some(accepted) = &accepted {
                    self.follow_up(accepted);
                }
                (api, outcome, accepted)
            }
        };
        if outcome == "transport_error" {
            // The server is down (restarting under chaos): do not spin on refused connections.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let now = Instant::now();
        let at = scheduled.saturating_duration_since(self.start);
        let latency = now.saturating_duration_since(scheduled);
        self.live.answered.fetch_add(1, Ordering::Relaxed);
        if outcome == "ok" {
            self.live.accepted.fetch_add(1, Ordering::Relaxed);
        }
        let mut recorder = lock(&self.recorder);
        recorder.record(at, latency, &outcome);
        let first = recorder.first_answered.entry((outcome.clone(), api)).or_insert(now);
        *first = (*first).min(now);
        if let Some(uid) = buyer
            && outcome != "ok"
        {
            if is_unanswered(&outcome) {
                recorder.unanswered_uids.insert(uid);
            } else {
                recorder.refused_uids.insert(uid);
            }
        }
        if let Some(accepted) = accepted {
            recorder.accepted.extend(accepted);
        }
    }

    fn budget_left(&self) -> bool {
        self.started.fetch_add(1, Ordering::Relaxed) < self.requests_max
    }
}

/// The outcome class and the JSON body (Null when there was none).
async fn classify(answer: reqwest::Result<reqwest::Response>) -> (String, Value) {
    match answer {
        Err(error) if error.is_timeout() => ("client_timeout".to_owned(), Value::Null),
        Err(_) => ("transport_error".to_owned(), Value::Null),
        Ok(response) => {
            let status = response.status().as_u16();
            match response.json::<Value>().await {
                Ok(body) => (outcome_of(status, &body), body),
                Err(_) => (format!("http_{status}_unreadable"), Value::Null),
            }
        }
    }
}

/// Runs one phase to its end and returns what it measured.
pub async fn run_phase(
    spec: &PhaseSpec,
    target: &Target,
    workload: &Arc<Workload>,
    seed: u64,
    live: Arc<Live>,
    follow_ups: FollowUps,
) -> Recorder {
    let start = Instant::now();
    let shared = Arc::new(Shared {
        target: target.clone(),
        workload: Arc::clone(workload),
        kind: spec.kind,
        start,
        recorder: Mutex::new(Recorder::new()),
        live,
        started: AtomicU64::new(0),
        requests_max: spec.requests_max.unwrap_or(u64::MAX),
        follow_ups,
    });
    let deadline = start + spec.duration;
    match spec.mode {
        Mode::Closed { connections } => {
            let mut tasks = Vec::with_capacity(connections);
            for connection in 0..connections {
                let shared = Arc::clone(&shared);
                tasks.push(tokio::spawn(async move {
                    let mut rng =
                        SmallRng::seed_from_u64(seed ^ (connection as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    while Instant::now() < deadline && shared.budget_left() {
                        // A new cart only while the buyers' follow-ups keep up: the server serves the
                        // scenario's mix of carts and follow-ups, not more carts than it could follow up.
                        shared.follow_ups.kept_up().await;
                        if Instant::now() >= deadline {
                            break;
                        }
                        shared.one(&mut rng, Instant::now()).await;
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        }
        Mode::Rate { per_second, in_flight_max } => {
            let slots = Arc::new(Semaphore::new(in_flight_max));
            let mut rng = SmallRng::seed_from_u64(seed);
            let interval = Duration::from_secs_f64(1.0 / per_second.max(1) as f64);
            let mut sent: u64 = 0;
            let mut tasks = tokio::task::JoinSet::new();
            let mut ticker = tokio::time::interval(Duration::from_millis(1));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            'schedule: while Instant::now() < deadline {
                ticker.tick().await;
                // Start every request whose scheduled time has come.
                let due = (start.elapsed().as_secs_f64() * per_second as f64) as u64;
                while sent < due {
                    let scheduled = start + interval.mul_f64(sent as f64);
                    sent += 1;
                    if scheduled >= deadline || !shared.budget_left() {
                        break 'schedule;
                    }
                    let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                        lock(&shared.recorder).client_dropped += 1;
                        continue;
                    };
                    let shared = Arc::clone(&shared);
                    let mut task_rng = SmallRng::seed_from_u64(rand::Rng::random(&mut rng));
                    tasks.spawn(async move {
                        shared.one(&mut task_rng, scheduled).await;
                        drop(permit);
                    });
                }
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let mut recorder = std::mem::replace(&mut *lock(&shared.recorder), Recorder::new());
    recorder.elapsed = start.elapsed();
    recorder
}

/// How long a buyer takes to pay or cancel after the order was accepted.
const FOLLOW_UP_DELAY: Duration = Duration::from_millis(500);

/// Buyers' later actions on accepted orders, sent during the load ([`follow_up_pool`]): pay or cancel
/// [`FOLLOW_UP_DELAY`] after acceptance, asking again while the order is still being created. Outcomes
/// are counted by `"action:outcome"`.
#[derive(Debug, Clone)]
pub struct FollowUps {
    sender: tokio::sync::mpsc::UnboundedSender<Accepted>,
    pending: Arc<Pending>,
}

/// What the follow-ups still have to do.
#[derive(Debug, Default)]
struct Pending {
    /// Queued and not yet answered.
    queued: AtomicU64,
    /// Due and not yet sent (waiting for a connection), and the news of none.
    overdue: AtomicU64,
    caught_up: tokio::sync::Notify,
}

impl Pending {
    /// A follow-up is due and waits for a connection.
    fn came_due(&self) {
        self.overdue.fetch_add(1, Ordering::SeqCst);
    }

    /// A follow-up that was due got its connection; the last one tells the waiting carts.
    fn got_connection(&self) {
        if self.overdue.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.caught_up.notify_waiters();
        }
    }

    /// A queued follow-up has its answer (or will never be sent).
    fn answered(&self) {
        self.queued.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FollowUps {
    fn send(&self, order: Accepted) {
        self.pending.queued.fetch_add(1, Ordering::SeqCst);
        // The pool outlives every phase; a closed pool only means the bench is ending.
        if self.sender.send(order).is_err() {
            self.pending.answered();
        }
    }

    /// Returns once no follow-up is overdue (due and waiting for one of the pool's connections).
    async fn kept_up(&self) {
        loop {
            let caught_up = self.pending.caught_up.notified();
            tokio::pin!(caught_up);
            caught_up.as_mut().enable();
            if self.pending.overdue.load(Ordering::SeqCst) == 0 {
                return;
            }
            caught_up.await;
        }
    }

    /// Waits until every follow-up queued so far has its answer, or `timeout`; whether they all did. A
    /// phase's follow-ups that fall behind its buyers are sent before the next phase starts, not into it.
    pub async fn sent(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.pending.queued.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }
}

/// The running follow-ups; [`FollowUpPool::finish`] waits for every queued action.
#[derive(Debug)]
pub struct FollowUpPool {
    dispatcher: tokio::task::JoinHandle<()>,
    seen: Arc<Seen>,
}

/// What the follow-ups saw, as they go.
#[derive(Debug)]
struct Seen {
    counts: Mutex<BTreeMap<String, u64>>,
    told_final: Mutex<BTreeMap<String, Duration>>,
    late_us: Mutex<Histogram<u64>>,
}

impl Default for Seen {
    fn default() -> Seen {
        Seen { counts: Mutex::default(), told_final: Mutex::default(), late_us: Mutex::new(histogram()) }
    }
}

/// What the buyers' follow-ups saw: outcomes counted by `"action:outcome"`, and for each order a buyer
/// was told was already final, how long after its cart was sent (the bench's monotonic clock) — a buyer
/// who acts on a live order sooner than the unpaid timeout must not find it closed.
#[derive(Debug, Default)]
pub struct FollowUpsSeen {
    pub counts: BTreeMap<String, u64>,
    pub told_final: BTreeMap<String, Duration>,
    /// How late the follow-ups were sent, after their [`FOLLOW_UP_DELAY`] (waiting for one of the pool's
    /// connections).
    pub late: crate::report::Latency,
}

/// The buyers' follow-ups, at most `connections` at once. A closed phase sends a new cart only while none
/// is overdue ([`FollowUps::kept_up`]), so its capacity is that of the scenario's mix: carts with their
/// follow-ups. (Sent on time beside a closed loop of carts they overload the server, whose limit then sheds
/// carts and follow-ups alike; left behind, they fall seconds late, past the unpaid timeout, and into
/// the next phase.) How late they were sent is reported, and a phase's are all answered before the next
/// phase starts ([`FollowUps::sent`]).
pub fn follow_up_pool(target: &Target, connections: usize) -> (FollowUps, FollowUpPool) {
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Accepted>();
    let follow_ups = FollowUps { sender, pending: Arc::default() };
    let seen = Arc::new(Seen::default());
    let in_flight = Arc::new(Semaphore::new(connections.max(1)));
    let (target, counted, pending) = (target.clone(), Arc::clone(&seen), Arc::clone(&follow_ups.pending));
    let dispatcher = tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        while let Some(order) = receiver.recv().await {
            let action = match order.follow_up {
                Some(FollowUp::PayLater) => "pay",
                Some(FollowUp::Cancel) => "cancel",
                Some(FollowUp::Abandon) | None => {
                    pending.answered();
                    continue;
                }
            };
            let (target, seen, in_flight) = (target.clone(), Arc::clone(&counted), Arc::clone(&in_flight));
            let pending = Arc::clone(&pending);
            tasks.spawn(async move {
                let due = order.at + FOLLOW_UP_DELAY;
                tokio::time::sleep_until(due.into()).await;
                // Taken in the order they came due (tokio's semaphore is fair).
                pending.came_due();
                let permit = in_flight.acquire().await;
                pending.got_connection();
                let Ok(_permit) = permit else {
                    pending.answered();
                    return;
                };
                let late = Instant::now().saturating_duration_since(due).as_micros() as u64;
                lock(&seen.late_us).saturating_record(late.max(1));
                let mut outcome = String::new();
                for _ in 0..50 {
                    let answer = target
                        .http
                        .post(format!("{}/api/orders/{}/{action}", target.base(), order.order_no))
                        .bearer_auth(target.buyer_token(order.uid))
                        .send()
                        .await;
                    outcome = classify(answer).await.0;
                    if outcome != "order_not_created_yet" {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if outcome == "order_already_final" {
                    lock(&seen.told_final).insert(order.order_no.clone(), order.sent.elapsed());
                }
                *lock(&seen.counts).entry(format!("{action}:{outcome}")).or_insert(0) += 1;
                pending.answered();
            });
            // Finished tasks reaped as they go: the set holds only those still to act.
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    });
    (follow_ups, FollowUpPool { dispatcher, seen })
}

impl FollowUpPool {
    pub async fn finish(self, follow_ups: FollowUps) -> FollowUpsSeen {
        drop(follow_ups);
        let _ = self.dispatcher.await;
        FollowUpsSeen {
            counts: std::mem::take(&mut *lock(&self.seen.counts)),
            told_final: std::mem::take(&mut *lock(&self.seen.told_final)),
            late: crate::report::Latency::of(&lock(&self.seen.late_us)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Follow-ups no pool sends; the receiver keeps the channel open.
    fn follow_ups() -> (FollowUps, tokio::sync::mpsc::UnboundedReceiver<Accepted>) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        (FollowUps { sender, pending: Arc::default() }, receiver)
    }

    #[tokio::test]
    async fn a_closed_phase_sends_no_cart_while_a_follow_up_is_overdue() {
        let (follow_ups, _queue) = follow_ups();
        follow_ups.kept_up().await;
        follow_ups.pending.came_due();
        follow_ups.pending.came_due();
        let waiting = tokio::spawn({
            let follow_ups = follow_ups.clone();
            async move { follow_ups.kept_up().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        follow_ups.pending.got_connection();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "one follow-up is still overdue");
        follow_ups.pending.got_connection();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the cart goes once none is overdue")
            .expect("the waiting task");
    }

    #[tokio::test]
    async fn the_next_phase_waits_for_every_follow_up_to_be_answered() {
        let (follow_ups, mut queue) = follow_ups();
        assert!(follow_ups.sent(Duration::ZERO).await, "nothing queued");
        let accepted = Accepted {
            order_no: "1".into(),
            uid: 1,
            follow_up: Some(FollowUp::PayLater),
            pay_at_once: false,
            sent: Instant::now(),
            at: Instant::now(),
        };
        follow_ups.send(accepted);
        assert!(queue.try_recv().is_ok(), "queued for the pool");
        assert!(!follow_ups.sent(Duration::from_millis(100)).await, "one queued, not answered");
        follow_ups.pending.answered();
        assert!(follow_ups.sent(Duration::from_millis(100)).await);
    }
}
