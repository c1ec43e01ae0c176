//! Shared set-up for the flow tests: the standalone profile on a temporary directory, a manual clock,
//! and the seed's catalog (commodity 1 from shop 100001 at 29.99, commodity 2 from shop 100002 at 49.99).
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use orderly_app::model::{Order, Restock, StockChange, StockLevel, Token, TokenState};
use orderly_app::ports::{Claim, Held, PortResult, Reserve};
use orderly_app::time::ManualClock;
use orderly_app::{Clock, FlowConfig, Orderly, Ports, StockCache, Store};
use orderly_domain::{CatalogEntry, CommodityId, Money, OrderNo, OrderState, PlaceOrderBody, ShopId};
use orderly_local::{AcquirerConfig, Durability, LocalConfig, LocalStockCache};

pub const T0_MS: u64 = 1_800_000_000_000;

pub struct Harness {
    pub orderly: Orderly,
    /// The ports `orderly` was wired from: what a test reads or breaks behind the use-cases.
    pub ports: Ports,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
}

pub fn local_config(acquirer: AcquirerConfig) -> LocalConfig {
    LocalConfig { durability: Durability::Os, acquirer, ..LocalConfig::default() }
}

/// The standalone profile's ports on `dir`, and the flow wired to them.
pub async fn open_at(dir: &Path, clock: Arc<ManualClock>, acquirer: AcquirerConfig) -> (Orderly, Ports) {
    open_with(dir, clock, FlowConfig::default(), acquirer).await
}

pub async fn open_with(
    dir: &Path,
    clock: Arc<ManualClock>,
    flow: FlowConfig,
    acquirer: AcquirerConfig,
) -> (Orderly, Ports) {
    let ports = orderly_local::open(dir, clock, &local_config(acquirer), None).await.expect("profile opens");
    (Orderly::new(ports.clone(), flow), ports)
}

/// Runs `call` to its end, moving `clock` on by `step_ms` each time at least `sleepers` waits are on it
/// (a charge's time limit and the acquirer's latency, say). Fewer are left alone: a dependency call
/// bounded by a time limit also waits on the clock while its real I/O runs, and moving the clock then
/// would cut it off. Bounded: a call that never ends fails the test.
pub async fn run_on_clock<T: Send + 'static>(
    clock: &ManualClock,
    sleepers: usize,
    step_ms: u64,
    call: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let task = tokio::spawn(call);
    for _ in 0..10_000_000 {
        if task.is_finished() {
            return task.await.expect("the call ran to its end");
        }
        if clock.sleepers() >= sleepers {
            clock.advance_ms(step_ms);
        }
        tokio::task::yield_now().await;
    }
    panic!("the call did not end");
}

/// Opens the profile on `dir` again after its last handles were dropped. The database locks its
/// directory until its own task (the group commit) has seen the handles go and let go of it too: until
/// then opening answers "locked", and this tries again (bounded), without sleeping.
pub async fn reopen_at(dir: &Path, clock: Arc<ManualClock>, acquirer: AcquirerConfig) -> (Orderly, Ports) {
    let local = local_config(acquirer);
    for _ in 0..1_000_000 {
        match orderly_local::open(dir, Arc::clone(&clock) as Arc<dyn Clock>, &local, None).await {
            Ok(ports) => return (Orderly::new(ports.clone(), FlowConfig::default()), ports),
            Err(_still_locked) => tokio::task::yield_now().await,
        }
    }
    panic!("{} stayed locked", dir.display());
}

/// Lets every task waiting on `clock` run to its end (bounded): the caller has moved the clock past every
/// wait it started, and a wait still there after that fails the test.
pub async fn sleeps_ended(clock: &ManualClock) {
    for _ in 0..1_000_000 {
        if clock.sleepers() == 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{} sleeps still waiting", clock.sleepers());
}

/// Changes the ports behind `orderly` (a test breaking one of them) and wires the flow to them again.
pub fn rewire(orderly: &mut Orderly, ports: &mut Ports, change: impl FnOnce(&mut Ports)) {
    change(ports);
    *orderly = Orderly::new(ports.clone(), (*orderly.config()).clone());
}

pub async fn harness_with(stock: u32, acquirer: AcquirerConfig) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let (orderly, ports) = open_at(dir.path(), Arc::clone(&clock), acquirer).await;
    let catalog = [
        CatalogEntry { commodity_id: CommodityId(1), shop_id: ShopId(100_001), unit_price: Money::from_cents(2999) },
        CatalogEntry { commodity_id: CommodityId(2), shop_id: ShopId(100_002), unit_price: Money::from_cents(4999) },
    ];
    orderly.load_catalog(&catalog, &[(CommodityId(1), stock), (CommodityId(2), stock)]).await.expect("catalog loads");
    Harness { orderly, ports, clock, dir }
}

