//! The buyer's caps through the flow (`flow.buyer_caps`): units of one commodity held in live orders,
//! and orders left unpaid — racing carts, refusals that hold nothing, and room freed by a cancel, a
//! payment's window, a timeout.

mod common;

use common::*;
use orderly_app::{Actor, PlaceError};
use orderly_domain::{CommodityId, OrderState, Uid};

fn with_caps(orderly: &orderly_app::Orderly, units: u32, window_ms: u64, unpaid: u32) {
    let mut config = (*orderly.config()).clone();
    config.buyer_caps.units_per_commodity = units;
    config.buyer_caps.window_ms = window_ms;
    config.buyer_caps.unpaid_orders = unpaid;
    orderly.set_config(config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_carts_of_one_buyer_never_pass_the_units_cap() {
    let Harness { orderly, ports, clock, .. } = harness(100).await;
    with_caps(&orderly, 3, 86_400_000, 0);
    let mut carts = Vec::new();
    for _ in 0..12 {
        let orderly = orderly.clone();
        carts.push(tokio::spawn(async move { orderly.place_orders(&body(5, false, &[(1, 1)]), None).await }));
    }
    let mut accepted = Vec::new();
    for cart in carts {
        match cart.await.expect("cart") {
            Ok(order_nos) => accepted.extend(order_nos),
            Err(PlaceError::PurchaseCap { commodity_id: CommodityId(1), cap: 3, retry_after_ms, .. }) => {
                assert!(retry_after_ms >= 1_000, "{retry_after_ms}");
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(accepted.len(), 3, "exactly the cap");
    assert_eq!(stock(&ports, 1).await, (100, Some(97)), "refused carts reserved nothing");
    // Another buyer, and another commodity, are not this cap's business.
    orderly.place_orders(&body(6, false, &[(1, 3)]), None).await.expect("another buyer");
    orderly.place_orders(&body(5, false, &[(2, 3)]), None).await.expect("another commodity");

    // Created or not, the orders hold their units; a cancelled one frees its own.
    orderly.drain().await.expect("workers run");
    let refused = orderly.place_orders(&body(5, false, &[(1, 1)]), None).await;
    assert!(matches!(refused, Err(PlaceError::PurchaseCap { held: 3, .. })), "{refused:?}");
    orderly.cancel(Actor::Buyer(Uid(5)), accepted[0]).await.expect("cancels");
    orderly.place_orders(&body(5, false, &[(1, 1)]), None).await.expect("room again after a cancel");
    let refused = orderly.place_orders(&body(5, false, &[(1, 1)]), None).await;
    assert!(matches!(refused, Err(PlaceError::PurchaseCap { held: 3, .. })), "{refused:?}");
    settle_and_audit(&orderly, &clock).await;
}

#[tokio::test]
async fn a_cart_refused_after_the_gate_holds_nothing() {
    let Harness { orderly, ports, clock, .. } = harness(10).await;
    with_caps(&orderly, 12, 86_400_000, 1);
    // Admitted by the caps, then sold out: withdrawn from the gate.
    let refused = orderly.place_orders(&body(5, false, &[(1, 11)]), None).await;
    assert!(matches!(refused, Err(PlaceError::SoldOut { commodity_id: CommodityId(1) })), "{refused:?}");
    orderly.place_orders(&body(5, false, &[(1, 2)]), None).await.expect("the sold-out cart holds no unpaid order");
    let refused = orderly.place_orders(&body(5, false, &[(2, 1)]), None).await;
    assert!(matches!(refused, Err(PlaceError::UnpaidCap { held: 1, cap: 1, .. })), "{refused:?}");
    assert_eq!(stock(&ports, 1).await, (10, Some(8)));
    settle_and_audit(&orderly, &clock).await;
}

#[tokio::test]
async fn paid_orders_count_within_the_window_only() {
    let Harness { orderly, clock, .. } = harness(10).await;
    with_caps(&orderly, 2, 60_000, 0);
    orderly.place_orders(&body(5, true, &[(1, 2)]), None).await.expect("within the cap");
    orderly.drain().await.expect("created and paid");
    let refused = orderly.place_orders(&body(5, true, &[(1, 1)]), None).await;
    assert!(
        matches!(refused, Err(PlaceError::PurchaseCap { held: 2, retry_after_ms: 60_000, .. })),
        "a paid order counts until it leaves the window: {refused:?}"
    );
    clock.advance_ms(60_001);
    orderly.place_orders(&body(5, true, &[(1, 1)]), None).await.expect("out of the window");
    settle_and_audit(&orderly, &clock).await;
}

#[tokio::test]
async fn unpaid_orders_are_capped_until_paid_cancelled_or_closed() {
    let Harness { orderly, ports, clock, .. } = harness(10).await;
    with_caps(&orderly, 0, 86_400_000, 2);
    let first = orderly.place_orders(&body(5, false, &[(1, 1)]), None).await.expect("first")[0];
    // A cart split over two shops is two orders.
    let refused = orderly.place_orders(&body(5, false, &[(1, 1), (2, 1)]), None).await;
    assert!(matches!(refused, Err(PlaceError::UnpaidCap { held: 1, cap: 2, .. })), "{refused:?}");
    let second = orderly.place_orders(&body(5, false, &[(2, 1)]), None).await.expect("second")[0];
    let refused = orderly.place_orders(&body(5, false, &[(1, 1)]), None).await;
    let timeout = orderly.config().unpaid_timeout_ms;
    assert!(
        matches!(refused, Err(PlaceError::UnpaidCap { held: 2, cap: 2, retry_after_ms }) if retry_after_ms == timeout),
        "until the oldest unpaid order times out: {refused:?}"
    );
    orderly.drain().await.expect("created");
    orderly.pay(Actor::Buyer(Uid(5)), first).await.expect("pays");
    orderly.place_orders(&body(5, false, &[(1, 1)]), None).await.expect("a paid order is not unpaid");
    let refused = orderly.place_orders(&body(5, false, &[(1, 1)]), None).await;
    assert!(matches!(refused, Err(PlaceError::UnpaidCap { held: 2, .. })), "{refused:?}");
    orderly.cancel(Actor::Buyer(Uid(5)), second).await.expect("cancels");
    orderly.place_orders(&body(5, false, &[(1, 1)]), None).await.expect("a cancelled order is not unpaid");
    // Closed by their timeout, the unpaid orders free the cap.
    orderly.drain().await.expect("created");
    clock.advance_ms(timeout + 1);
    orderly.drain().await.expect("timeouts run");
    let closed = ports.store.orders_of(Uid(5), None, 10).await.expect("orders");
    assert!(closed.iter().filter(|o| o.state == OrderState::Closed).count() >= 2, "{closed:?}");
    orderly.place_orders(&body(5, false, &[(1, 1), (2, 1)]), None).await.expect("room after the timeouts");
    settle_and_audit(&orderly, &clock).await;
}
