//! The seed's request end to end on the standalone profile: accepted, pending, created, paid at once.

mod common;

use common::*;
use orderly_domain::{Money, OrderState};

#[tokio::test]
async fn seed_request_gives_two_orders_that_end_paid() {
    let Harness { orderly, ports, clock, .. } = harness(10).await;
    let order_nos = orderly.place_orders(&seed_body(), None).await.expect("accepted");
    assert_eq!(order_nos.len(), 2, "one order per shop");
    assert_ne!(order_nos[0], order_nos[1]);
    for order_no in &order_nos {
        assert_eq!(state(&ports, *order_no).await, OrderState::Pending, "the poller sees pending first");
    }
    // Reserved in the cache at once; the store is deducted only when the order is created.
    assert_eq!(stock(&ports, 1).await, (10, Some(9)));

    orderly.drain().await.expect("workers run");
    let first = order(&ports, order_nos[0]).await;
    let second = order(&ports, order_nos[1]).await;
    assert_eq!((first.state, second.state), (OrderState::Paid, OrderState::Paid), "pay_at_once pays");
    assert_eq!(first.total, Money::from_cents(2999), "the server's price, not the body's total");
    assert_eq!(second.total, Money::from_cents(4999));
    assert!(first.payment_id.is_some());
    assert_eq!(stock(&ports, 1).await, (9, Some(9)));
    assert_eq!(stock(&ports, 2).await, (9, Some(9)));
    settle_and_audit(&orderly, &clock).await;
}

#[tokio::test]
async fn order_without_pay_at_once_waits_to_pay_then_pays_later() {
    let Harness { orderly, ports, clock, .. } = harness(10).await;
    let order_nos = orderly.place_orders(&body(7, false, &[(1, 2)]), None).await.expect("accepted");
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&ports, order_nos[0]).await, OrderState::ToPay);
    let paid = orderly.pay(orderly_app::Actor::Buyer(orderly_domain::Uid(7)), order_nos[0]).await.expect("pays");
    assert!(matches!(paid, orderly_app::PayOutcome::Paid(_)));
    assert_eq!(state(&ports, order_nos[0]).await, OrderState::Paid);
    settle_and_audit(&orderly, &clock).await;
}

/// An accepted cart's reservations are claimed for their creates (the reservation check then leaves them
/// to the worker): by an in-process cache at once, before the answer — only a cache over the network is
/// left to finish beside it.
#[tokio::test]
async fn an_in_process_cache_claims_the_reservations_before_the_answer() {
    let Harness { orderly, ports, .. } = harness(10).await;
    let order_nos = orderly.place_orders(&body(7, false, &[(1, 2)]), None).await.expect("accepted");
    let token = orderly_app::model::Token::entry(order_nos[0], orderly_domain::ShopId(100_001));
    // Nothing has yielded since the answer: a claim spawned instead of done would not have run yet.
    let found = ports.cache.keep_if_reserved(token).await.expect("cache answers");
    assert_eq!(found, Some(orderly_app::model::TokenState::Claimed));
}
