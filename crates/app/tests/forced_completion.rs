//! Issue 10: every answer tells the truth. Faults injected through the ports: the store failing around
//! the create's publish, and a publish that lands but answers an error or fails without landing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use common::*;
use orderly_app::Actor;
use orderly_app::model::{Delivery, Message, Outgoing, Topic};
use orderly_app::ports::{BusDepth, ChangeRejection, PortError, PortResult};
use orderly_app::time::ManualClock;
use orderly_app::{Bus, OrderError, PlaceError, Ports, StockCache, Store};
use orderly_domain::{OrderNo, OrderState};

/// A bus whose publish of creates answers an error while `lying` (it landed: a confirm lost with the
/// broker's connection), `taken` (it landed and a worker took the creates before the entry heard the
/// error: their entry tokens are claimed) or `down` (it did not land) is set, and counts the creates it was
/// handed whose pending view the store did not hold yet.
#[derive(Debug)]
struct FaultyBus {
    inner: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    cache: Arc<dyn StockCache>,
    lying: AtomicBool,
    taken: AtomicBool,
    down: AtomicBool,
    creates_without_view: AtomicUsize,
}

impl FaultyBus {
    /// Also puts a pass-through store in front (no fault set): it does not publish with the pending
    /// views, as the standalone store does, so the creates go through this bus, as on a cluster.
    fn install(orderly: &mut orderly_app::Orderly, ports: &mut Ports) -> Arc<FaultyBus> {
        FaultyStore::install(orderly, ports);
        let bus = Arc::new(FaultyBus {
            inner: Arc::clone(&ports.bus),
            store: Arc::clone(&ports.store),
            cache: Arc::clone(&ports.cache),
            lying: AtomicBool::new(false),
            taken: AtomicBool::new(false),
            down: AtomicBool::new(false),
            creates_without_view: AtomicUsize::new(0),
        });
        rewire(orderly, ports, |ports| ports.bus = Arc::clone(&bus) as Arc<dyn Bus>);
        bus
    }
}

#[async_trait]
impl Bus for FaultyBus {
    async fn publish(&self, messages: Vec<Outgoing>) -> PortResult<()> {
        for outgoing in &messages {
            if let Message::CreateOrder(order) = &outgoing.message
                && self.store.order(order.order_no).await?.is_none()
            {
                self.creates_without_view.fetch_add(1, Ordering::SeqCst);
            }
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(PortError::unavailable("bus", "injected: down"));
        }
        let entry_tokens: Vec<_> = messages
            .iter()
            .filter_map(|outgoing| match &outgoing.message {
                Message::CreateOrder(order) => Some(order.entry_token()),
                _ => None,
            })
            .collect();
        self.inner.publish(messages).await?;
        if self.taken.load(Ordering::SeqCst) {
            for token in entry_tokens {
                self.cache.claim(token).await?;
            }
            return Err(PortError::unavailable("bus", "injected: confirm lost, the create already taken"));
        }
        if self.lying.load(Ordering::SeqCst) {
            return Err(PortError::unavailable("bus", "injected: confirm lost"));
        }
        Ok(())
    }
    async fn publish_guards(&self, messages: Vec<Outgoing>) -> PortResult<()> {
        self.inner.publish_guards(messages).await
    }
    async fn receive(&self, topic: Topic, max: usize) -> PortResult<Vec<Delivery>> {
        self.inner.receive(topic, max).await
    }
    async fn ack(&self, receipts: &[Vec<u8>]) -> PortResult<()> {
        self.inner.ack(receipts).await
    }
    async fn retry(&self, receipt: &[u8], at_ms: u64) -> PortResult<()> {
        self.inner.retry(receipt, at_ms).await
    }
    async fn dead_letter(&self, receipt: &[u8], reason: &str) -> PortResult<()> {
        self.inner.dead_letter(receipt, reason).await
    }
    async fn depth(&self) -> PortResult<BusDepth> {
        self.inner.depth().await
    }
}

/// Defect 1: the store fails right after the create is durable (no idempotency answer stored). The
/// buyer hears 200 with the numbers, and the orders are created and paid — before the fix the answer was
/// an error for an order that then existed and was charged.
#[tokio::test]
async fn a_store_failure_after_the_publish_still_answers_success() {
    let Harness { mut orderly, mut ports, clock, .. } = harness(10).await;
    let store = FaultyStore::install(&mut orderly, &mut ports);
    store.answer_down.store(true, Ordering::SeqCst);
    let answer = orderly.place_orders(&seed_body(), Some("k-1")).await;
    let order_nos = answer.expect("the creates were durable: success");
    assert_eq!(order_nos.len(), 2);
    store.answer_down.store(false, Ordering::SeqCst);
    orderly.drain().await.expect("workers run");
    for order_no in &order_nos {
        assert_eq!(state(&ports, *order_no).await, OrderState::Paid);
    }
    // A retry with the key is answered the same numbers and creates nothing more.
    assert_eq!(orderly.place_orders(&seed_body(), Some("k-1")).await.expect("retry"), order_nos);
    orderly.drain().await.expect("workers run");
    assert_eq!(ports.payments.succeeded().await.expect("ledger").len(), 2);
    settle_and_audit(&orderly, &clock).await;
}

