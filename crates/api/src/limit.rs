//! The entry's rate rules (docs/API.md "Limits"): token buckets (GCRA, `governor`) for the whole process,
//! per buyer, per commodity and per shop, each with its mode — refuse a cart over the rate at once
//! (429 with `Retry-After` and the rule's code, nothing else done: early fail) or make it wait for its
//! turn up to a bound. The rules are replaced at run time ([`Rules::with`]); a rule whose setting did not
//! change keeps its buckets.
//!
//! In a cluster ([`Sharing`]), the process-wide and per-commodity rules hold across every API: each takes
//! its tokens from a bucket in Redis ([`SharedRates`]) a few at a time (20 ms of the rate) and spends them
//! locally. While Redis does not answer, each API falls back to a local bucket of the rate divided by the
//! APIs registered, and asks Redis again a second later: a rate shared through one engine must not stop
//! the entry when that engine does (Sentinel's token server is such a single point; this is not).

use std::cell::Cell;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
pub use orderly_app::config::{KeyRule, RateLimitConfig};
use orderly_app::ports::{SharedRates, Taken};
use orderly_domain::PlaceOrderBody;

/// The rule that refused a cart, named by its error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Global,
    Buyer,
    Commodity,
    Shop,
}

impl Rule {
    pub const ALL: [Rule; 4] = [Rule::Global, Rule::Buyer, Rule::Commodity, Rule::Shop];

    /// The stable code of its 429 (docs/API.md).
    pub fn code(self) -> &'static str {
        match self {
            Rule::Global => "rate_limited",
            Rule::Buyer => "rate_limited_buyer",
            Rule::Commodity => "rate_limited_commodity",
            Rule::Shop => "rate_limited_shop",
        }
    }

    /// The rule's name in metrics and `GET /api/admin/limits`.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Global => "global",
            Rule::Buyer => "buyer",
            Rule::Commodity => "commodity",
            Rule::Shop => "shop",
        }
    }
}

/// A cart refused by a rule; `retry_after` is when the rule would have a token for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub rule: Rule,
    pub retry_after: Duration,
}

/// Checks between two sweeps of the per-key buckets that are back to full (so that a key seen once does
/// not stay in memory).
const SWEEP_EVERY: u64 = 1 << 14;

/// One rule's buckets (`None` while the rule is off), with the rate and burst they were made for.
#[derive(Debug)]
struct Bucket<C: Clock + Clone> {
    rate: (u32, u32),
    limiter: Option<Limiter<C>>,
}

#[derive(Debug)]
enum Limiter<C: Clock + Clone> {
    Direct(RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>),
    Keyed(RateLimiter<u64, DashMapStateStore<u64>, C, NoOpMiddleware<C::Instant>>),
}

impl<C: Clock + Clone> Bucket<C> {
    fn new(rule: &KeyRule, keyed: bool, clock: &C) -> Bucket<C> {
        let limiter = NonZeroU32::new(rule.per_second).map(|rate| {
            let quota = Quota::per_second(rate).allow_burst(NonZeroU32::new(rule.burst).unwrap_or(NonZeroU32::MIN));
            if keyed {
                Limiter::Keyed(RateLimiter::dashmap_with_clock(quota, clock.clone()))
            } else {
                Limiter::Direct(RateLimiter::direct_with_clock(quota, clock.clone()))
            }
        });
        Bucket { rate: (rule.per_second, rule.burst), limiter }
    }

    /// Takes a token for `key` (ignored by the global bucket), or says how long until there is one.
    fn take(&self, key: u64, clock: &C) -> Result<(), Duration> {
        let outcome = match &self.limiter {
            None => return Ok(()),
            Some(Limiter::Direct(limiter)) => limiter.check(),
            Some(Limiter::Keyed(limiter)) => limiter.check_key(&key),
        };
        outcome.map_err(|not_until| not_until.wait_time_from(clock.now()))
    }