pub async fn harness(stock: u32) -> Harness {
    harness_with(stock, AcquirerConfig::default()).await
}

/// The seed's example request, verbatim.
pub fn seed_body() -> PlaceOrderBody {
    serde_json::from_str(
        r#"{"uid":1,"to_uid":2,"origin_price":29.99,"actual_price":29.99,"pay_at_once":true,
        "commodity_details":[
          {"actual_price":29.99,"commodity_id":1,"good_type":1,"page_type":0,"prices":29.99,"user_id":100001,"num":1},
          {"actual_price":49.99,"commodity_id":2,"good_type":1,"page_type":0,"prices":49.99,"user_id":100002,"num":1}]}"#,
    )
    .expect("seed body parses")
}

pub fn body(uid: u64, pay_at_once: bool, lines: &[(u64, i64)]) -> PlaceOrderBody {
    let mut body = seed_body();
    body.uid = orderly_domain::Uid(uid);
    body.pay_at_once = pay_at_once;
    let template = body.commodity_details.clone();
    body.commodity_details = lines
        .iter()
        .map(|&(commodity, num)| {
            let mut line = template[usize::from(commodity == 2)].clone();
            line.num = num;
            line
        })
        .collect();
    body
}

pub async fn state(ports: &Ports, order_no: OrderNo) -> OrderState {
    order(ports, order_no).await.state
}

/// The order as the store holds it.
pub async fn order(ports: &Ports, order_no: OrderNo) -> Order {
    ports.store.order(order_no).await.expect("store answers").expect("order exists")
}

/// Store available and cache available for a commodity.
pub async fn stock(ports: &Ports, id: u64) -> (u64, Option<u64>) {
    let store = ports.store.stock(&[CommodityId(id)]).await.expect("store answers")[0].expect("stocked").available;
    let cache = ports.cache.available(&[CommodityId(id)]).await.expect("cache answers")[0];
    (store, cache)
}

/// Rounds of timers [`settle_and_audit`] runs at most before it judges: a pay-at-once order is charged
/// again after every attempt that got no answer, one attempt per round.
const SETTLE_ROUNDS_MAX: usize = 24;

/// Runs every timer to its end and drains every queue until there is no work left (at least four
/// rounds, at most [`SETTLE_ROUNDS_MAX`]), then requires a clean audit.
pub async fn settle_and_audit(orderly: &Orderly, clock: &ManualClock) {
    for round in 0..SETTLE_ROUNDS_MAX {
        orderly.drain().await.expect("drain");
        if round >= 4 && orderly.work_to_do().await.expect("work to do").is_quiet() {
            break;
        }
        clock.advance_ms(FlowConfig::default().unpaid_timeout_ms + 60_000);
    }
    orderly.drain().await.expect("drain");
    let report = orderly.audit(true, 60 * 60 * 1000).await.expect("audit runs");
    assert!(report.violations.is_empty(), "violations: {:#?}", report.violations);
}

/// The profile's stock cache, which a test can lose the way Redis loses it (FLUSHALL, a restart): an
/// empty cache takes its place and counters reload from the store on demand. `lose_at_next_claim` loses
/// it right after a worker claims a reservation and reloads every counter from the store at once: a
/// reload racing a creation in flight, whose reservation is gone with the old cache. `fail_reserves_of`
/// makes one shop's reserves answer an error (a cache that did not answer in time).
#[derive(Debug)]
pub struct LosableCache {
    current: std::sync::RwLock<Arc<dyn StockCache>>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    at_next_claim: AtomicBool,
    /// The next claim that finds its token missing reloads the counters before it answers, as another
    /// process's load would between that claim and what its caller does next.
    reload_at_missing_claim: AtomicBool,
    /// Loads still to be lost right after they are made (a flush racing each load).
    after_loads: std::sync::atomic::AtomicUsize,
    failing_shop: std::sync::Mutex<Option<ShopId>>,
}

impl LosableCache {
    /// Puts a losable cache behind `orderly`, starting from what its cache holds now.
    pub fn install(orderly: &mut Orderly, ports: &mut Ports) -> Arc<LosableCache> {
        let cache = Arc::new(LosableCache {
            current: std::sync::RwLock::new(Arc::clone(&ports.cache)),
            store: Arc::clone(&ports.store),
            clock: Arc::clone(&ports.clock),
            at_next_claim: AtomicBool::new(false),
            reload_at_missing_claim: AtomicBool::new(false),
            after_loads: std::sync::atomic::AtomicUsize::new(0),
            failing_shop: std::sync::Mutex::new(None),
        });
        rewire(orderly, ports, |ports| ports.cache = Arc::clone(&cache) as Arc<dyn StockCache>);
        cache
    }