/// A retry with a key whose first attempt took the last unit and got no stored answer: the commodity
/// is sold out now — by that attempt — and the entry remembers it, but the retry must still be answered
/// the first attempt's numbers (its create is on the bus), not "sold out" from memory.
#[tokio::test]
async fn a_retry_is_not_answered_sold_out_by_its_own_reservation() {
    let Harness { mut orderly, mut ports, clock, .. } = harness(1).await;
    let store = FaultyStore::install(&mut orderly, &mut ports);
    let cart = body(5, false, &[(1, 1)]);
    store.answer_down.store(true, Ordering::SeqCst);
    let order_nos = orderly.place_orders(&cart, Some("k-last")).await.expect("the last unit");
    store.answer_down.store(false, Ordering::SeqCst);
    let other = orderly.place_orders(&body(6, false, &[(1, 1)]), None).await;
    assert!(matches!(other, Err(PlaceError::SoldOut { .. })), "{other:?}: and now remembered so");
    let retried = orderly.place_orders(&cart, Some("k-last")).await;
    assert_eq!(retried.expect("the retry is the first attempt's success"), order_nos);
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&ports, order_nos[0]).await, OrderState::ToPay);
    settle_and_audit(&orderly, &clock).await;
}

/// Defect 5, second half: an accepted number is never "not found". The pending view is in the store
/// before the create is handed to the bus (in the standalone profile the publish's sync then makes both
/// durable together, so a crash right after the answer keeps the view), and the buyer's queries and
/// cancel find the order from the answer on.
#[tokio::test]
async fn the_pending_view_is_written_before_the_create_is_published() {
    let Harness { mut orderly, mut ports, clock, .. } = harness(10).await;
    let bus = FaultyBus::install(&mut orderly, &mut ports);
    let order_nos = orderly.place_orders(&seed_body(), None).await.expect("accepted");
    assert_eq!(bus.creates_without_view.load(Ordering::SeqCst), 0, "every create had its view already");
    let buyer = Actor::Buyer(seed_body().uid);
    for order_no in &order_nos {
        let seen = orderly.order(buyer, *order_no).await.expect("found before any worker ran");
        assert_eq!(seen.state, OrderState::Pending);
    }
    // A cancel before the create is refused as too early, never "no such order".
    let cancel = orderly.cancel(buyer, order_nos[0]).await;
    assert!(
        matches!(
            cancel,
            Err(OrderError::Refused(ChangeRejection::Transition(
                orderly_domain::TransitionRejection::NotCreatedYet { .. }
            )))
        ),
        "{cancel:?}"
    );
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&ports, order_nos[0]).await, OrderState::Paid);
    settle_and_audit(&orderly, &clock).await;
}

/// The pending view cannot be written: 503, nothing held, nothing published, nothing found.
#[tokio::test]
async fn a_failed_pending_view_answers_an_error_and_leaves_nothing() {
    let Harness { mut orderly, mut ports, clock, .. } = harness(10).await;
    let store = FaultyStore::install(&mut orderly, &mut ports);
    store.pending_down.store(true, Ordering::SeqCst);
    let answer = orderly.place_orders(&seed_body(), None).await;
    assert!(matches!(answer, Err(PlaceError::Unavailable(_))), "{answer:?}");
    store.pending_down.store(false, Ordering::SeqCst);
    assert_eq!(stock(&ports, 1).await, (10, Some(10)), "nothing held after the error answer");
    orderly.drain().await.expect("workers run");
    let (orders, _) = ports.store.audit_view().await.expect("view");
    assert!(orders.is_empty(), "{orders:?}");
    settle_and_audit(&orderly, &clock).await;
}

