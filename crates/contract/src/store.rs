//! The `Store` contract: the catalog and stock ledger, the batched create (atomic, idempotent, never
//! below zero), FSM transitions with their effects, the payment attempt and safe-pay set, the outbox,
//! idempotency keys, pages of a buyer's orders. Each case takes a fresh, empty store.

use std::sync::Arc;

use orderly_app::model::{IdempotencyRecord, Order, OutboxEvent, PaymentAttempt, StoredAnswer, Token};
use orderly_app::ports::{
    ChangeRejection, CreateOutcome, CreateRequest, IdempotencyBegin, OrderChange, PaymentResult, Store,
};
use orderly_domain::{
    CatalogEntry, CommodityId, Money, OrderAction, OrderLine, OrderNo, OrderState, ShopId, SnowflakeId,
    TransitionRejection, Uid,
};

/// Commodity A, sold by `SHOP` (an adapter's own tests may build on the suite's fixtures).
pub const A: CommodityId = CommodityId(1);
const B: CommodityId = CommodityId(2);
pub const SHOP: ShopId = ShopId(100_001);
const BUYER: Uid = Uid(7);
/// The suite's clock reading.
pub const T0_MS: u64 = 1_800_000_000_000;

fn order_no(n: u64) -> OrderNo {
    OrderNo::new(SnowflakeId(n), BUYER)
}

/// A `pending` order number `n` of the suite's buyer at `SHOP`, each line at 1.00.
pub fn order(n: u64, lines: &[(CommodityId, u32)], pay_at_once: bool) -> Order {
    let lines: Vec<OrderLine> = lines
        .iter()
        .map(|(id, quantity)| OrderLine { commodity_id: *id, quantity: *quantity, unit_price: Money::from_cents(100) })
        .collect();
    let total = Money::from_cents(lines.iter().map(|l| 100 * i64::from(l.quantity)).sum());
    Order {
        order_no: order_no(n),
        buyer: BUYER,
        to_uid: BUYER,
        shop_id: SHOP,
        pay_at_once,
        lines,
        total,
        state: OrderState::Pending,
        created_ms: T0_MS,
        updated_ms: T0_MS,
        payment_attempt: None,
        payment_id: None,
        last_decline: None,
        rejected_for: None,
        token_generation: None,
        stock_versions: Vec::new(),
        trace: None,
    }
}

fn create(order: &Order) -> CreateRequest {
    CreateRequest {
        order: order.clone(),
        token: Some(Token::entry(order.order_no, SHOP)),
        short_of: None,
        unpaid_deadline_ms: T0_MS + 900_000,
    }
}

async fn with_stock(store: &Arc<dyn Store>, stock: &[(CommodityId, u64)]) {
    let entries: Vec<CatalogEntry> = stock
        .iter()
        .map(|(id, _)| CatalogEntry { commodity_id: *id, shop_id: SHOP, unit_price: Money::from_cents(100) })
        .collect();
    store.put_commodities(&entries).await.expect("catalog");
    for (id, quantity) in stock {
        store.add_stock(*id, *quantity).await.expect("stock");
    }
}

async fn available(store: &Arc<dyn Store>, id: CommodityId) -> u64 {
    store.stock(&[id]).await.expect("stock")[0].expect("a ledger").available
}

async fn created(store: &Arc<dyn Store>, order: &Order) -> Order {
    let outcome = store.create_orders(&[create(order)], T0_MS).await.expect("create");
    let [CreateOutcome::Created(answered)] = outcome.as_slice() else { panic!("not created: {outcome:?}") };
    let stored = store.order(order.order_no).await.expect("read").expect("exists");
    assert_eq!(**answered, stored, "the answer is the order as stored");
    stored
}

