//! An order left unpaid is closed after the timeout and its stock returns to the store and the cache.

mod common;

use common::*;
use orderly_app::FlowConfig;
use orderly_domain::OrderState;

#[tokio::test]
async fn unpaid_order_closes_after_the_timeout_and_returns_its_stock() {
    let Harness { orderly, clock, .. } = harness(10).await;
    let order_nos = orderly.place_orders(&body(5, false, &[(1, 3)]), None).await.expect("accepted");
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&orderly, order_nos[0]).await, OrderState::ToPay);
    assert_eq!(stock(&orderly, 1).await, (7, Some(7)));

    clock.advance_ms(FlowConfig::default().unpaid_timeout_ms - 1);
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&orderly, order_nos[0]).await, OrderState::ToPay, "not before the deadline");

    clock.advance_ms(1);
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&orderly, order_nos[0]).await, OrderState::Closed);
    assert_eq!(stock(&orderly, 1).await, (10, Some(10)), "stock back in the store and the cache");
    settle_and_audit(&orderly, &clock).await;
}

#[tokio::test]
async fn paid_order_is_not_closed_by_its_timeout() {
    let Harness { orderly, clock, .. } = harness(10).await;
    let order_nos = orderly.place_orders(&body(5, true, &[(1, 1)]), None).await.expect("accepted");
    orderly.drain().await.expect("workers run");
    clock.advance_ms(FlowConfig::default().unpaid_timeout_ms + 1);
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&orderly, order_nos[0]).await, OrderState::Paid);
    assert_eq!(stock(&orderly, 1).await, (9, Some(9)));
    settle_and_audit(&orderly, &clock).await;
}
