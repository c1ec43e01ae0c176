//! Shared set-up for the flow tests: the standalone profile on a temporary directory, a manual clock,
//! and the seed's catalog (commodity 1 from shop 100001 at 29.99, commodity 2 from shop 100002 at 49.99).
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use orderly_app::model::{
    IdempotencyRecord, Order, OutboxEvent, Outgoing, Restock, StockChange, StockLevel, StoredAnswer, Token, TokenState,
};
use orderly_app::ports::{
    ChangeResult, Claim, CreateOutcome, CreateRequest, Held, IdempotencyBegin, OrderChange, PortError, PortResult,
    Reserve,
};
use orderly_app::time::ManualClock;
use orderly_app::{Clock, FlowConfig, Orderly, Ports, StockCache, Store};
use orderly_domain::{CatalogEntry, CommodityId, Money, OrderNo, OrderState, PlaceOrderBody, ShopId, Uid};
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
        let defaults = LocalConfig::default();
        let fresh = LocalStockCache::new(Arc::clone(&self.clock), defaults.token_ttl_ms, defaults.settled_token_ttl_ms);
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

/// A store whose writes fail while their flag is set: the pending view, the idempotency answer (the
/// one store write after the publish), the deletion of pending views; and that counts its catalog reads.
#[derive(Debug)]
pub struct FaultyStore {
    pub inner: Arc<dyn Store>,
    pub pending_down: AtomicBool,
    /// The pending view's write answers an error but lands after the entry's clean-up (a write cut
    /// off by the entry's deadline that the database still carries out).
    pub pending_lands_late: AtomicBool,
    pub late_views: std::sync::Mutex<Vec<Order>>,
    pub answer_down: AtomicBool,
    pub forget_down: AtomicBool,
    /// The entry's views and creates go to the inner store as one write (the standalone store's), and
    /// with `one_write_fails_after` the write lands but answers an error (its sync cut off).
    pub one_write: AtomicBool,
    pub one_write_fails_after: AtomicBool,
    /// Catalog entries read (`Store::commodity`), and catalog versions read.
    pub commodity_reads: AtomicUsize,
    pub catalog_version_reads: AtomicUsize,
    /// A catalog version read waits for `catalog_version_release`, then fails if
    /// `catalog_version_fails`.
    pub catalog_version_held: AtomicBool,
    pub catalog_version_release: tokio::sync::Notify,
    pub catalog_version_fails: AtomicBool,
}

impl FaultyStore {
    pub fn install(orderly: &mut Orderly, ports: &mut Ports) -> Arc<FaultyStore> {
        let store = Arc::new(FaultyStore {
            inner: Arc::clone(&ports.store),
            pending_down: AtomicBool::new(false),
            pending_lands_late: AtomicBool::new(false),
            late_views: std::sync::Mutex::new(Vec::new()),
            answer_down: AtomicBool::new(false),
            forget_down: AtomicBool::new(false),
            one_write: AtomicBool::new(false),
            one_write_fails_after: AtomicBool::new(false),
            commodity_reads: AtomicUsize::new(0),
            catalog_version_reads: AtomicUsize::new(0),
            catalog_version_held: AtomicBool::new(false),
            catalog_version_release: tokio::sync::Notify::new(),
            catalog_version_fails: AtomicBool::new(false),
        });
        rewire(orderly, ports, |ports| ports.store = Arc::clone(&store) as Arc<dyn Store>);
        store
    }
}

fn fails_if(flag: &AtomicBool) -> PortResult<()> {
    if flag.load(Ordering::SeqCst) {
        return Err(PortError::unavailable("store", "injected: down"));
    }
    Ok(())
}

