//! Retries, duplicates and redeliveries never create an order twice or deduct stock twice.

mod common;

use common::*;
use orderly_app::PlaceError;
use orderly_app::model::{Message, Outgoing, Token};
use orderly_domain::OrderState;

#[tokio::test]
async fn a_retry_with_the_same_key_returns_the_first_answer_and_creates_nothing() {
    let Harness { orderly, ports, clock, .. } = harness(10).await;
    let first = orderly.place_orders(&seed_body(), Some("key-1")).await.expect("accepted");
    let retry = orderly.place_orders(&seed_body(), Some("key-1")).await.expect("replayed");
    assert_eq!(first, retry);
    assert_eq!(stock(&ports, 1).await, (10, Some(9)), "reserved once");
    let mut other = seed_body();
    other.commodity_details[0].num = 2;
    assert!(matches!(orderly.place_orders(&other, Some("key-1")).await, Err(PlaceError::IdempotencyKeyReused)));
    // Another buyer's key of the same name is another key.
    let mut someone_else = seed_body();
    someone_else.uid = orderly_domain::Uid(99);
    assert_ne!(orderly.place_orders(&someone_else, Some("key-1")).await.expect("accepted"), first);
    orderly.drain().await.expect("workers run");
    let report = orderly.audit(true, u64::MAX).await.expect("audit");
    assert_eq!(report.orders_by_state.get("paid"), Some(&4));
    settle_and_audit(&orderly, &clock).await;
}

#[tokio::test]
async fn racing_retries_with_one_key_create_each_order_once() {
    let Harness { orderly, ports, clock, .. } = harness(10).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let orderly = orderly.clone();
        tasks.push(tokio::spawn(async move { orderly.place_orders(&seed_body(), Some("race")).await }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("task runs").expect("accepted"));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "every retry got the same order numbers");
    orderly.drain().await.expect("workers run");
    assert_eq!(stock(&ports, 1).await, (9, Some(9)));
    settle_and_audit(&orderly, &clock).await;
}

#[tokio::test]
async fn a_redelivered_create_message_changes_nothing() {
    let Harness { orderly, ports, clock, .. } = harness(10).await;
    let order_no = orderly.place_orders(&body(5, false, &[(1, 2)]), None).await.expect("accepted")[0];
    orderly.drain().await.expect("workers run");
    let created = order(&ports, order_no).await;
    // The same message again, as a broker would redeliver it.
    let mut pending = created.clone();
    pending.state = OrderState::Pending;
    let now_ms = orderly_app::Clock::now_ms(clock.as_ref());
    for _ in 0..3 {
        ports
            .bus
            .publish(vec![Outgoing { message: Message::CreateOrder(Box::new(pending.clone())), deliver_at_ms: now_ms }])
            .await
            .expect("publishes");
    }
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&ports, order_no).await, OrderState::ToPay);
    assert_eq!(stock(&ports, 1).await, (8, Some(8)), "deducted once");
    settle_and_audit(&orderly, &clock).await;
}

/// Issue 10, defect 2: a create still queued when its reservation check fires (a backlog, an outage, a
/// restarted worker) keeps its stock — the entry claimed the token once the create was durable — so the
/// units are not sold again and the accepted order is created, not rejected.
#[tokio::test]
async fn a_queued_create_keeps_its_reservation_through_the_check() {
    let Harness { orderly, ports, clock, .. } = harness(2).await;
    let accepted = orderly.place_orders(&body(5, false, &[(1, 2)]), None).await.expect("accepted")[0];
    // The check fires before any worker took the create message.
    clock.advance_ms(orderly.config().reservation_check_delay_ms);
    orderly.try_execute(orderly_app::workers::Step::ReservationChecks).await.expect("check runs");
    assert_eq!(stock(&ports, 1).await, (2, Some(0)), "the queued create's units stay held");
    // So nobody else can buy them meanwhile.
    let other = orderly.place_orders(&body(6, false, &[(1, 2)]), None).await;
    assert!(matches!(other, Err(orderly_app::PlaceError::SoldOut { .. })), "{other:?}");
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&ports, accepted).await, OrderState::ToPay);
    assert_eq!(stock(&ports, 1).await, (0, Some(0)));
    settle_and_audit(&orderly, &clock).await;
}

/// A reservation whose create never reached the bus (the entry died between reserve and publish) is
/// still given back by its check, and a late reserve of the released token is refused.
#[tokio::test]
async fn a_reservation_without_a_create_is_released_by_its_check() {
    let Harness { orderly, ports, clock, .. } = harness(10).await;
    let token = Token::entry(
        orderly_domain::OrderNo::new(orderly_domain::SnowflakeId(77), orderly_domain::Uid(5)),
        orderly_domain::ShopId(100_001),
    );
    let now_ms = orderly_app::Clock::now_ms(&*ports.clock);
    ports
        .bus
        .publish(vec![Outgoing {
            message: Message::ReservationCheck { token },
            deliver_at_ms: now_ms + orderly.config().reservation_check_delay_ms,
        }])
        .await
        .expect("publishes");
    let lines = [(orderly_domain::CommodityId(1), 2)];
    orderly.commodity(orderly_domain::CommodityId(1)).await.expect("loads the counter");
    assert_eq!(ports.cache.reserve(token, &lines, false).await, Ok(orderly_app::ports::Reserve::Reserved));
    assert_eq!(stock(&ports, 1).await, (10, Some(8)));
    clock.advance_ms(orderly.config().reservation_check_delay_ms);
    orderly.drain().await.expect("workers run");
    assert_eq!(stock(&ports, 1).await, (10, Some(10)), "the orphan reservation was returned");
    let again = ports.cache.reserve(token, &lines, false).await;
    assert_eq!(again, Ok(orderly_app::ports::Reserve::AlreadyHeld(orderly_app::model::TokenState::Released)));
    settle_and_audit(&orderly, &clock).await;
}