    fn sweep(&self) {
        if let Some(Limiter::Keyed(limiter)) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    fn keys(&self) -> usize {
        match &self.limiter {
            Some(Limiter::Keyed(limiter)) => limiter.len(),
            _ => 0,
        }
    }
}

tokio::task_local! {
    /// How long the request being served waited for its turn in a rule's queue (the concurrency limit
    /// leaves it out of the latency it learns from).
    pub static QUEUED: Cell<Duration>;
}

/// Where a cluster's shared buckets are, and how many APIs share them (for the fallback's share).
#[derive(Clone)]
pub struct Sharing {
    pub rates: Arc<dyn SharedRates>,
    /// The APIs running now (at least one).
    pub apis: Arc<dyn Fn() -> usize + Send + Sync>,
}

impl std::fmt::Debug for Sharing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharing").field("rates", &self.rates).field("apis", &(self.apis)()).finish()
    }
}

/// The longest wait for the shared bucket before the local fallback answers.
const SHARED_CALL_MAX: Duration = Duration::from_millis(100);
/// After the shared bucket failed, how long the fallback answers alone.
const SHARED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A shared rule in this process: tokens taken from the shared bucket and not spent yet, per key, and
/// the fallback.
#[derive(Debug)]
struct Leased<C: Clock + Clone> {
    rule: KeyRule,
    unspent: dashmap::DashMap<u64, u32>,
    /// One call to the shared bucket at a time per key: the requests that find nothing unspent wait for
    /// it and spend what it brought (each calling for its own batch at once would ask the shared bucket
    /// for many batches, more than its burst, and be refused with tokens to spare).
    refilling: dashmap::DashMap<u64, Arc<tokio::sync::Mutex<()>>>,
    /// Per key, until when (ms since `epoch`) the shared bucket said it is empty: requests meanwhile are
    /// refused here, without a call (a hot key must not queue its refusals behind one another's calls).
    empty_until_ms: dashmap::DashMap<u64, u64>,
    /// The local bucket used while the shared one does not answer, for the API count it was made for.
    fallback: arc_swap::ArcSwapOption<(usize, Bucket<C>)>,
    /// Until when the fallback answers alone (ms since `epoch`).
    down_until_ms: AtomicU64,
    epoch: std::time::Instant,
}

