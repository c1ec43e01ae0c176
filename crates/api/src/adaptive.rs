//! The entry's concurrency limit (docs/API.md "Limits"): how many buyer requests are served at once. It
//! follows latency (Gradient2: the limit shrinks while recent requests are slower than the long-term
//! latency by more than a tolerance, and grows back while they are not), so under overload a request is
//! shed at once (503 `overloaded`) rather than queued behind others, and the accepted ones keep their
//! latency. It is shared by priority: each kind of request is shed once the requests in flight reach
//! its part of the limit — queries first (70 %), then new orders (85 %); pay and cancel may use the
//! whole — so the slots above a lower kind's part are kept for the kinds above it, and a buyer paying
//! for an accepted order is not crowded out by new carts. Each kind also keeps a small guaranteed part
//! however busy the others are (Netflix's partitions), so none starves.
//!
//! The algorithm is tower-acc's `Gradient2`, fed as Netflix's `WindowedLimit` feeds its own: one sample
//! per window of requests (their mean latency, the most in flight during it), not one per request — a
//! single fast query after a slow order says nothing about queueing. tower-acc's own layer has neither
//! windows nor priorities nor a limit one can read, hence this module around its algorithm.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use orderly_app::config::{AdaptiveConfig, Priorities, RateLimitConfig};
use serde::Serialize;
use tower_acc::{Algorithm, Gradient2};
use utoipa::ToSchema;

/// The kinds of buyer requests, highest priority first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// `POST /api/orders/{no}/pay` and `/cancel`: a buyer finishing what was accepted.
    Changes,
    /// `POST /api/orders`.
    Orders,
    /// Every `GET` of a buyer.
    Queries,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Changes, Priority::Orders, Priority::Queries];

    pub fn name(self) -> &'static str {
        match self {
            Priority::Changes => "changes",
            Priority::Orders => "orders",
            Priority::Queries => "queries",
        }
    }

    /// A buyer request's kind from its method and path.
    pub fn of(method: &axum::http::Method, path: &str) -> Priority {
        if method == axum::http::Method::GET {
            Priority::Queries
        } else if path.ends_with("/pay") || path.ends_with("/cancel") {
            Priority::Changes
        } else {
            Priority::Orders
        }
    }

    /// The part of the limit below which it is admitted.
    fn below(self, priorities: &Priorities) -> f64 {
        match self {
            Priority::Changes => 1.0,
            Priority::Orders => priorities.orders_below,
            Priority::Queries => priorities.queries_below,
        }
    }
}

#[derive(Debug)]
struct State {
    config: AdaptiveConfig,
    /// `in_flight_max`: the ceiling.
    max: usize,
    algorithm: Gradient2,
    in_flight: [usize; 3],
    shed: [u64; 3],
    /// The window being measured: when it started (its first request's end), its requests' summed
    /// latency, their count, the most in flight.
    window_start: Option<Instant>,
    window_ns: u128,
    window_count: usize,
    window_in_flight: usize,
    /// Whether a request was shed during the window: then the limit was what held the load back.
    window_shed: bool,
}

impl State {
    fn limit(&self) -> usize {
        if self.config.enabled { self.algorithm.max_concurrency().clamp(self.floor(), self.max) } else { self.max }
    }

    fn floor(&self) -> usize {
        self.config.min.clamp(1, self.max)
    }

    /// Requests in flight below which `priority` is admitted, at `limit` (at least one).
    fn admitted_below(&self, priority: Priority, limit: usize) -> usize {
        ((limit as f64 * priority.below(&self.config.priorities)).ceil() as usize).max(1)
    }

    /// The slots of its own `priority` is sure of at `limit`, however busy the others are.
    fn guaranteed(&self, limit: usize) -> usize {
        (limit as f64 * self.config.priorities.guaranteed).ceil() as usize
    }
}

/// Gradient2 between `min` and `max`, starting at `initial`. Every bound is clamped here, so that a
/// setting that slipped past its check cannot make the builder panic.
fn gradient2(config: &AdaptiveConfig, max: usize, initial: usize) -> Gradient2 {
    let min = config.min.clamp(1, max);
    Gradient2::builder()
        .initial_limit(initial.clamp(min, max))
        .min_limit(min)
        .max_limit(max)
        .rtt_tolerance(if config.rtt_tolerance.is_finite() { config.rtt_tolerance.max(1.0) } else { 1.0 })
        .smoothing(if config.smoothing > 0.0 && config.smoothing <= 1.0 { config.smoothing } else { 0.2 })
        .long_window(config.long_window.max(1))
        .queue_size(growth_step)
        .build()
}