/// Orders `1..=n` of the suite's buyer created (one unit of `A` each, from stock of its own) and each
/// with a payment attempt begun: `n` payments without an answer.
pub async fn orders_paying(store: &Arc<dyn Store>, n: u64) -> Vec<OrderNo> {
    with_stock(store, &[(A, n)]).await;
    let attempt = PaymentAttempt { started_ms: T0_MS, charge_deadline_ms: T0_MS + 2_000 };
    let mut paying = Vec::new();
    for i in 1..=n {
        let order = created(store, &order(i, &[(A, 1)], false)).await;
        store.begin_payment(order.order_no, attempt).await.expect("io").expect("allowed");
        paying.push(order.order_no);
    }
    paying
}

pub async fn catalog_and_stock_ledger(store: Arc<dyn Store>) {
    assert_eq!(store.commodity(A).await.expect("read"), None);
    let version = store.catalog_version().await.expect("version");
    with_stock(&store, &[(A, 10)]).await;
    let version_after = store.catalog_version().await.expect("version");
    assert_ne!(version_after, version, "a catalog write changes the version");
    let entry = store.commodity(A).await.expect("read").expect("entry");
    assert_eq!((entry.shop_id, entry.unit_price), (SHOP, Money::from_cents(100)));
    let level = store.add_stock(A, 5).await.expect("add");
    assert_eq!((level.shop_id, level.initial, level.available), (SHOP, 15, 15));
    assert!(level.version >= 2, "every increase bumps the version");
    assert_eq!(store.stock(&[A, B]).await.expect("stock")[1], None);
    assert_eq!(store.all_stock().await.expect("all").len(), 1);
    assert_eq!(store.catalog_version().await.expect("version"), version_after, "stock is not the catalog");
    let without_stock = CatalogEntry { commodity_id: B, shop_id: SHOP, unit_price: Money::from_cents(100) };
    store.put_commodities(&[without_stock]).await.expect("catalog");
    let version_last = store.catalog_version().await.expect("version");
    assert!(![version, version_after].contains(&version_last), "every catalog write changes the version");
    assert_eq!(store.all_stock().await.expect("all"), vec![(A, level)], "a commodity without stock has no ledger");
}

pub async fn create_deducts_stock_once_and_a_redelivery_changes_nothing(store: Arc<dyn Store>) {
    with_stock(&store, &[(A, 10), (B, 10)]).await;
    let pending = order(1, &[(A, 3), (B, 1)], true);
    store.insert_pending(std::slice::from_ref(&pending)).await.expect("pending");
    assert_eq!(store.order(pending.order_no).await.expect("read").map(|o| o.state), Some(OrderState::Pending));
    let order = created(&store, &pending).await;
    assert_eq!(order.state, OrderState::ToPay);
    assert_eq!(order.token_generation, Some(0), "the order remembers which reservation it consumed");
    assert_eq!((available(&store, A).await, available(&store, B).await), (7, 9));
    // Every change of a level bumps its version; the order records the versions its deductions made.
    let levels: Vec<u64> =
        store.stock(&[A, B]).await.expect("stock").into_iter().map(|l| l.expect("a ledger").version).collect();
    assert_eq!(order.stock_versions, levels);
    assert_eq!(order.deductions(), vec![(A, 3, levels[0]), (B, 1, levels[1])]);
    let events: Vec<OutboxEvent> = store.outbox(10).await.expect("outbox").into_iter().map(|(_, e)| e).collect();
    assert!(events.contains(&OutboxEvent::ScheduleUnpaidTimeout { order_no: order.order_no, at_ms: T0_MS + 900_000 }));
    assert!(events.contains(&OutboxEvent::Charge { order_no: order.order_no }), "pay at once");

    let again = store.create_orders(&[create(&pending)], T0_MS).await.expect("redelivery");
    assert!(matches!(again.as_slice(), [CreateOutcome::AlreadyDone(_)]), "{again:?}");
    assert_eq!(available(&store, A).await, 7, "deducted once");
    // A late pending view never overwrites a created order.
    store.insert_pending(&[pending]).await.expect("late pending");
    assert_eq!(store.order(order.order_no).await.expect("read").map(|o| o.state), Some(OrderState::ToPay));
}

