//! A process that stops without warning loses nothing accepted: after a restart on the same data the
//! cache is rebuilt from the store (the reservations of accepted orders not created yet made again from
//! their pending views), every accepted order is created, and I1–I5 hold.

mod common;

use std::sync::Arc;

use common::*;
use orderly_app::time::ManualClock;
use orderly_domain::OrderState;
use orderly_local::AcquirerConfig;

#[tokio::test]
async fn accepted_orders_survive_a_restart_before_any_worker_ran() {
    let harness = harness(10).await;
    let dir = harness.dir;
    let mut accepted = Vec::new();
    for uid in 0..4 {
        accepted.extend(
            harness.orderly.place_orders(&body(uid + 10, uid % 2 == 0, &[(1, 2)]), None).await.expect("accepted"),
        );
    }
    assert_eq!(stock(&harness.ports, 1).await, (10, Some(2)));
    // Stop: the in-memory cache and its reservations are gone; only the database remains.
    drop(harness.orderly);
    drop(harness.ports);

    let clock = Arc::new(ManualClock::new(T0_MS + 1_000));
    let (orderly, ports) = reopen_at(dir.path(), Arc::clone(&clock), AcquirerConfig::default()).await;
    assert_eq!(
        stock(&ports, 1).await,
        (10, Some(2)),
        "cache rebuilt from the store, the accepted orders' units held back for them (not sold again)"
    );
    for order_no in &accepted {
        assert_eq!(state(&ports, *order_no).await, OrderState::Pending);
    }
    orderly.drain().await.expect("workers run");
    for order_no in &accepted {
        assert!(matches!(state(&ports, *order_no).await, OrderState::ToPay | OrderState::Paid));
    }
    assert_eq!(stock(&ports, 1).await, (2, Some(2)));
    // New order numbers after the restart never repeat the old ones.
    let fresh = orderly.place_orders(&body(50, false, &[(1, 1)]), None).await.expect("accepted");
    assert!(fresh.iter().all(|n| !accepted.contains(n)));
    settle_and_audit(&orderly, &clock).await;
}