/// What a window as fast as the long-term latency adds to the limit before smoothing: √limit, not
/// tower-acc's ⌈log10 limit⌉, under which a limit cut by a burst took minutes of load to come back and
/// meanwhile shed requests at half the capacity and less (docs/BENCHMARKS.md, "Latency against load").
/// Under the overload scenario's three times the capacity the limit still fell to its floor (measured
/// there): a window twice as slow as the tolerance allows, or slower, weighs it at half before smoothing
/// (a tenth off after it), which the step of a small limit does not make up.
fn growth_step(limit: usize) -> usize {
    ((limit as f64).sqrt().ceil() as usize).max(1)
}

/// The algorithm after one window of mean latency `mean` with at most `in_flight` requests at once, and
/// `shed` whether any request was shed during it.
///
/// Gradient2 leaves its limit alone after a lightly loaded window (fewer than half the limit in flight:
/// whether that latency is queueing says little), so a limit cut by a moment of slowness — a stall of
/// the store under a burst — stayed cut at any lower load and shed the next stall's requests at a
/// fraction of the capacity (docs/BENCHMARKS.md, "Latency against load"). Such a window is now weighed
/// as if the limit were in use: taken when that does not lower the limit (a window as fast as the
/// long-term latency, within the tolerance, raises it by the algorithm's own step), else the window
/// only updates the latencies, as before. A light window never lowers the limit; a loaded one is
/// Gradient2's as it is. A window that shed a request is not light whatever its count in flight (a kind
/// is shed at its part of the limit, which a setting may put below half): the limit held the load back.
fn next_estimate(algorithm: &Gradient2, mean: Duration, in_flight: usize, shed: bool) -> Gradient2 {
    let limit = algorithm.max_concurrency();
    if !shed && in_flight * 2 < limit {
        let mut weighed = algorithm.clone();
        weighed.update(mean, limit, false, false);
        if weighed.max_concurrency() >= limit {
            return weighed;
        }
    }
    let mut next = algorithm.clone();
    next.update(mean, in_flight, false, false);
    next
}

/// The limit and the slots in use, shared by every buyer route of a process.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    state: Mutex<State>,
}

/// What `GET /api/admin/limits` and `/metrics` show of the limit.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LimitView {
    /// Whether the limit follows latency (else it stays at `max`).
    pub adaptive: bool,
    /// Requests served at once before shedding, now.
    pub limit: usize,
    pub min: usize,
    pub max: usize,
    pub partitions: Vec<PartitionView>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PartitionView {
    pub priority: Priority,
    /// It is admitted while fewer requests than this are in flight, at the current limit.
    pub admitted_below: usize,
    /// Slots of its own it is sure of at the current limit, however busy the others are.
    pub guaranteed: usize,
    pub in_flight: usize,
    /// Its requests shed since the process started.
    pub shed: u64,
}