pub async fn create_never_takes_stock_below_zero(store: Arc<dyn Store>) {
    with_stock(&store, &[(A, 3)]).await;
    let (first, second) = (order(1, &[(A, 2)], false), order(2, &[(A, 2)], false));
    let version = store.stock(&[A]).await.expect("stock")[0].expect("a ledger").version;
    let outcomes = store.create_orders(&[create(&first), create(&second)], T0_MS).await.expect("create");
    let [CreateOutcome::Created(created), CreateOutcome::Rejected { commodity_id: A }] = outcomes.as_slice() else {
        panic!("{outcomes:?}")
    };
    assert_eq!(created.stock_versions, vec![version + 1]);
    assert_eq!(available(&store, A).await, 1);
    let rejected = store.order(second.order_no).await.expect("read").expect("exists");
    assert_eq!((rejected.state, rejected.rejected_for), (OrderState::Rejected, Some(A)));
    // Without a reservation (the cache had no stock) an order is rejected, whatever the ledger says.
    let third = order(3, &[(A, 1)], false);
    let request = CreateRequest { token: None, ..create(&third) };
    assert_eq!(
        store.create_orders(&[request], T0_MS).await.expect("create"),
        vec![CreateOutcome::Rejected { commodity_id: A }]
    );
    assert_eq!(available(&store, A).await, 1);
    // … named for the commodity the cache lacked, when the worker says which.
    let fourth = order(4, &[(A, 1), (B, 1)], false);
    let request = CreateRequest { token: None, short_of: Some(B), ..create(&fourth) };
    assert_eq!(
        store.create_orders(&[request], T0_MS).await.expect("create"),
        vec![CreateOutcome::Rejected { commodity_id: B }]
    );
    let rejected = store.order(fourth.order_no).await.expect("read").expect("exists");
    assert_eq!(rejected.rejected_for, Some(B));
}

pub async fn a_duplicate_in_one_batch_is_created_once(store: Arc<dyn Store>) {
    with_stock(&store, &[(A, 10)]).await;
    let twice = order(1, &[(A, 4)], false);
    let outcomes = store.create_orders(&[create(&twice), create(&twice)], T0_MS).await.expect("create");
    assert!(matches!(outcomes.as_slice(), [CreateOutcome::Created(_), CreateOutcome::AlreadyDone(_)]), "{outcomes:?}");
    assert_eq!(available(&store, A).await, 6);
}

pub async fn cancel_returns_stock_once_with_a_restock_event(store: Arc<dyn Store>) {
    with_stock(&store, &[(A, 10)]).await;
    let order = created(&store, &order(1, &[(A, 4)], false)).await;
    let done: Vec<u64> = store.outbox(10).await.expect("outbox").into_iter().map(|(id, _)| id).collect();
    store.outbox_done(&done).await.expect("relayed");
    let cancelled =
        store.transition(order.order_no, OrderAction::Cancel, T0_MS + 1).await.expect("io").expect("allowed");
    assert_eq!(cancelled.state, OrderState::Cancelled);
    assert_eq!(available(&store, A).await, 10);
    let events = store.outbox(10).await.expect("outbox");
    let restocks: Vec<&OutboxEvent> =
        events.iter().map(|(_, e)| e).filter(|e| matches!(e, OutboxEvent::RestockCache(_))).collect();
    assert_eq!(restocks.len(), 1);
    if let OutboxEvent::RestockCache(restock) = restocks[0] {
        assert_eq!(restock.shop_id, SHOP);
        assert_eq!(restock.lines.iter().map(|(id, q, _)| (*id, *q)).collect::<Vec<_>>(), vec![(A, 4)]);
    }
    let again = store.transition(order.order_no, OrderAction::AutoCancel, T0_MS + 2).await.expect("io");
    assert!(matches!(again, Err(ChangeRejection::Transition(TransitionRejection::AlreadyFinal { .. }))), "{again:?}");
    assert_eq!(available(&store, A).await, 10, "returned once");
    let missing = store.transition(order_no(99), OrderAction::Cancel, T0_MS).await.expect("io");
    assert_eq!(missing, Err(ChangeRejection::NotFound));
}