#[async_trait]
impl Store for FaultyStore {
    async fn put_commodities(&self, entries: &[CatalogEntry]) -> PortResult<()> {
        self.inner.put_commodities(entries).await
    }
    async fn commodity(&self, id: CommodityId) -> PortResult<Option<CatalogEntry>> {
        self.commodity_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.commodity(id).await
    }
    async fn catalog_version(&self) -> PortResult<u64> {
        self.catalog_version_reads.fetch_add(1, Ordering::SeqCst);
        if self.catalog_version_held.load(Ordering::SeqCst) {
            self.catalog_version_release.notified().await;
        }
        fails_if(&self.catalog_version_fails)?;
        self.inner.catalog_version().await
    }
    async fn add_stock(&self, id: CommodityId, quantity: u64) -> PortResult<StockLevel> {
        self.inner.add_stock(id, quantity).await
    }
    async fn stock(&self, ids: &[CommodityId]) -> PortResult<Vec<Option<StockLevel>>> {
        self.inner.stock(ids).await
    }
    async fn all_stock(&self) -> PortResult<Vec<(CommodityId, StockLevel)>> {
        self.inner.all_stock().await
    }
    async fn insert_pending(&self, orders: &[Order]) -> PortResult<()> {
        fails_if(&self.pending_down)?;
        if self.pending_lands_late.load(Ordering::SeqCst) {
            self.late_views.lock().expect("lock").extend_from_slice(orders);
            return Err(PortError::unavailable("store", "injected: cut off by the deadline"));
        }
        self.inner.insert_pending(orders).await
    }
    async fn insert_pending_publishing(
        &self,
        orders: &[Order],
        creates: Vec<Outgoing>,
    ) -> PortResult<Option<Vec<Outgoing>>> {
        if !self.one_write.load(Ordering::SeqCst) {
            return self.insert_pending(orders).await.map(|()| Some(creates));
        }
        let published = self.inner.insert_pending_publishing(orders, creates).await?;
        fails_if(&self.one_write_fails_after)?;
        Ok(published)
    }
    async fn forget_pending(&self, order_nos: &[OrderNo]) -> PortResult<()> {
        fails_if(&self.forget_down)?;
        self.inner.forget_pending(order_nos).await
    }
    async fn pending_orders(&self) -> PortResult<Vec<Order>> {
        self.inner.pending_orders().await
    }
    async fn create_orders(&self, batch: &[CreateRequest], now_ms: u64) -> PortResult<Vec<CreateOutcome>> {
        self.inner.create_orders(batch, now_ms).await
    }
    async fn order(&self, order_no: OrderNo) -> PortResult<Option<Order>> {
        self.inner.order(order_no).await
    }
    async fn orders_of(&self, buyer: Uid, before: Option<OrderNo>, limit: usize) -> PortResult<Vec<Order>> {
        self.inner.orders_of(buyer, before, limit).await
    }
    async fn audit_view(&self) -> PortResult<(Vec<Order>, Vec<(CommodityId, StockLevel)>)> {
        self.inner.audit_view().await
    }
    async fn change_order(&self, order_no: OrderNo, change: OrderChange, now_ms: u64) -> ChangeResult {
        self.inner.change_order(order_no, change, now_ms).await
    }
    async fn payments_due(&self, now_ms: u64, limit: usize) -> PortResult<Vec<OrderNo>> {
        self.inner.payments_due(now_ms, limit).await
    }
    async fn postpone_payment_check(&self, order_no: OrderNo, at_ms: u64) -> PortResult<()> {
        self.inner.postpone_payment_check(order_no, at_ms).await
    }
    async fn payments_pending(&self) -> PortResult<usize> {
        self.inner.payments_pending().await
    }
    async fn outbox(&self, limit: usize) -> PortResult<Vec<(u64, OutboxEvent)>> {
        self.inner.outbox(limit).await
    }
    async fn outbox_done(&self, ids: &[u64]) -> PortResult<()> {
        self.inner.outbox_done(ids).await
    }
    async fn idempotency_begin(
        &self,
        buyer: Uid,
        key: &str,
        record: &IdempotencyRecord,
    ) -> PortResult<IdempotencyBegin> {
        self.inner.idempotency_begin(buyer, key, record).await
    }
    async fn idempotency_answer(&self, buyer: Uid, key: &str, answer: StoredAnswer) -> PortResult<()> {
        fails_if(&self.answer_down)?;
        self.inner.idempotency_answer(buyer, key, answer).await
    }
    async fn meta(&self, key: &str) -> PortResult<Option<u64>> {
        self.inner.meta(key).await
    }
    async fn replace_meta(&self, key: &str, expected: Option<u64>, value: u64) -> PortResult<bool> {
        self.inner.replace_meta(key, expected, value).await
    }
    async fn fence(&self, name: &str, fence: u64) -> PortResult<bool> {
        self.inner.fence(name, fence).await
    }
    async fn lease(&self, name: &str, holder: u64, now_ms: u64, until_ms: u64) -> PortResult<bool> {
        self.inner.lease(name, holder, now_ms, until_ms).await
    }
}
