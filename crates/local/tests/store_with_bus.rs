//! The standalone store opened with its bus: a change's timers and charges are bus messages written in
//! the change's own batch (no outbox, no relay), restocks still go through the outbox, and a message so
//! written is delivered even when a scan already moved the topic's low water past its due time.

use std::collections::HashSet;
use std::sync::Arc;

use orderly_app::model::{Message, OutboxEvent, Outgoing, Token, Topic};
use orderly_app::ports::{CreateOutcome, CreateRequest};
use orderly_app::time::ManualClock;
use orderly_app::{Bus, Store};
use orderly_contract::store::{A, SHOP, T0_MS, order};
use orderly_domain::{CatalogEntry, Money, OrderAction, OrderNo, OrderState};
use orderly_local::{Durability, LocalBus, LocalDb, LocalStore};

const UNPAID_MS: u64 = 900_000;

struct Fixture {
    store: LocalStore,
    bus: Arc<LocalBus>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let db = LocalDb::open(dir.path(), Durability::Os).expect("db");
    let bus = Arc::new(LocalBus::new(db.clone(), clock.clone(), 30_000).expect("bus"));
    let store = LocalStore::with_bus(db, Arc::clone(&bus)).expect("store");
    store
        .put_commodities(&[CatalogEntry { commodity_id: A, shop_id: SHOP, unit_price: Money::from_cents(100) }])
        .await
        .expect("catalog");
    store.add_stock(A, 10).await.expect("stock");
    Fixture { store, bus, clock, _dir: dir }
}

fn create(n: u64, pay_at_once: bool) -> CreateRequest {
    let order = order(n, &[(A, 2)], pay_at_once);
    CreateRequest {
        token: Some(Token::entry(order.order_no, SHOP)),
        short_of: None,
        unpaid_deadline_ms: T0_MS + UNPAID_MS,
        order,
    }
}

/// Every message of `topic` due now, acked.
async fn take(bus: &LocalBus, topic: Topic) -> HashSet<OrderNo> {
    let deliveries = bus.receive(topic, 100).await.expect("receive");
    let receipts: Vec<Vec<u8>> = deliveries.iter().map(|d| d.receipt.clone()).collect();
    bus.ack(&receipts).await.expect("ack");
    deliveries
        .into_iter()
        .map(|d| match d.message {
            Message::UnpaidTimeout { order_no } | Message::Charge { order_no } => order_no,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn a_create_queues_its_timer_and_charge_in_its_own_write() {
    let f = fixture().await;
    // Empty scans first: each topic's low water moves to "now", past the charge about to be due now.
    assert!(take(&f.bus, Topic::Charge).await.is_empty());
    assert!(take(&f.bus, Topic::UnpaidTimeout).await.is_empty());

    let requests = [create(1, true), create(2, false)];
    let outcomes = f.store.create_orders(&requests, T0_MS).await.expect("create");
    assert!(outcomes.iter().all(|o| matches!(o, CreateOutcome::Created(_))), "{outcomes:?}");
    let (paid_at_once, later) = (requests[0].order.order_no, requests[1].order.order_no);

    assert!(f.store.outbox(10).await.expect("outbox").is_empty(), "nothing left for the relay");
    assert_eq!(take(&f.bus, Topic::Charge).await, HashSet::from([paid_at_once]), "the charge is due at once");
    assert!(take(&f.bus, Topic::UnpaidTimeout).await.is_empty(), "the timers are not due yet");
    f.clock.advance_ms(UNPAID_MS);
    assert_eq!(take(&f.bus, Topic::UnpaidTimeout).await, HashSet::from([paid_at_once, later]));

    // A buyer's pay queues nothing on the bus; a cancel's restock is the cache's, through the outbox.
    let cancelled = f.store.transition(later, OrderAction::Cancel, T0_MS + 1).await.expect("io").expect("allowed");
    assert_eq!(cancelled.state, OrderState::Cancelled);
    let events: Vec<OutboxEvent> = f.store.outbox(10).await.expect("outbox").into_iter().map(|(_, e)| e).collect();
    assert!(matches!(events.as_slice(), [OutboxEvent::RestockCache(_)]), "{events:?}");

    // Written once in the buyer's index, the orders are still listed after their changes.
    let listed: HashSet<OrderNo> = f
        .store
        .orders_of(requests[0].order.buyer, None, 10)
        .await
        .expect("orders")
        .into_iter()
        .map(|o| o.order_no)
        .collect();
    assert_eq!(listed, HashSet::from([paid_at_once, later]));
}

#[tokio::test]
async fn a_pending_views_index_entry_serves_its_created_order() {
    let f = fixture().await;
    let request = create(3, false);
    f.store.insert_pending(std::slice::from_ref(&request.order)).await.expect("pending view");
    f.store.create_orders(std::slice::from_ref(&request), T0_MS).await.expect("create");
    let listed = f.store.orders_of(request.order.buyer, None, 10).await.expect("orders");
    assert_eq!(
        listed.iter().map(|o| (o.order_no, o.state)).collect::<Vec<_>>(),
        vec![(request.order.order_no, OrderState::ToPay)]
    );
}

#[tokio::test]
async fn the_entrys_pending_views_and_creates_are_one_write() {
    let f = fixture().await;
    let orders = [order(5, &[(A, 1)], false), order(6, &[(A, 1)], true)];
    let creates: Vec<Outgoing> = orders
        .iter()
        .map(|o| Outgoing { message: Message::CreateOrder(Box::new(o.clone())), deliver_at_ms: T0_MS })
        .collect();
    // An empty scan first: the topic's low water moves past the creates about to be due now.
    assert!(f.bus.receive(Topic::CreateOrder, 10).await.expect("receive").is_empty());
    let unpublished = f.store.insert_pending_publishing(&orders, creates.clone()).await.expect("written");
    assert!(unpublished.is_none(), "published with the views");
    for o in &orders {
        let view = f.store.order(o.order_no).await.expect("read").expect("a pending view");
        assert_eq!(view.state, OrderState::Pending);
    }
    let published: HashSet<OrderNo> = f
        .bus
        .receive(Topic::CreateOrder, 10)
        .await
        .expect("receive")
        .into_iter()
        .map(|d| match d.message {
            Message::CreateOrder(order) => order.order_no,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(published, orders.iter().map(|o| o.order_no).collect());

    // A store without its bus writes the views only and gives the creates back, for the caller to publish.
    let dir = tempfile::tempdir().expect("temp dir");
    let alone = LocalStore::new(LocalDb::open(dir.path(), Durability::Os).expect("db")).expect("store");
    assert_eq!(alone.insert_pending_publishing(&orders, creates.clone()).await.expect("written"), Some(creates));
    assert!(alone.order(orders[0].order_no).await.expect("read").is_some());
}