pub async fn a_payment_attempt_blocks_cancel_and_settles_through_the_safe_pay_set(store: Arc<dyn Store>) {
    with_stock(&store, &[(A, 10)]).await;
    let order = created(&store, &order(1, &[(A, 1)], false)).await;
    let attempt = PaymentAttempt { started_ms: T0_MS, charge_deadline_ms: T0_MS + 2_000 };
    let paying = store.begin_payment(order.order_no, attempt).await.expect("io").expect("allowed");
    assert_eq!(paying.payment_attempt, Some(attempt));
    assert_eq!(store.begin_payment(order.order_no, attempt).await.expect("io"), Err(ChangeRejection::PaymentInFlight));
    assert_eq!(
        store.transition(order.order_no, OrderAction::Cancel, T0_MS).await.expect("io"),
        Err(ChangeRejection::PaymentInFlight)
    );
    assert_eq!(store.payments_pending().await.expect("count"), 1);
    assert!(store.payments_due(T0_MS + 1_999, 10).await.expect("due").is_empty(), "not due before the deadline");
    assert_eq!(store.payments_due(T0_MS + 2_000, 10).await.expect("due"), vec![order.order_no]);
    store.postpone_payment_check(order.order_no, T0_MS + 5_000).await.expect("postpone");
    assert_eq!(store.payments_pending().await.expect("count"), 1, "postponed, still one payment without an answer");
    assert!(store.payments_due(T0_MS + 4_999, 10).await.expect("due").is_empty());
    assert_eq!(store.payments_due(T0_MS + 5_000, 10).await.expect("due"), vec![order.order_no]);

    let paid = store
        .finish_payment(order.order_no, PaymentResult::Succeeded { payment_id: "pay-1".into() }, T0_MS + 10)
        .await
        .expect("io")
        .expect("allowed");
    assert_eq!((paid.state, paid.payment_id.as_deref(), paid.payment_attempt), (OrderState::Paid, Some("pay-1"), None));
    assert_eq!(store.payments_pending().await.expect("count"), 0);
    assert!(store.payments_due(T0_MS + 10_000, 10).await.expect("due").is_empty());
    assert_eq!(available(&store, A).await, 9, "paid stock stays sold");
}

pub async fn a_declined_payment_goes_back_to_to_pay(store: Arc<dyn Store>) {
    with_stock(&store, &[(A, 10)]).await;
    let order = created(&store, &order(1, &[(A, 1)], false)).await;
    let attempt = PaymentAttempt { started_ms: T0_MS, charge_deadline_ms: T0_MS + 2_000 };
    store.begin_payment(order.order_no, attempt).await.expect("io").expect("allowed");
    let declined = store
        .finish_payment(order.order_no, PaymentResult::Declined { reason: "insufficient_funds".into() }, T0_MS + 1)
        .await
        .expect("io")
        .expect("allowed");
    assert_eq!(declined.state, OrderState::ToPay);
    assert_eq!(declined.payment_attempt, None);
    assert_eq!(declined.last_decline.as_deref(), Some("insufficient_funds"));
    // A second answer for the same attempt (the reconciler's beside the charge's) finds it out of the set.
    store
        .finish_payment(order.order_no, PaymentResult::Declined { reason: "insufficient_funds".into() }, T0_MS + 2)
        .await
        .expect("io")
        .expect("allowed");
    assert_eq!(store.payments_pending().await.expect("count"), 0, "out of the set once");
    // Free to cancel again, and to try paying again.
    store.begin_payment(order.order_no, attempt).await.expect("io").expect("a new attempt");
    assert_eq!(store.payments_pending().await.expect("count"), 1);
}

pub async fn outbox_events_come_oldest_first_until_done(store: Arc<dyn Store>) {
    with_stock(&store, &[(A, 10)]).await;
    for n in 1..=3 {
        created(&store, &order(n, &[(A, 1)], false)).await;
    }
    let events = store.outbox(10).await.expect("outbox");
    assert_eq!(events.len(), 3);
    let ids: Vec<u64> = events.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    let first_two = store.outbox(2).await.expect("outbox");
    assert_eq!(first_two.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids[..2].to_vec());
    store.outbox_done(&ids[..2]).await.expect("done");
    assert_eq!(store.outbox(10).await.expect("outbox").iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![ids[2]]);
}

