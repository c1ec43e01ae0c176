//! Early fail: not enough stock never reaches the queue, and a cart is all or nothing.

mod common;

use common::*;
use orderly_app::PlaceError;
use orderly_app::model::Topic;
use orderly_domain::CommodityId;

#[tokio::test]
async fn a_cart_larger_than_the_stock_is_refused_and_reserves_nothing() {
    let Harness { orderly, ports, clock, .. } = harness(10).await;
    let refused = orderly.place_orders(&body(5, false, &[(1, 11)]), None).await;
    assert!(matches!(refused, Err(PlaceError::SoldOut { commodity_id: CommodityId(1) })));
    assert_eq!(stock(&ports, 1).await, (10, Some(10)));
    let depth = ports.bus.depth().await.expect("depth");
    let creates = depth.queued.iter().find(|(t, _)| *t == Topic::CreateOrder).map(|(_, n)| *n);
    assert_eq!(creates, Some(0), "nothing reached the create queue");
    settle_and_audit(&orderly, &clock).await;
}

#[tokio::test]
async fn when_one_shop_is_sold_out_the_other_shops_reservation_is_released() {
    let Harness { orderly, ports, clock, .. } = harness(10).await;
    orderly.place_orders(&body(5, false, &[(2, 10)]), None).await.expect("takes all of commodity 2");
    let refused = orderly.place_orders(&body(6, false, &[(1, 3), (2, 1)]), None).await;
    assert!(matches!(refused, Err(PlaceError::SoldOut { commodity_id: CommodityId(2) })));
    assert_eq!(stock(&ports, 1).await, (10, Some(10)), "commodity 1 was reserved, then released");
    settle_and_audit(&orderly, &clock).await;
}

#[tokio::test]
async fn exactly_the_stock_is_sold_under_concurrent_buyers() {
    let Harness { orderly, ports, clock, .. } = harness(50).await;
    let mut tasks = Vec::new();
    for uid in 0..200u64 {
        let orderly = orderly.clone();
        tasks.push(tokio::spawn(async move { orderly.place_orders(&body(uid + 10, true, &[(1, 1)]), None).await }));
    }
    let mut accepted = 0;
    for task in tasks {
        match task.await.expect("task runs") {
            Ok(_) => accepted += 1,
            Err(PlaceError::SoldOut { .. }) => {}
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert_eq!(accepted, 50);
    orderly.drain().await.expect("workers run");
    assert_eq!(stock(&ports, 1).await, (0, Some(0)));
    let report = orderly.audit(true, u64::MAX).await.expect("audit");
    assert_eq!(report.orders_by_state.get("paid"), Some(&50));
    settle_and_audit(&orderly, &clock).await;
}