/// The same with the check kept by the cache, as the entry arms it: the reservation and its check made in
/// one step, the entry gone before any pending view or create — the check, due a delay later, gives the
/// units back, and not before.
#[tokio::test]
async fn a_reservation_without_a_create_is_released_by_the_check_its_cache_keeps() {
    let Harness { orderly, ports, clock, .. } = harness(10).await;
    assert!(ports.cache.keeps_checks(), "the standalone cache keeps the checks");
    let token = Token::entry(
        orderly_domain::OrderNo::new(orderly_domain::SnowflakeId(77), orderly_domain::Uid(5)),
        orderly_domain::ShopId(100_001),
    );
    let delay_ms = orderly.config().reservation_check_delay_ms;
    let check_at_ms = orderly_app::Clock::now_ms(&*ports.clock) + delay_ms;
    let lines = [(orderly_domain::CommodityId(1), 2)];
    orderly.commodity(orderly_domain::CommodityId(1)).await.expect("loads the counter");
    let reserved = ports.cache.reserve_checked(token, &lines, check_at_ms).await;
    assert_eq!(reserved, Ok(orderly_app::ports::Reserve::Reserved));
    clock.advance_ms(delay_ms - 1);
    orderly.drain().await.expect("workers run");
    assert_eq!(stock(&ports, 1).await, (10, Some(8)), "not due yet: still held");
    clock.advance_ms(1);
    orderly.drain().await.expect("workers run");
    assert_eq!(stock(&ports, 1).await, (10, Some(10)), "the orphan reservation was returned");
    let again = ports.cache.reserve(token, &lines, false).await;
    assert_eq!(again, Ok(orderly_app::ports::Reserve::AlreadyHeld(orderly_app::model::TokenState::Released)));
    settle_and_audit(&orderly, &clock).await;
}

/// A keyed cart answered 503 because one shop's reserve failed keeps the units its other orders reserved:
/// its retry re-runs the same numbers and finds them held. Released, another buyer could take them and
/// the retry would be accepted holding nothing — its order then `rejected` behind a 200.
#[tokio::test]
async fn a_keyed_cart_refused_by_a_cache_error_keeps_its_reservations_for_the_retry() {
    let mut h = harness(10).await;
    let cache = LosableCache::install(&mut h.orderly, &mut h.ports);
    let Harness { orderly, ports, clock, .. } = h;
    let cart = body(5, false, &[(1, 10), (2, 1)]);
    cache.fail_reserves_of(Some(orderly_domain::ShopId(100_002)));
    let refused = orderly.place_orders(&cart, Some("k")).await;
    assert!(matches!(refused, Err(PlaceError::Unavailable(_))), "{refused:?}");
    cache.fail_reserves_of(None);
    let other = orderly.place_orders(&body(6, false, &[(1, 10)]), None).await;
    assert!(matches!(other, Err(PlaceError::SoldOut { .. })), "the keyed cart's units stay held: {other:?}");
    let order_nos = orderly.place_orders(&cart, Some("k")).await.expect("the retry is accepted");
    orderly.drain().await.expect("workers run");
    for order_no in order_nos {
        assert_eq!(state(&ports, order_no).await, OrderState::ToPay, "created, not rejected");
    }
    settle_and_audit(&orderly, &clock).await;
}

/// A keyed cart accepted without its answer stored (the one store write after the publish failed) and
/// retried after its orders were created and the cache forgot their settled reservations
/// (`settled_token_ttl_ms`): the retry reserves nothing and is answered the same numbers. Reserved again,
/// the units would stay held in the cache for orders the store had sold already — never sold again.
#[tokio::test]
async fn a_keyed_retry_after_its_orders_were_created_and_their_reservations_forgotten_reserves_nothing() {
    let mut h = harness(10).await;
    let store = FaultyStore::install(&mut h.orderly, &mut h.ports);
    let Harness { orderly, ports, clock, .. } = h;
    store.answer_down.store(true, std::sync::atomic::Ordering::SeqCst);
    let first = orderly.place_orders(&seed_body(), Some("k")).await.expect("accepted, its answer not stored");
    store.answer_down.store(false, std::sync::atomic::Ordering::SeqCst);
    orderly.drain().await.expect("workers run");
    for &order_no in &first {
        assert_ne!(state(&ports, order_no).await, OrderState::Pending, "created");
    }
    clock.advance_ms(orderly_local::LocalConfig::default().settled_token_ttl_ms);
    let retry = orderly.place_orders(&seed_body(), Some("k")).await.expect("the retry is answered");
    assert_eq!(retry, first, "the same numbers");
    orderly.drain().await.expect("workers run");
    for id in [1, 2] {
        assert_eq!(stock(&ports, id).await, (9, Some(9)), "the cache holds what the store sold, once");
    }
    assert_eq!(
        orderly.place_orders(&seed_body(), Some("k")).await.expect("replayed"),
        first,
        "the retry stored the answer"
    );
    settle_and_audit(&orderly, &clock).await;
}