pub async fn idempotency_keys_pin_the_first_request(store: Arc<dyn Store>) {
    let record =
        IdempotencyRecord { request: "{\"a\":1}".into(), order_nos: vec![order_no(1), order_no(2)], answer: None };
    assert_eq!(store.idempotency_begin(BUYER, "k", &record).await.expect("begin"), IdempotencyBegin::Started);
    let retry = IdempotencyRecord { order_nos: vec![order_no(3), order_no(4)], ..record.clone() };
    assert_eq!(
        store.idempotency_begin(BUYER, "k", &retry).await.expect("begin"),
        IdempotencyBegin::Seen(record.clone())
    );
    let other = IdempotencyRecord { request: "{\"a\":2}".into(), ..record.clone() };
    assert_eq!(store.idempotency_begin(BUYER, "k", &other).await.expect("begin"), IdempotencyBegin::Mismatch);
    store.idempotency_answer(BUYER, "k", StoredAnswer::Accepted).await.expect("answer");
    let answered = IdempotencyRecord { answer: Some(StoredAnswer::Accepted), ..record.clone() };
    assert_eq!(store.idempotency_begin(BUYER, "k", &retry).await.expect("begin"), IdempotencyBegin::Seen(answered));
    // Keys are the caller's own.
    assert_eq!(store.idempotency_begin(Uid(8), "k", &other).await.expect("begin"), IdempotencyBegin::Started);
}

pub async fn a_buyers_orders_page_newest_first(store: Arc<dyn Store>) {
    with_stock(&store, &[(A, 10)]).await;
    for n in 1..=5 {
        store.insert_pending(&[order(n, &[(A, 1)], false)]).await.expect("pending");
    }
    let page: Vec<OrderNo> = store.orders_of(BUYER, None, 2).await.expect("page").iter().map(|o| o.order_no).collect();
    assert_eq!(page, vec![order_no(5), order_no(4)]);
    let next: Vec<OrderNo> =
        store.orders_of(BUYER, Some(order_no(4)), 10).await.expect("page").iter().map(|o| o.order_no).collect();
    assert_eq!(next, vec![order_no(3), order_no(2), order_no(1)]);
    assert!(store.orders_of(Uid(8), None, 10).await.expect("page").is_empty(), "another buyer has none");
}

pub async fn forgetting_pending_views_leaves_created_orders_alone(store: Arc<dyn Store>) {
    with_stock(&store, &[(A, 10)]).await;
    let (view, made) = (order(1, &[(A, 1)], false), order(2, &[(A, 2)], false));
    store.insert_pending(&[view.clone(), made.clone()]).await.expect("pending");
    let created = created(&store, &made).await;
    store.forget_pending(&[view.order_no, made.order_no, order_no(3)]).await.expect("forget");
    assert_eq!(store.order(view.order_no).await.expect("read"), None, "the pending view is gone");
    assert!(store.orders_of(BUYER, None, 10).await.expect("page").iter().all(|o| o.order_no != view.order_no));
    assert_eq!(store.order(made.order_no).await.expect("read"), Some(created), "a created order stays");
    assert_eq!(available(&store, A).await, 8);
    // A create that arrives after its view was deleted still creates the order.
    let late = store.create_orders(&[create(&view)], T0_MS).await.expect("late create");
    assert!(matches!(late.as_slice(), [CreateOutcome::Created(_)]), "{late:?}");
}