impl<C: Clock + Clone> Leased<C> {
    fn new(rule: &KeyRule) -> Leased<C> {
        Leased {
            rule: rule.clone(),
            unspent: dashmap::DashMap::new(),
            refilling: dashmap::DashMap::new(),
            empty_until_ms: dashmap::DashMap::new(),
            fallback: arc_swap::ArcSwapOption::empty(),
            down_until_ms: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }

    /// Tokens taken per call: 20 ms of the rate, within the burst.
    fn batch(&self) -> u32 {
        (self.rule.per_second / 50).clamp(1, self.rule.burst.max(1))
    }

    fn spend(&self, key: u64) -> bool {
        let Some(mut unspent) = self.unspent.get_mut(&key) else { return false };
        if *unspent == 0 {
            return false;
        }
        *unspent -= 1;
        true
    }

    async fn take(&self, rule: Rule, key: u64, sharing: &Sharing, clock: &C) -> Result<(), Duration> {
        if self.spend(key) {
            return Ok(());
        }
        self.still_empty(key)?;
        let refilling = self.refilling.entry(key).or_default().clone();
        let _turn = refilling.lock().await;
        if self.spend(key) {
            return Ok(());
        }
        self.still_empty(key)?;
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        if now_ms >= self.down_until_ms.load(Ordering::Relaxed) {
            let bucket = format!("{}:{key}", rule.name());
            let call = sharing.rates.take(&bucket, self.rule.per_second, self.rule.burst, self.batch());
            match tokio::time::timeout(SHARED_CALL_MAX, call).await {
                Ok(Ok(Taken { granted: 0, wait_ms })) => {
                    self.empty_until_ms.insert(key, now_ms + wait_ms.max(1));
                    return Err(Duration::from_millis(wait_ms.max(1)));
                }
                Ok(Ok(Taken { granted, .. })) => {
                    if granted > 1 {
                        *self.unspent.entry(key).or_insert(0) += granted - 1;
                    }
                    return Ok(());
                }
                Ok(Err(error)) => tracing::warn!(%error, rule = rule.name(), "shared rate unavailable: local share"),
                Err(_) => tracing::warn!(rule = rule.name(), "shared rate did not answer: local share"),
            }
            let retry_ms = now_ms + SHARED_RETRY_AFTER.as_millis() as u64;
            self.down_until_ms.store(retry_ms, Ordering::Relaxed);
        }
        self.fallback(rule, (sharing.apis)().max(1), clock).1.take(key, clock)
    }

    /// Forgets what no request needs: keys with nothing unspent, emptiness that has passed, turns nobody
    /// waits for, and the fallback's full buckets (keys come from carts: they must not pile up).
    fn sweep(&self) {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        self.unspent.retain(|_, unspent| *unspent > 0);
        self.empty_until_ms.retain(|_, until| *until > now_ms);
        self.refilling.retain(|_, turn| Arc::strong_count(turn) > 1);
        if let Some(fallback) = self.fallback.load_full() {
            fallback.1.sweep();
        }
    }

    /// Refuses while the shared bucket last said it is empty, with the time left.
    fn still_empty(&self, key: u64) -> Result<(), Duration> {
        let Some(until_ms) = self.empty_until_ms.get(&key).map(|until| *until) else { return Ok(()) };
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        if now_ms < until_ms {
            return Err(Duration::from_millis(until_ms - now_ms));
        }
        self.empty_until_ms.remove_if(&key, |_, until| *until <= now_ms);
        Ok(())
    }

    /// The local bucket of this process's share: the rate and burst divided by the APIs running.
    fn fallback(&self, rule: Rule, apis: usize, clock: &C) -> Arc<(usize, Bucket<C>)> {
        if let Some(current) = self.fallback.load_full().filter(|current| current.0 == apis) {
            return current;
        }
        let share = |value: u32| (value / apis as u32).max(1);
        let local = KeyRule { per_second: share(self.rule.per_second), burst: share(self.rule.burst), queue_ms: 0 };
        let made = Arc::new((apis, Bucket::new(&local, rule != Rule::Global, clock)));
        self.fallback.store(Some(made.clone()));
        made
    }
}

/// The rules in force, in [`Rule::ALL`]'s order. Cheap to check: one GCRA cell per rule and key (a
/// shared rule: a local count, and one call to the shared bucket per 20 ms of its rate).
#[derive(Debug)]
pub struct Rules<C: Clock + Clone = DefaultClock> {
    settings: [KeyRule; 4],
    buckets: [Arc<Bucket<C>>; 4],
    /// The rules shared across a cluster (the global and per-commodity ones, when on and shared).
    leased: [Option<Arc<Leased<C>>>; 4],
    sharing: Option<Sharing>,
    shared: bool,
    clock: C,
    checks: AtomicU64,
}

impl Rules<DefaultClock> {
    pub fn new(config: &RateLimitConfig) -> Rules<DefaultClock> {
        Rules::with_clock(config, DefaultClock::default())
    }
}

/// The settings of [`Rule::ALL`] in `config` (the global rule's are the top-level keys).
fn settings(config: &RateLimitConfig) -> [KeyRule; 4] {
    let global =
        KeyRule { per_second: config.orders_per_second.max(1), burst: config.burst.max(1), queue_ms: config.queue_ms };
    [global, config.buyer.clone(), config.commodity.clone(), config.shop.clone()]
}

impl<C: Clock + Clone> Rules<C> {
    /// Rules on `clock` (governor's monotonic clock in a server; a fake one in tests).
    pub fn with_clock(config: &RateLimitConfig, clock: C) -> Rules<C> {
        let settings = settings(config);
        let buckets =
            Rule::ALL.map(|rule| Arc::new(Bucket::new(&settings[rule as usize], rule != Rule::Global, &clock)));
        Rules {
            settings,
            buckets,
            leased: Default::default(),
            sharing: None,
            shared: config.shared,
            clock,
            checks: AtomicU64::new(0),
        }
    }

    /// These rules, the global and per-commodity ones taken from `sharing`'s buckets (when
    /// `rate_limit.shared`).
    pub fn sharing(mut self, sharing: Sharing) -> Rules<C> {
        self.sharing = Some(sharing);
        self.leased = self.leases(None);
        self
    }