    fn now(&self) -> Arc<dyn StockCache> {
        Arc::clone(&self.current.read().expect("cache lock"))
    }

    pub fn lose(&self) {
        let fresh = LocalStockCache::new(Arc::clone(&self.clock), LocalConfig::default().token_ttl_ms);
        *self.current.write().expect("cache lock") = Arc::new(fresh);
    }

    pub fn lose_at_next_claim(&self) {
        self.at_next_claim.store(true, Ordering::SeqCst);
    }

    pub fn reload_at_next_missing_claim(&self) {
        self.reload_at_missing_claim.store(true, Ordering::SeqCst);
    }

    /// Loads the counters from the store, as a reload does: the accepted orders not created yet keep
    /// their units.
    async fn reload(&self) -> PortResult<()> {
        let check_at_ms = self.clock.now_ms() + orderly_app::FlowConfig::default().reservation_check_delay_ms;
        let held: Vec<Held> = self
            .store
            .pending_orders()
            .await?
            .iter()
            .map(|order| Held {
                token: order.entry_token(),
                lines: order.stock_lines(),
                check_at_ms: Some(check_at_ms),
            })
            .collect();
        self.now().init(&self.store.all_stock().await?, &held).await
    }

    /// Reserves for `shop`'s orders answer an error (`None`: none do).
    pub fn fail_reserves_of(&self, shop: Option<ShopId>) {
        *self.failing_shop.lock().expect("lock") = shop;
    }

    /// An error for a reserve of a failing shop's token ([`LosableCache::fail_reserves_of`]).
    fn answer_reserve_of(&self, token: Token) -> PortResult<()> {
        if *self.failing_shop.lock().expect("lock") == Some(token.shop_id) {
            return Err(orderly_app::ports::PortError::unavailable("stock cache", "no answer in time (test)"));
        }
        Ok(())
    }

    /// Loses the cache right after each of the next `loads` loads.
    pub fn lose_after_loads(&self, loads: usize) {
        self.after_loads.store(loads, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl StockCache for LosableCache {
    async fn init(&self, levels: &[(CommodityId, StockLevel)], held: &[Held]) -> PortResult<()> {
        self.now().init(levels, held).await?;
        if self.after_loads.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            self.lose();
        }
        Ok(())
    }
    async fn reserve(&self, token: Token, lines: &[(CommodityId, u32)], claimed: bool) -> PortResult<Reserve> {
        self.answer_reserve_of(token)?;
        self.now().reserve(token, lines, claimed).await
    }
    fn keeps_checks(&self) -> bool {
        self.now().keeps_checks()
    }
    async fn reserve_checked(
        &self,
        token: Token,
        lines: &[(CommodityId, u32)],
        check_at_ms: u64,
    ) -> PortResult<Reserve> {
        self.answer_reserve_of(token)?;
        self.now().reserve_checked(token, lines, check_at_ms).await
    }
    async fn due_checks(&self, shops: &[ShopId], now_ms: u64, retry_at_ms: u64, max: usize) -> PortResult<Vec<Token>> {
        self.now().due_checks(shops, now_ms, retry_at_ms, max).await
    }
    async fn checks_done(&self, tokens: &[Token], handed_out_at_ms: u64) -> PortResult<()> {
        self.now().checks_done(tokens, handed_out_at_ms).await
    }
    async fn checks_armed(&self, shops: &[ShopId]) -> PortResult<usize> {
        self.now().checks_armed(shops).await
    }
    async fn claim(&self, token: Token) -> PortResult<Claim> {
        let claim = self.now().claim(token).await?;
        if self.at_next_claim.swap(false, Ordering::SeqCst) {
            self.lose();
            self.reload().await?;
        }
        if claim == Claim::Missing && self.reload_at_missing_claim.swap(false, Ordering::SeqCst) {
            self.reload().await?;
        }
        Ok(claim)
    }
    async fn confirm(&self, token: Token, deductions: &[StockChange]) -> PortResult<()> {
        self.now().confirm(token, deductions).await
    }
    async fn release(&self, token: Token) -> PortResult<Option<TokenState>> {
        self.now().release(token).await
    }
    async fn release_if_reserved(&self, token: Token) -> PortResult<Option<TokenState>> {
        self.now().release_if_reserved(token).await
    }
    async fn keep_if_reserved(&self, token: Token) -> PortResult<Option<TokenState>> {
        self.now().keep_if_reserved(token).await
    }
    async fn restock(&self, restock: &Restock) -> PortResult<()> {
        self.now().restock(restock).await
    }
    async fn available(&self, ids: &[CommodityId]) -> PortResult<Vec<Option<u64>>> {
        self.now().available(ids).await
    }
}