impl ConcurrencyLimit {
    /// Starts at the ceiling: a process that was never slow sheds nothing it did not shed before.
    pub fn new(config: &RateLimitConfig) -> ConcurrencyLimit {
        let max = config.in_flight_max.max(1);
        ConcurrencyLimit {
            state: Mutex::new(State {
                config: config.adaptive.clone(),
                max,
                algorithm: gradient2(&config.adaptive, max, max),
                in_flight: [0; 3],
                shed: [0; 3],
                window_start: None,
                window_ns: 0,
                window_count: 0,
                window_in_flight: 0,
                window_shed: false,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing here panics while holding it; a poisoned lock still holds consistent counts.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies changed settings: the algorithm starts again from the limit in force (clamped into the
    /// new bounds); the slots in use and the counts stay.
    pub fn reconfigure(&self, config: &RateLimitConfig) {
        let mut state = self.state();
        let max = config.in_flight_max.max(1);
        if state.config == config.adaptive && state.max == max {
            return;
        }
        let current = state.limit();
        state.config = config.adaptive.clone();
        state.max = max;
        state.algorithm = gradient2(&config.adaptive, max, current);
        state.window_start = None;
        state.window_ns = 0;
        state.window_count = 0;
        state.window_in_flight = 0;
        state.window_shed = false;
    }

    /// A slot for a request of `priority`, or `None`: shed it.
    pub fn try_acquire(self: &Arc<Self>, priority: Priority) -> Option<Permit> {
        let mut state = self.state();
        let limit = state.limit();
        let total: usize = state.in_flight.iter().sum();
        let index = priority as usize;
        if total >= state.admitted_below(priority, limit) && state.in_flight[index] >= state.guaranteed(limit) {
            state.shed[index] += 1;
            state.window_shed = true;
            return None;
        }
        state.in_flight[index] += 1;
        let in_flight = total + 1;
        state.window_in_flight = state.window_in_flight.max(in_flight);
        Some(Permit { limit: self.clone(), priority })
    }

    /// One served request's latency (its wait in a rule's queue left out), ended at `now`.
    fn record(&self, latency: Duration, now: Instant) {
        let mut state = self.state();
        let start = *state.window_start.get_or_insert(now);
        state.window_ns += latency.as_nanos();
        state.window_count += 1;
        let long_enough = now.saturating_duration_since(start) >= Duration::from_millis(state.config.window_ms);
        if long_enough && state.window_count >= state.config.window_requests.max(1) {
            let mean =
                Duration::from_nanos(u64::try_from(state.window_ns / state.window_count as u128).unwrap_or(u64::MAX));
            let (in_flight, shed) = (state.window_in_flight, state.window_shed);
            state.algorithm = next_estimate(&state.algorithm, mean, in_flight, shed);
            state.window_start = None;
            state.window_ns = 0;
            state.window_count = 0;
            state.window_in_flight = state.in_flight.iter().sum();
            state.window_shed = false;
        }
    }

    pub fn view(&self) -> LimitView {
        let state = self.state();
        let limit = state.limit();
        LimitView {
            adaptive: state.config.enabled,
            limit,
            min: state.floor(),
            max: state.max,
            partitions: Priority::ALL
                .iter()
                .map(|&priority| PartitionView {
                    priority,
                    admitted_below: state.admitted_below(priority, limit),
                    guaranteed: state.guaranteed(limit),
                    in_flight: state.in_flight[priority as usize],
                    shed: state.shed[priority as usize],
                })
                .collect(),
        }
    }

    /// Requests being served now.
    pub fn in_flight(&self) -> usize {
        self.state().in_flight.iter().sum()
    }
}

/// A request's slot; given back when dropped (also when its client went away mid-way).
#[derive(Debug)]
pub struct Permit {
    limit: Arc<ConcurrencyLimit>,
    priority: Priority,
}

impl Permit {
    /// The request was served in `latency`, ending `now`: one sample for the limit.
    pub fn served(self, latency: Duration, now: Instant) {
        self.limit.record(latency, now);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.limit.state();
        let slot = &mut state.in_flight[self.priority as usize];
        *slot = slot.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, min: usize) -> RateLimitConfig {
        RateLimitConfig {
            in_flight_max: max,
            adaptive: AdaptiveConfig { min, window_ms: 100, window_requests: 10, ..AdaptiveConfig::default() },
            ..RateLimitConfig::default()
        }
    }

    /// Serves `windows` windows of requests (100 ms each, on the test's own `clock`), `in_flight` at a
    /// time, each taking `latency`.
    fn serve(limit: &Arc<ConcurrencyLimit>, clock: &mut Instant, in_flight: usize, latency: Duration, windows: usize) {
        serve_as(limit, clock, Priority::Orders, in_flight, latency, windows);
    }

    /// [`serve`] for requests of `priority`, `asked` a window, those admitted served; answers the most
    /// admitted in one window.
    fn serve_as(
        limit: &Arc<ConcurrencyLimit>,
        clock: &mut Instant,
        priority: Priority,
        asked: usize,
        latency: Duration,
        windows: usize,
    ) -> usize {
        let mut most = 0;
        for _ in 0..windows {
            let permits: Vec<Permit> = (0..asked).filter_map(|_| limit.try_acquire(priority)).collect();
            most = most.max(permits.len());
            let count = permits.len().max(1) as u32;
            for (index, permit) in permits.into_iter().enumerate() {
                // Spread over the window; the last one ends it.
                permit.served(latency, *clock + Duration::from_millis(100) * (index as u32 + 1) / count);
            }
            *clock += Duration::from_millis(100);
        }
        most
    }

    /// Steady windows, then slower ones (four times the long-term latency) that cut the limit: the limit
    /// after them.
    fn cut_by_slow_windows(limit: &Arc<ConcurrencyLimit>, clock: &mut Instant) -> usize {
        serve(limit, clock, 150, Duration::from_millis(2), 20);
        serve(limit, clock, 150, Duration::from_millis(8), 30);
        limit.view().limit
    }

    #[test]
    fn the_limit_shrinks_when_latency_grows_and_grows_back_when_it_falls() {
        let limit = Arc::new(ConcurrencyLimit::new(&limits(200, 10)));
        let clock = &mut Instant::now();
        assert_eq!(limit.view().limit, 200, "starts at the ceiling");
        serve(&limit, clock, 150, Duration::from_millis(2), 20);
        let steady = limit.view().limit;
        assert!(steady >= 190, "steady latency keeps it: {steady}");
        // Queueing: each window four times slower than the long-term latency.
        serve(&limit, clock, 150, Duration::from_millis(8), 30);
        let loaded = limit.view().limit;
        assert!(loaded < steady / 2, "slower requests shrink it: {steady} → {loaded}");
        assert!(loaded >= 10, "never below its floor: {loaded}");
        // The queue drains: requests as fast as before.
        for _ in 0..400 {
            let in_flight = limit.view().limit;
            serve(&limit, clock, in_flight, Duration::from_millis(2), 1);
        }
        let recovered = limit.view().limit;
        assert!(recovered > loaded * 2, "fast requests let it grow back: {loaded} → {recovered}");
    }

    /// A limit cut by slow windows grows back while the load is light and fast, and a light window
    /// that is slow does not cut it further: a stall's cut does not outlive it at a lower load.
    #[test]
    fn a_cut_limit_grows_back_under_a_light_fast_load() {
        let limit = Arc::new(ConcurrencyLimit::new(&limits(200, 10)));
        let clock = &mut Instant::now();
        let cut = cut_by_slow_windows(&limit, clock);
        assert!(cut < 100, "slower requests cut it: {cut}");
        // A light load (a few requests at a time, under half the limit) as fast as before: 8 requests
        // per 100 ms, so a window (10 requests, 100 ms) closes every 200 ms — 100 windows.
        serve(&limit, clock, 8, Duration::from_millis(2), 200);
        let light = limit.view().limit;
        assert!(light > cut + 20, "fast light windows let it grow back: {cut} → {light}");
        // Light but slow windows (a stall's aftermath) leave it where it is.
        serve(&limit, clock, 8, Duration::from_millis(40), 60);
        assert!(limit.view().limit >= light, "a light window never cuts it: {light} → {}", limit.view().limit);
    }

    /// A window that shed requests held the load back, however few were in flight (queries are shed at
    /// their part of the limit, here set below half): it does not count as light, and fast answers to
    /// the few admitted do not raise the limit.
    #[test]
    fn a_window_that_shed_is_not_light() {
        let mut config = limits(200, 10);
        config.adaptive.priorities.queries_below = 0.3;
        let limit = Arc::new(ConcurrencyLimit::new(&config));
        let clock = &mut Instant::now();
        let cut = cut_by_slow_windows(&limit, clock);
        // Queries arrive beyond their part: some are shed, the admitted ones stay under half.
        let admitted = serve_as(&limit, clock, Priority::Queries, cut, Duration::from_millis(2), 200);
        assert!(admitted * 2 < cut, "{admitted} admitted of {cut}");
        assert!(limit.view().limit <= cut, "shedding windows do not raise it: {cut} → {}", limit.view().limit);
    }

    /// Once the load is served fast again the limit comes back within seconds of windows (√limit a
    /// window before smoothing), not minutes: from its floor of 10 past 150 in 100 windows (by
    /// ⌈log10 limit⌉ a window it reached about 45).
    #[test]
    fn a_cut_limit_comes_back_within_seconds_once_requests_are_fast() {
        let limit = Arc::new(ConcurrencyLimit::new(&limits(500, 10)));
        let clock = &mut Instant::now();
        serve(&limit, clock, 400, Duration::from_millis(2), 20);
        serve(&limit, clock, 400, Duration::from_millis(20), 60);
        let cut = limit.view().limit;
        assert!(cut <= 20, "much slower requests cut it to about its floor: {cut}");
        for _ in 0..100 {
            let in_flight = limit.view().limit;
            serve(&limit, clock, in_flight, Duration::from_millis(2), 1);
        }
        let back = limit.view().limit;
        assert!(back >= 150, "ten seconds of fast windows bring it back: {cut} → {back}");
    }

    #[test]
    fn near_the_limit_queries_go_first_then_new_orders_and_none_starves() {
        let mut config = limits(20, 10);
        config.adaptive.enabled = false;
        let limit = Arc::new(ConcurrencyLimit::new(&config));
        let take = |priority: Priority, most: usize| -> Vec<Permit> {
            (0..most).map_while(|_| limit.try_acquire(priority)).collect()
        };
        // Queries alone take slots up to 70 % of the limit (14 of 20), then one more of their own
        // guaranteed part (5 %: 1 slot)... which they already hold: shed at 14.
        let mut queries = take(Priority::Queries, 100);
        assert_eq!(queries.len(), 14);
        // New orders up to 85 % of the limit (17 in flight): 3 more.
        let orders = take(Priority::Orders, 100);
        assert_eq!(orders.len(), 3);
        // Pay and cancel may use the whole limit: 3 more.
        let changes = take(Priority::Changes, 100);
        assert_eq!(changes.len(), 3);
        // Two queries end: 18 in flight, above the orders' part; only pay and cancel get the slots.
        queries.truncate(12);
        assert!(limit.try_acquire(Priority::Orders).is_none(), "18 in flight: above the orders' part");
        let paying = limit.try_acquire(Priority::Changes).expect("below the whole limit");
        let view = limit.view();
        let shed: Vec<u64> = view.partitions.iter().map(|p| p.shed).collect();
        assert_eq!(shed, [1, 2, 1], "one refusal each that ended each take, and the order above");
        let below: Vec<usize> = view.partitions.iter().map(|p| p.admitted_below).collect();
        assert_eq!(below, [20, 17, 14]);
        drop((orders, changes, paying));
        assert_eq!(limit.in_flight(), 12, "the 12 queries left");
    }

    #[test]
    fn a_kind_crowded_out_still_has_its_guaranteed_part() {
        let mut config = limits(40, 10);
        config.adaptive.enabled = false;
        let limit = Arc::new(ConcurrencyLimit::new(&config));
        let changes: Vec<Permit> = (0..40).map_while(|_| limit.try_acquire(Priority::Changes)).collect();
        assert_eq!(changes.len(), 40, "pay and cancel fill the limit");
        // 5 % of 40: each other kind still gets two slots of its own.
        let orders: Vec<Permit> = (0..10).map_while(|_| limit.try_acquire(Priority::Orders)).collect();
        let queries: Vec<Permit> = (0..10).map_while(|_| limit.try_acquire(Priority::Queries)).collect();
        assert_eq!((orders.len(), queries.len()), (2, 2));
        assert!(limit.try_acquire(Priority::Changes).is_none(), "pay and cancel hold more than their part");
        drop((changes, orders, queries));
        assert_eq!(limit.in_flight(), 0, "every slot given back");
    }

    #[test]
    fn off_the_limit_stays_at_its_ceiling() {
        let mut config = limits(50, 10);
        config.adaptive.enabled = false;
        let limit = Arc::new(ConcurrencyLimit::new(&config));
        let clock = &mut Instant::now();
        serve(&limit, clock, 40, Duration::from_millis(2), 20);
        serve(&limit, clock, 40, Duration::from_millis(50), 20);
        assert_eq!(limit.view().limit, 50);
    }

    #[test]
    fn new_settings_apply_from_the_limit_in_force() {
        let limit = Arc::new(ConcurrencyLimit::new(&limits(200, 10)));
        let permit = limit.try_acquire(Priority::Orders).expect("a slot");
        limit.reconfigure(&limits(100, 20));
        let view = limit.view();
        assert_eq!((view.limit, view.min, view.max), (100, 20, 100));
        assert_eq!(limit.in_flight(), 1, "slots in use stay counted");
        drop(permit);
        assert_eq!(limit.in_flight(), 0);
    }
}