    /// The shared rules' local state: kept from `before` for a rule whose setting did not change.
    fn leases(&self, before: Option<&Rules<C>>) -> [Option<Arc<Leased<C>>>; 4] {
        Rule::ALL.map(|rule| {
            let setting = &self.settings[rule as usize];
            let shareable = matches!(rule, Rule::Global | Rule::Commodity);
            if self.sharing.is_none() || !self.shared || !shareable || setting.per_second == 0 {
                return None;
            }
            let same = |l: &Arc<Leased<C>>| (l.rule.per_second, l.rule.burst) == (setting.per_second, setting.burst);
            let kept = before.and_then(|b| b.leased[rule as usize].clone()).filter(same);
            Some(kept.unwrap_or_else(|| Arc::new(Leased::new(setting))))
        })
    }

    /// The rules of `config`: a rule whose rate and burst are the same keeps its buckets (and what they
    /// hold); a changed one starts full.
    pub fn with(&self, config: &RateLimitConfig) -> Rules<C> {
        let settings = settings(config);
        let buckets = Rule::ALL.map(|rule| {
            let (bucket, setting) = (&self.buckets[rule as usize], &settings[rule as usize]);
            if bucket.rate == (setting.per_second, setting.burst) {
                bucket.clone()
            } else {
                Arc::new(Bucket::new(setting, rule != Rule::Global, &self.clock))
            }
        });
        let mut rules = Rules {
            settings,
            buckets,
            leased: Default::default(),
            sharing: self.sharing.clone(),
            shared: config.shared,
            clock: self.clock.clone(),
            checks: AtomicU64::new(0),
        };
        rules.leased = rules.leases(Some(self));
        rules
    }

    /// Whether these rules are `config`'s.
    pub fn enforce(&self, config: &RateLimitConfig) -> bool {
        self.settings == settings(config) && self.shared == config.shared
    }

    /// Whether `rule` is taken from the cluster's shared buckets.
    pub fn is_shared(&self, rule: Rule) -> bool {
        self.leased[rule as usize].is_some()
    }

    /// The setting of `rule` in force.
    pub fn rule(&self, rule: Rule) -> &KeyRule {
        &self.settings[rule as usize]
    }

    /// Keys the per-key buckets of `rule` remember now (a shared rule: the keys with tokens taken here and
    /// not spent yet).
    pub fn keys(&self, rule: Rule) -> usize {
        match &self.leased[rule as usize] {
            Some(leased) => leased.unspent.len(),
            None => self.buckets[rule as usize].keys(),
        }
    }

    /// Takes `rule`'s token for `key` now — from the shared bucket for a shared rule — or says how long
    /// until there is one.
    async fn take_any(&self, rule: Rule, key: u64) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
        match (&self.leased[rule as usize], &self.sharing) {
            (Some(leased), Some(sharing)) => leased.take(rule, key, sharing, &self.clock).await,
            _ => self.take(rule, key),
        }
    }

    /// Forgets the keys no bucket needs (full again, nothing unspent): carts name them, so they must not
    /// pile up. Done every [`SWEEP_EVERY`] checks.
    fn sweep(&self) {
        for bucket in &self.buckets {
            bucket.sweep();
        }
        for leased in self.leased.iter().flatten() {
            leased.sweep();
        }
    }

    /// Takes `rule`'s token for `key` from this process's own bucket now, or says how long until there
    /// is one.
    pub fn take(&self, rule: Rule, key: u64) -> Result<(), Duration> {
        self.buckets[rule as usize].take(key, &self.clock)
    }
}

/// What a cart asks of the rules, most specific first: its buyer, then each distinct commodity and shop
/// of its lines, then the process's rate — so a buyer or a commodity over its own rate is refused
/// before it takes a token the others need.
pub fn cart_keys(body: &PlaceOrderBody) -> Vec<(Rule, u64)> {
    let mut keys = vec![(Rule::Buyer, body.uid.0)];
    let mut commodities: Vec<u64> = body.commodity_details.iter().map(|line| line.commodity_id.0).collect();
    let mut shops: Vec<u64> = body.commodity_details.iter().map(|line| line.user_id.0).collect();
    commodities.sort_unstable();
    commodities.dedup();
    shops.sort_unstable();
    shops.dedup();
    keys.extend(commodities.into_iter().map(|id| (Rule::Commodity, id)));
    keys.extend(shops.into_iter().map(|id| (Rule::Shop, id)));
    keys.push((Rule::Global, 0));
    keys
}

