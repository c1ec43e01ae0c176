//! An order left unpaid is closed after the timeout and its stock returns to the store and the cache.

mod common;

use common::*;
use orderly_app::FlowConfig;
use orderly_domain::OrderState;

#[tokio::test]
async fn unpaid_order_closes_after_the_timeout_and_returns_its_stock() {
    let Harness { orderly, ports, clock, .. } = harness(10).await;
    let order_nos = orderly.place_orders(&body(5, false, &[(1, 3)]), None).await.expect("accepted");
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&ports, order_nos[0]).await, OrderState::ToPay);
    assert_eq!(stock(&ports, 1).await, (7, Some(7)));

    clock.advance_ms(FlowConfig::default().unpaid_timeout_ms - 1);
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&ports, order_nos[0]).await, OrderState::ToPay, "not before the deadline");

    clock.advance_ms(1);
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&ports, order_nos[0]).await, OrderState::Closed);
    assert_eq!(stock(&ports, 1).await, (10, Some(10)), "stock back in the store and the cache");
    settle_and_audit(&orderly, &clock).await;
}

#[tokio::test]
async fn paid_order_is_not_closed_by_its_timeout() {
    let Harness { orderly, ports, clock, .. } = harness(10).await;
    let order_nos = orderly.place_orders(&body(5, true, &[(1, 1)]), None).await.expect("accepted");
    orderly.drain().await.expect("workers run");
    clock.advance_ms(FlowConfig::default().unpaid_timeout_ms + 1);
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&ports, order_nos[0]).await, OrderState::Paid);
    assert_eq!(stock(&ports, 1).await, (9, Some(9)));
    settle_and_audit(&orderly, &clock).await;
}

/// Issue 10, defect 4: the wall clock stepped forward does not close an order before its deadline: the
/// deadline is judged by the monotonic clock, and the timer fired early by the step waits out the rest.
#[tokio::test]
async fn a_clock_stepped_forward_does_not_close_an_order_early() {
    let Harness { orderly, ports, clock, .. } = harness(10).await;
    let order_no = orderly.place_orders(&body(5, false, &[(1, 1)]), None).await.expect("accepted")[0];
    orderly.drain().await.expect("workers run");
    let timeout_ms = FlowConfig::default().unpaid_timeout_ms;
    clock.advance_ms(timeout_ms / 3);
    clock.step_wall_ms(i64::try_from(timeout_ms).expect("fits"));
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&ports, order_no).await, OrderState::ToPay, "only a third of its time has passed");
    clock.advance_ms(timeout_ms / 3);
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&ports, order_no).await, OrderState::ToPay);
    clock.advance_ms(timeout_ms / 3 + 1);
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&ports, order_no).await, OrderState::Closed, "closed once its time has passed");
    assert_eq!(stock(&ports, 1).await, (10, Some(10)));
}

/// The other side of defect 4: an order accepted after the step is judged in the stepped clock's frame —
/// closed at its deadline, not held for the size of a step that happened before it existed.
#[tokio::test]
async fn an_order_accepted_after_a_step_closes_on_time() {
    let Harness { orderly, ports, clock, .. } = harness(10).await;
    let timeout_ms = FlowConfig::default().unpaid_timeout_ms;
    clock.step_wall_ms(i64::try_from(timeout_ms * 2).expect("fits"));
    let order_no = orderly.place_orders(&body(5, false, &[(1, 1)]), None).await.expect("accepted")[0];
    orderly.drain().await.expect("workers run");
    clock.advance_ms(timeout_ms - 1);
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&ports, order_no).await, OrderState::ToPay, "not before the deadline");
    clock.advance_ms(1);
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&ports, order_no).await, OrderState::Closed, "closed at its deadline, not late by the step");
    assert_eq!(stock(&ports, 1).await, (10, Some(10)));
}