/// The pending view's write answered an error (the entry's deadline cut it off) but the database
/// carried it out after the entry had cleaned up: without a key the view left behind ends `rejected`,
/// holding nothing, never created behind the 503. Before, the entry did not refuse the late create
/// there ("nothing is published yet"), and the reservation check published one from the view.
#[tokio::test]
async fn a_pending_view_that_lands_after_its_error_answer_creates_nothing() {
    let Harness { mut orderly, mut ports, clock, .. } = harness(10).await;
    let store = FaultyStore::install(&mut orderly, &mut ports);
    store.pending_lands_late.store(true, Ordering::SeqCst);
    let answer = orderly.place_orders(&seed_body(), None).await;
    assert!(matches!(answer, Err(PlaceError::Unavailable(_))), "{answer:?}");
    store.pending_lands_late.store(false, Ordering::SeqCst);
    let late = std::mem::take(&mut *store.late_views.lock().expect("lock"));
    ports.store.insert_pending(&late).await.expect("the write lands after the clean-up");
    clock.advance_ms(orderly.config().reservation_check_delay_ms);
    orderly.drain().await.expect("workers run");
    let (orders, _) = ports.store.audit_view().await.expect("view");
    assert_eq!(orders.len(), 2, "{orders:?}");
    assert!(orders.iter().all(|o| o.state == OrderState::Rejected), "{orders:?}");
    assert_eq!(stock(&ports, 1).await, (10, Some(10)));
    assert!(ports.payments.succeeded().await.expect("ledger").is_empty(), "nothing charged");
    settle_and_audit(&orderly, &clock).await;
}

/// A cart answered 503 because its publish failed without landing, whose pending views could not be
/// deleted either (the store failed too): the views are left behind, the faults cleared again.
async fn views_left_behind(idempotency_key: Option<&str>) -> Harness {
    let mut harness = harness(10).await;
    let store = FaultyStore::install(&mut harness.orderly, &mut harness.ports);
    let bus = FaultyBus::install(&mut harness.orderly, &mut harness.ports);
    bus.down.store(true, Ordering::SeqCst);
    store.forget_down.store(true, Ordering::SeqCst);
    let answer = harness.orderly.place_orders(&seed_body(), idempotency_key).await;
    assert!(matches!(answer, Err(PlaceError::Unavailable(_))), "{answer:?}");
    bus.down.store(false, Ordering::SeqCst);
    store.forget_down.store(false, Ordering::SeqCst);
    harness
}

/// The publish fails and the pending views cannot be deleted either: without a key the answer is 503,
/// the late creates are refused, and the reservation check settles the views left behind — it
/// publishes their creates again and they end `rejected`, holding nothing. Before, they stayed
/// `pending` for ever.
#[tokio::test]
async fn a_pending_view_left_behind_an_error_answer_ends_rejected() {
    let Harness { orderly, ports, clock, .. } = views_left_behind(None).await;
    let (orders, _) = ports.store.audit_view().await.expect("view");
    assert_eq!(orders.len(), 2, "the views were left behind");
    clock.advance_ms(orderly.config().reservation_check_delay_ms);
    orderly.drain().await.expect("workers run");
    let (orders, _) = ports.store.audit_view().await.expect("view");
    assert!(orders.iter().all(|o| o.state == OrderState::Rejected), "{orders:?}");
    assert_eq!(stock(&ports, 1).await, (10, Some(10)));
    assert_eq!(stock(&ports, 2).await, (10, Some(10)));
    assert!(ports.payments.succeeded().await.expect("ledger").is_empty(), "nothing charged");
    settle_and_audit(&orderly, &clock).await;
}

/// The same with an Idempotency-Key: the numbers stay the buyer's, so the views left behind are
/// completed by their check (created and paid), and the buyer's retry with the key is answered those
/// numbers, charging nothing more.
#[tokio::test]
async fn a_pending_view_left_behind_with_a_key_is_completed_by_its_check() {
    let Harness { orderly, ports, clock, .. } = views_left_behind(Some("k-9")).await;
    clock.advance_ms(orderly.config().reservation_check_delay_ms);
    orderly.drain().await.expect("workers run");
    let (orders, _) = ports.store.audit_view().await.expect("view");
    assert_eq!(orders.len(), 2);
    assert!(orders.iter().all(|o| o.state == OrderState::Paid), "{orders:?}");
    let mut numbers: Vec<OrderNo> = orders.iter().map(|o| o.order_no).collect();
    let mut retried = orderly.place_orders(&seed_body(), Some("k-9")).await.expect("retry");
    numbers.sort_unstable();
    retried.sort_unstable();
    assert_eq!(retried, numbers, "the retry is answered the same numbers");
    orderly.drain().await.expect("workers run");
    assert_eq!(ports.payments.succeeded().await.expect("ledger").len(), 2, "charged once each");
    settle_and_audit(&orderly, &clock).await;
}

