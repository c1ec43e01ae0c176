//! Early fail: not enough stock never reaches the queue, and a cart is all or nothing.

mod common;

use common::*;
use orderly_app::model::Topic;
use orderly_app::{Actor, PlaceError};
use orderly_domain::{CommodityId, Uid};

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

/// The cart's orders reserve together: whichever shop's order is refused, every other order's units come
/// back, and only what was reserved is released (the refused order's token is not turned into a refusal
/// a retry would meet).
#[tokio::test]
async fn a_refused_first_shop_gives_back_what_the_others_reserved_beside_it() {
    let Harness { orderly, ports, clock, .. } = harness(10).await;
    orderly.place_orders(&body(5, false, &[(1, 10)]), None).await.expect("takes all of commodity 1");
    let refused = orderly.place_orders(&body(6, false, &[(1, 1), (2, 4)]), None).await;
    assert!(matches!(refused, Err(PlaceError::SoldOut { commodity_id: CommodityId(1) })));
    assert_eq!(stock(&ports, 2).await, (10, Some(10)), "commodity 2 was reserved beside it, then released");
    orderly.place_orders(&body(7, false, &[(2, 10)]), None).await.expect("all of commodity 2 is for sale");
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

/// The reservation checks armed (in the cache that keeps them, or published on the bus). Looking at the
/// cache's hands them out: they are put back due at once (a check is safe at any time once no entry is
/// between its reserve and its create, as here).
async fn checks_armed(ports: &orderly_app::Ports) -> usize {
    let depth = ports.bus.depth().await.expect("depth");
    let published = depth.queued.iter().find(|(t, _)| *t == Topic::ReservationCheck).map_or(0, |(_, n)| *n);
    let shops: Vec<_> = ports.store.all_stock().await.expect("stock").iter().map(|(_, l)| l.shop_id).collect();
    let kept = ports.cache.due_checks(&shops, u64::MAX >> 12, 0, usize::MAX).await.expect("checks");
    published + kept.len()
}

/// A commodity seen sold out is answered from memory — no reservation check on the bus, nothing
/// reserved — for `sold_out_memory_ms`; after that, one look at the counter finds stock that came back
/// (here a cancellation) and sells it.
#[tokio::test]
async fn a_commodity_seen_sold_out_is_answered_from_memory_until_its_stock_comes_back() {
    let Harness { orderly, ports, clock, .. } = harness(1).await;
    let window_ms = orderly.config().sold_out_memory_ms;
    let last = orderly.place_orders(&body(5, false, &[(1, 1)]), None).await.expect("the last unit");
    let refused = orderly.place_orders(&body(6, false, &[(1, 1)]), None).await;
    assert!(matches!(refused, Err(PlaceError::SoldOut { commodity_id: CommodityId(1) })), "{refused:?}");
    let checks = checks_armed(&ports).await;
    assert!(checks > 0, "the accepted cart armed its check");
    let refused = orderly.place_orders(&body(7, false, &[(2, 1), (1, 1)]), None).await;
    assert!(matches!(refused, Err(PlaceError::SoldOut { commodity_id: CommodityId(1) })), "{refused:?}");
    assert_eq!(checks_armed(&ports).await, checks, "answered from memory: no reservation check armed");
    let (store, cache) = stock(&ports, 2).await;
    assert_eq!(store, 1);
    assert_ne!(cache, Some(0), "nothing reserved of the cart's other commodity");

    orderly.drain().await.expect("workers run");
    orderly.cancel(Actor::Buyer(Uid(5)), last[0]).await.expect("cancelled");
    orderly.drain().await.expect("the unit goes back to the cache");
    assert_eq!(stock(&ports, 1).await, (1, Some(1)));
    let refused = orderly.place_orders(&body(8, false, &[(1, 1)]), None).await;
    assert!(matches!(refused, Err(PlaceError::SoldOut { .. })), "still within the window: {refused:?}");
    clock.advance_ms(window_ms);
    orderly.place_orders(&body(8, false, &[(1, 1)]), None).await.expect("the returned unit is sold again");
    settle_and_audit(&orderly, &clock).await;
}