pub async fn meta_values_are_replaced_only_from_what_they_hold(store: Arc<dyn Store>) {
    assert_eq!(store.meta("lease").await.expect("read"), None);
    assert!(store.replace_meta("lease", None, 42).await.expect("create"), "absent: created");
    assert!(!store.replace_meta("lease", None, 7).await.expect("create"), "present: not created again");
    assert!(!store.replace_meta("lease", Some(41), 7).await.expect("replace"), "a stale expectation is refused");
    assert_eq!(store.meta("lease").await.expect("read"), Some(42), "refusals change nothing");
    assert!(store.replace_meta("lease", Some(42), 43).await.expect("replace"), "from what it holds");
    assert_eq!(store.meta("lease").await.expect("read"), Some(43));
    // Racing replacements from one value: exactly one wins.
    let racing = (0..8u64).map(|n| {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.replace_meta("lease", Some(43), 100 + n).await.expect("replace") })
    });
    let mut won = 0;
    for task in racing {
        won += usize::from(task.await.expect("task"));
    }
    assert_eq!(won, 1, "one of the racing replacements wins");
}

pub async fn a_fence_refuses_every_older_leader(store: Arc<dyn Store>) {
    assert!(store.fence("reconciler", 5).await.expect("fence"), "the first leader");
    assert!(store.fence("reconciler", 5).await.expect("fence"), "the same leader again");
    assert!(store.fence("reconciler", 9).await.expect("fence"), "a newer leader");
    assert!(!store.fence("reconciler", 5).await.expect("fence"), "the older one, back from a pause: refused");
    assert!(store.fence("outbox", 1).await.expect("fence"), "fences are apart by name");
    // Racing leaders: only the newest is ever told yes after it was seen.
    let racing = (10..18u64).map(|fence| {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.fence("reconciler", fence).await.expect("fence") })
    });
    futures_util::future::join_all(racing).await;
    assert!(store.fence("reconciler", 17).await.expect("fence"), "the newest");
    assert!(!store.fence("reconciler", 16).await.expect("fence"), "any older one refused");
}

pub async fn a_lease_has_one_holder_at_a_time(store: Arc<dyn Store>) {
    assert!(store.lease("reconciler", 1, 0, 100).await.expect("lease"), "free: taken");
    assert!(!store.lease("reconciler", 2, 50, 150).await.expect("lease"), "held by 1 until 100");
    assert!(store.lease("reconciler", 1, 50, 150).await.expect("lease"), "its holder renews it");
    assert!(store.lease("other", 2, 50, 150).await.expect("lease"), "leases are apart by name");
    assert!(store.lease("reconciler", 2, 150, 250).await.expect("lease"), "expired at 150: taken over");
    assert!(!store.lease("reconciler", 1, 160, 260).await.expect("lease"), "the old holder lost it");
    // Racing takers of a free lease: exactly one wins.
    let mut takers = Vec::new();
    for holder in 10..18u64 {
        let store = Arc::clone(&store);
        takers.push(tokio::spawn(async move { store.lease("race", holder, 0, 100).await }));
    }
    let mut won = 0;
    for taker in takers {
        won += usize::from(taker.await.expect("taker").expect("lease"));
    }
    assert_eq!(won, 1);
}