/// Defect 1, the publish side: the create landed but the publish answered an error. The buyer hears
/// 503 and nothing may come of it: the late create is refused its reservation and ends `rejected`,
/// every unit is back, nothing is charged.
#[tokio::test]
async fn a_publish_that_landed_behind_an_error_answer_creates_nothing() {
    let Harness { mut orderly, mut ports, clock, .. } = harness(10).await;
    let bus = FaultyBus::install(&mut orderly, &mut ports);
    bus.lying.store(true, Ordering::SeqCst);
    let answer = orderly.place_orders(&seed_body(), None).await;
    assert!(matches!(answer, Err(PlaceError::Unavailable(_))), "{answer:?}");
    bus.lying.store(false, Ordering::SeqCst);
    nothing_came_of_the_landed_creates(&orderly, &ports, &clock).await;
}

/// After an error answer whose creates landed on the bus (the seed cart, stock 10): nothing is held,
/// the creates end `rejected`, nothing is charged, and the buyer's retry (a new cart, no key) is created.
async fn nothing_came_of_the_landed_creates(orderly: &orderly_app::Orderly, ports: &Ports, clock: &ManualClock) {
    assert_eq!(stock(ports, 1).await, (10, Some(10)), "nothing held after the error answer");
    orderly.drain().await.expect("workers run");
    let (orders, _) = ports.store.audit_view().await.expect("view");
    assert_eq!(orders.len(), 2, "the creates did land");
    assert!(orders.iter().all(|o| o.state == OrderState::Rejected), "{orders:?}");
    assert_eq!(stock(ports, 1).await, (10, Some(10)));
    assert_eq!(stock(ports, 2).await, (10, Some(10)));
    assert!(ports.payments.succeeded().await.expect("ledger").is_empty(), "nothing charged");
    let order_nos = orderly.place_orders(&seed_body(), None).await.expect("accepted");
    orderly.drain().await.expect("workers run");
    assert_eq!(state(ports, order_nos[0]).await, OrderState::Paid);
    settle_and_audit(orderly, clock).await;
}

/// The standalone entry's one write (views and creates) landed, but its sync answered an error: the
/// buyer hears an error, so nothing may be created — the creates already on the bus end `rejected`,
/// holding nothing, as after a publish that landed behind an error.
#[tokio::test]
async fn a_one_write_that_landed_behind_an_error_answer_creates_nothing() {
    let Harness { mut orderly, mut ports, clock, .. } = harness(10).await;
    let store = FaultyStore::install(&mut orderly, &mut ports);
    store.one_write.store(true, Ordering::SeqCst);
    store.one_write_fails_after.store(true, Ordering::SeqCst);
    let answer = orderly.place_orders(&seed_body(), None).await;
    assert!(matches!(answer, Err(PlaceError::Unavailable(_))), "{answer:?}");
    store.one_write_fails_after.store(false, Ordering::SeqCst);
    // The retry goes the one-write way too.
    nothing_came_of_the_landed_creates(&orderly, &ports, &clock).await;
}

/// The create landed behind an error of its publish, and a worker took it (claimed its reservation)
/// before the entry cleaned up: the cart will be created, so the answer is success, and its units stay
/// with it. Before, the clean-up released the claimed reservation while the worker created the order
/// on it: a unit back in the cache that the store had sold (cache 939, store 938 in a CI run on Kafka).
#[tokio::test]
async fn a_publish_taken_by_a_worker_behind_an_error_answers_success() {
    let Harness { mut orderly, mut ports, clock, .. } = harness(10).await;
    let bus = FaultyBus::install(&mut orderly, &mut ports);
    bus.taken.store(true, Ordering::SeqCst);
    let order_nos = orderly.place_orders(&seed_body(), None).await.expect("a worker holds the creates: success");
    bus.taken.store(false, Ordering::SeqCst);
    assert_eq!(order_nos.len(), 2);
    orderly.drain().await.expect("workers run");
    for order_no in &order_nos {
        assert_eq!(state(&ports, *order_no).await, OrderState::Paid);
    }
    assert_eq!(stock(&ports, 1).await, (9, Some(9)), "one unit sold, in the store and in the cache");
    settle_and_audit(&orderly, &clock).await;
}

/// A create backlog longer than the cache's token TTL (a worker outage of an hour): the accepted order's
/// claimed reservation does not expire under it, so the worker consumes it instead of reserving again —
/// before, the expired token's unit stayed taken in the cache for ever (cache 4, store 5 after the
/// create; found by the stock-conservation property).
#[tokio::test]
async fn a_create_queued_past_the_token_ttl_still_consumes_its_reservation() {
    let Harness { orderly, ports, clock, .. } = harness(6).await;
    let order_no = orderly.place_orders(&body(1, false, &[(1, 1)]), None).await.expect("accepted")[0];
    clock.advance_ms(orderly_local::LocalConfig::default().token_ttl_ms * 2);
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&ports, order_no).await, OrderState::ToPay);
    assert_eq!(stock(&ports, 1).await, (5, Some(5)), "one unit taken, in the store and in the cache");
    settle_and_audit(&orderly, &clock).await;
}