impl<C: Clock + Clone> Rules<C> {
    /// Admits a cart through every rule, in [`cart_keys`]'s order. A rule in queue mode makes the cart
    /// wait for its token while the whole wait stays within the rule's `queue_ms` (it sleeps until the
    /// bucket said a token would be there and asks again: not a strict arrival order — a newcomer may
    /// take that token first); otherwise the cart is refused. Tokens taken by the rules before the refusing one stay taken (as a refused request's
    /// cost); nothing else was done.
    pub async fn admit(&self, keys: &[(Rule, u64)]) -> Result<(), Refused> {
        self.admit_with(keys, tokio::time::sleep).await
    }

    /// [`Rules::admit`], waiting with `sleep` (a test's sleep advances its fake clock).
    async fn admit_with<S, F>(&self, keys: &[(Rule, u64)], sleep: S) -> Result<(), Refused>
    where
        S: Fn(Duration) -> F,
        F: Future<Output = ()>,
    {
        let mut waited = Duration::ZERO;
        for &(rule, key) in keys {
            loop {
                match self.take_any(rule, key).await {
                    Ok(()) => break,
                    Err(wait) => {
                        let bound = Duration::from_millis(self.rule(rule).queue_ms);
                        if waited + wait > bound {
                            return Err(Refused { rule, retry_after: wait });
                        }
                        sleep(wait).await;
                        waited += wait;
                        // Outside a request (tests), nobody is told.
                        let _ = QUEUED.try_with(|queued| queued.set(queued.get() + wait));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn config(global: u32, buyer: u32, commodity: u32) -> RateLimitConfig {
        RateLimitConfig {
            orders_per_second: global,
            burst: global,
            buyer: KeyRule { per_second: buyer, burst: buyer.max(1), queue_ms: 0 },
            commodity: KeyRule { per_second: commodity, burst: commodity.max(1), queue_ms: 0 },
            ..RateLimitConfig::default()
        }
    }

    #[test]
    fn each_buyer_has_a_bucket_of_its_own() {
        let clock = FakeRelativeClock::default();
        let rules = Rules::with_clock(&config(1000, 2, 0), clock.clone());
        assert_eq!(rules.take(Rule::Buyer, 7), Ok(()));
        assert_eq!(rules.take(Rule::Buyer, 7), Ok(()));
        let wait = rules.take(Rule::Buyer, 7).expect_err("the third in the same instant");
        assert_eq!(wait, Duration::from_millis(500), "2 per second: one token every 500 ms");
        assert_eq!(rules.take(Rule::Buyer, 8), Ok(()), "another buyer is not touched");
        clock.advance(Duration::from_millis(499));
        assert!(rules.take(Rule::Buyer, 7).is_err());
        clock.advance(Duration::from_millis(1));
        assert_eq!(rules.take(Rule::Buyer, 7), Ok(()), "its token came back");
        assert_eq!(rules.keys(Rule::Buyer), 2);
    }

    #[test]
    fn a_rule_that_is_off_admits_everything() {
        let rules = Rules::with_clock(&config(1000, 0, 0), FakeRelativeClock::default());
        for _ in 0..10_000 {
            assert_eq!(rules.take(Rule::Commodity, 1), Ok(()));
        }
        assert_eq!(rules.keys(Rule::Commodity), 0, "nothing remembered");
    }

    #[test]
    fn a_cart_asks_its_buyer_then_each_commodity_and_shop_once_then_the_process() {
        let body: PlaceOrderBody = serde_json::from_value(serde_json::json!({
            "uid": 5, "to_uid": 5, "origin_price": 0, "actual_price": 0,
            "commodity_details": [
                {"actual_price": 1, "commodity_id": 30, "prices": 1, "user_id": 2, "num": 1},
                {"actual_price": 1, "commodity_id": 10, "prices": 1, "user_id": 2, "num": 1},
                {"actual_price": 1, "commodity_id": 30, "prices": 1, "user_id": 1, "num": 1},
            ],
        }))
        .expect("a cart");
        assert_eq!(
            cart_keys(&body),
            vec![
                (Rule::Buyer, 5),
                (Rule::Commodity, 10),
                (Rule::Commodity, 30),
                (Rule::Shop, 1),
                (Rule::Shop, 2),
                (Rule::Global, 0)
            ]
        );
    }

    #[test]
    fn a_changed_rule_starts_full_and_an_unchanged_one_keeps_its_state() {
        let clock = FakeRelativeClock::default();
        let rules = Rules::with_clock(&config(1, 1, 1), clock.clone());
        assert_eq!(rules.take(Rule::Global, 0), Ok(()));
        assert_eq!(rules.take(Rule::Commodity, 3), Ok(()));
        let changed = rules.with(&config(1, 1, 5));
        assert!(changed.enforce(&config(1, 1, 5)) && !rules.enforce(&config(1, 1, 5)));
        assert!(changed.take(Rule::Global, 0).is_err(), "same global rule: still empty");
        assert_eq!(changed.take(Rule::Commodity, 3), Ok(()), "new commodity rule: full again");
    }

    #[tokio::test]
    async fn a_queueing_rule_makes_the_cart_wait_within_its_bound() {
        let clock = FakeRelativeClock::default();
        let sleep = |wait: Duration| {
            clock.advance(wait);
            std::future::ready(())
        };
        let mut limits = config(1000, 1, 0);
        limits.buyer.queue_ms = 1500;
        let rules = Rules::with_clock(&limits, clock.clone());
        let keys = [(Rule::Buyer, 1), (Rule::Global, 0)];
        assert_eq!(rules.admit_with(&keys, sleep).await, Ok(()));
        let second = QUEUED.scope(Cell::new(Duration::ZERO), async {
            let admitted = rules.admit_with(&keys, sleep).await;
            (admitted, QUEUED.with(Cell::get))
        });
        assert_eq!(second.await, (Ok(()), Duration::from_secs(1)), "waited its turn, a second");

        limits.buyer.queue_ms = 900;
        let rules = rules.with(&limits);
        let refused = rules.admit_with(&keys, sleep).await.expect_err("its turn is beyond the bound");
        assert_eq!(refused, Refused { rule: Rule::Buyer, retry_after: Duration::from_secs(1) });
    }

    /// A shared bucket holding `left` tokens, or failing.
    #[derive(Debug, Default)]
    struct FakeShared {
        left: std::sync::Mutex<u32>,
        failing: bool,
        calls: AtomicU64,
    }

    #[async_trait::async_trait]
    impl SharedRates for FakeShared {
        async fn take(
            &self,
            _key: &str,
            _per_second: u32,
            _burst: u32,
            want: u32,
        ) -> orderly_app::ports::PortResult<Taken> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            // A round trip: other requests run meanwhile.
            tokio::task::yield_now().await;
            if self.failing {
                return Err(orderly_app::PortError::unavailable("redis", "connection refused"));
            }
            let mut left = self.left.lock().expect("not poisoned");
            let granted = want.min(*left);
            *left -= granted;
            Ok(Taken { granted, wait_ms: if granted == 0 { 40 } else { 0 } })
        }
    }

    fn shared(fake: &Arc<FakeShared>, apis: usize) -> Sharing {
        Sharing { rates: fake.clone(), apis: Arc::new(move || apis) }
    }

    #[tokio::test]
    async fn a_shared_rule_takes_its_tokens_a_batch_at_a_time_and_refuses_when_the_cluster_spent_them() {
        let fake = Arc::new(FakeShared { left: std::sync::Mutex::new(25), ..FakeShared::default() });
        // 500 a second: batches of 10 (20 ms of the rate).
        let rules = Rules::with_clock(&config(500, 0, 0), FakeRelativeClock::default()).sharing(shared(&fake, 2));
        assert!(rules.is_shared(Rule::Global) && !rules.is_shared(Rule::Buyer));
        let keys = [(Rule::Global, 0)];
        for cart in 0..25 {
            assert_eq!(rules.admit(&keys).await, Ok(()), "cart {cart}");
        }
        assert_eq!(fake.calls.load(Ordering::Relaxed), 3, "10 + 10 + 5 tokens");
        let refused = rules.admit(&keys).await.expect_err("the shared bucket is empty");
        assert_eq!(refused, Refused { rule: Rule::Global, retry_after: Duration::from_millis(40) });
        // Until then, carts are refused here without asking again (a hot key's refusals do not queue).
        for _ in 0..20 {
            let refused = rules.admit(&keys).await.expect_err("still empty");
            assert!(refused.retry_after <= Duration::from_millis(40), "{refused:?}");
        }
        assert_eq!(fake.calls.load(Ordering::Relaxed), 4, "one call said it was empty");
    }

    #[tokio::test]
    async fn requests_that_find_nothing_unspent_wait_for_one_call_and_share_what_it_brought() {
        let fake = Arc::new(FakeShared { left: std::sync::Mutex::new(1_000), ..FakeShared::default() });
        let rules = Rules::with_clock(&config(500, 0, 0), FakeRelativeClock::default()).sharing(shared(&fake, 2));
        let keys = [(Rule::Global, 0)];
        let carts = futures_util::future::join_all((0..50).map(|_| rules.admit(&keys))).await;
        assert!(carts.iter().all(Result::is_ok), "{carts:?}");
        assert_eq!(fake.calls.load(Ordering::Relaxed), 5, "50 carts, batches of 10, one call at a time");
    }

    #[tokio::test]
    async fn the_keys_carts_named_are_forgotten_once_nothing_is_held_for_them() {
        let fake = Arc::new(FakeShared { left: std::sync::Mutex::new(1_000), ..FakeShared::default() });
        let limits =
            RateLimitConfig { commodity: KeyRule { per_second: 100, burst: 100, queue_ms: 0 }, ..config(1000, 5, 0) };
        let rules = Rules::with_clock(&limits, FakeRelativeClock::default()).sharing(shared(&fake, 1));
        for id in 0..200 {
            assert_eq!(rules.admit(&[(Rule::Buyer, id), (Rule::Commodity, id)]).await, Ok(()));
        }
        // Each commodity took a batch of 2 and spent 1; each buyer has a bucket.
        assert_eq!((rules.keys(Rule::Commodity), rules.keys(Rule::Buyer)), (200, 200));
        for id in 0..200 {
            assert_eq!(rules.admit(&[(Rule::Commodity, id)]).await, Ok(()), "its unspent token");
        }
        rules.sweep();
        assert_eq!(rules.keys(Rule::Commodity), 0, "nothing unspent: forgotten");
        let leased = rules.leased[Rule::Commodity as usize].as_ref().expect("shared");
        assert_eq!(leased.refilling.len(), 0, "no turn kept for keys nobody asks for");
        assert_eq!(rules.keys(Rule::Buyer), 200, "the buyers' buckets are not full again yet (fake clock)");
    }

    #[tokio::test]
    async fn while_the_shared_bucket_is_down_each_api_enforces_its_share_locally() {
        let fake = Arc::new(FakeShared { failing: true, ..FakeShared::default() });
        let clock = FakeRelativeClock::default();
        // 10 a second, burst 10, over 2 APIs: 5 and 5 here.
        let rules = Rules::with_clock(&config(10, 0, 0), clock.clone()).sharing(shared(&fake, 2));
        let keys = [(Rule::Global, 0)];
        for cart in 0..5 {
            assert_eq!(rules.admit(&keys).await, Ok(()), "cart {cart}");
        }
        let refused = rules.admit(&keys).await.expect_err("this API's share is spent");
        assert_eq!(refused.rule, Rule::Global);
        assert_eq!(refused.retry_after, Duration::from_millis(200), "5 a second here");
        assert_eq!(fake.calls.load(Ordering::Relaxed), 1, "asked once, then left alone for a second");
        // Not shared when the setting says so: the process's own bucket, full.
        let own = rules.with(&RateLimitConfig { shared: false, ..config(10, 0, 0) });
        assert!(!own.is_shared(Rule::Global));
        assert_eq!(own.admit(&keys).await, Ok(()));
    }
}