pub async fn racing_batches_never_sell_more_than_the_stock(store: Arc<dyn Store>) {
    with_stock(&store, &[(A, 50), (B, 1_000)]).await;
    let mut workers = Vec::new();
    for worker in 0..8u64 {
        let store = Arc::clone(&store);
        workers.push(tokio::spawn(async move {
            let batch: Vec<CreateRequest> =
                (0..10).map(|n| create(&order(1 + worker * 10 + n, &[(B, 1), (A, 1)], false))).collect();
            store.create_orders(&batch, T0_MS).await.expect("create")
        }));
    }
    let mut created_count = 0;
    for worker in workers {
        for outcome in worker.await.expect("worker") {
            match outcome {
                CreateOutcome::Created(_) => created_count += 1,
                CreateOutcome::Rejected { commodity_id } => assert_eq!(commodity_id, A),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(created_count, 50);
    assert_eq!((available(&store, A).await, available(&store, B).await), (0, 950));
}

/// Many changes at once, some of the same order (a store may decide them together): each is decided on
/// what the ones before it left, exactly one ending an order wins, stock comes back once per ended order
/// with one restock each, and every order's last accepted answer is the order as stored.
pub async fn racing_changes_are_each_decided_as_if_alone(store: Arc<dyn Store>) {
    with_stock(&store, &[(A, 100)]).await;
    let orders: Vec<Order> = {
        let mut orders = Vec::new();
        for n in 1..=20 {
            orders.push(created(&store, &order(n, &[(A, 2)], false)).await);
        }
        orders
    };
    assert_eq!(available(&store, A).await, 60);
    let relayed: Vec<u64> = store.outbox(100).await.expect("outbox").into_iter().map(|(id, _)| id).collect();
    store.outbox_done(&relayed).await.expect("relayed");
    let attempt = PaymentAttempt { started_ms: T0_MS + 1, charge_deadline_ms: T0_MS + 2_000 };
    let changes = [
        OrderChange::Action(OrderAction::Cancel),
        OrderChange::BeginPayment(attempt),
        OrderChange::Action(OrderAction::AutoCancel),
        OrderChange::Action(OrderAction::Cancel),
    ];
    let mut racing = Vec::new();
    for (i, order) in orders.iter().enumerate() {
        for k in 0..changes.len() {
            // Each order's changes start in a different order.
            let change = changes[(i + k) % changes.len()].clone();
            let (store, order_no) = (Arc::clone(&store), order.order_no);
            racing.push(tokio::spawn(async move {
                let answer = store.change_order(order_no, change.clone(), T0_MS + 1).await.expect("io");
                (order_no, change, answer)
            }));
        }
    }
    let missing = Arc::clone(&store);
    let missing = tokio::spawn(async move { missing.transition(order_no(99), OrderAction::Cancel, T0_MS).await });
    let mut answers = Vec::new();
    for change in racing {
        answers.push(change.await.expect("change"));
    }
    assert_eq!(missing.await.expect("change").expect("io"), Err(ChangeRejection::NotFound));
    let mut ended = 0;
    for order in &orders {
        let own: Vec<&(OrderNo, OrderChange, Result<Order, ChangeRejection>)> =
            answers.iter().filter(|(n, _, _)| *n == order.order_no).collect();
        let accepted: Vec<&Order> = own.iter().filter_map(|(_, _, answer)| answer.as_ref().ok()).collect();
        assert_eq!(accepted.len(), 1, "one change wins, the others are refused by what it left: {own:?}");
        let stored = store.order(order.order_no).await.expect("read").expect("exists");
        assert_eq!(accepted[0], &stored, "the winner's answer is the order as stored");
        match stored.state {
            OrderState::Cancelled | OrderState::Closed => ended += 1,
            OrderState::ToPay => assert_eq!(stored.payment_attempt, Some(attempt)),
            other => panic!("unexpected state {other:?}"),
        }
    }
    assert_eq!(available(&store, A).await, 60 + 2 * ended, "stock back once per ended order");
    let restocks = store
        .outbox(100)
        .await
        .expect("outbox")
        .into_iter()
        .filter(|(_, event)| matches!(event, OutboxEvent::RestockCache(_)))
        .count();
    assert_eq!(restocks as u64, ended, "one restock per ended order");
    assert_eq!(store.payments_pending().await.expect("count") as u64, 20 - ended, "the paying ones are in the set");
}

/// The orders still `pending` (accepted, not created yet) are listed, and only those.
pub async fn pending_orders_are_the_accepted_ones_not_created_yet(store: Arc<dyn Store>) {
    with_stock(&store, &[(A, 10)]).await;
    let (first, second) = (order(1, &[(A, 1)], false), order(2, &[(A, 2)], false));
    store.insert_pending(&[first.clone(), second.clone()]).await.expect("views");
    assert_eq!(pending_nos(&store).await, vec![first.order_no, second.order_no]);
    created(&store, &first).await;
    assert_eq!(pending_nos(&store).await, vec![second.order_no], "created: no longer pending");
}

async fn pending_nos(store: &Arc<dyn Store>) -> Vec<OrderNo> {
    let mut nos: Vec<OrderNo> = store.pending_orders().await.expect("pending").iter().map(|o| o.order_no).collect();
    nos.sort();
    nos
}
