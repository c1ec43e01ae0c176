//! Cancel, pay and query as a buyer: only one's own orders, only what the FSM allows.

mod common;

use common::*;
use orderly_app::Actor;
use orderly_app::OrderError;
use orderly_app::ports::ChangeRejection;
use orderly_domain::{OrderState, TransitionRejection, Uid};

#[tokio::test]
async fn buyer_cancels_an_unpaid_order_and_the_stock_returns() {
    let Harness { orderly, ports, clock, .. } = harness(10).await;
    let order_no = orderly.place_orders(&body(5, false, &[(1, 4)]), None).await.expect("accepted")[0];
    assert!(
        matches!(
            orderly.cancel(Actor::Buyer(Uid(5)), order_no).await,
            Err(OrderError::Refused(ChangeRejection::Transition(TransitionRejection::NotCreatedYet { .. })))
        ),
        "a pending order cannot be cancelled yet"
    );
    orderly.drain().await.expect("workers run");
    assert!(
        matches!(
            orderly.cancel(Actor::Buyer(Uid(6)), order_no).await,
            Err(OrderError::Refused(ChangeRejection::NotFound))
        ),
        "not another buyer's"
    );
    let cancelled = orderly.cancel(Actor::Buyer(Uid(5)), order_no).await.expect("cancels");
    assert_eq!(cancelled.state, OrderState::Cancelled);
    assert!(matches!(
        orderly.cancel(Actor::Buyer(Uid(5)), order_no).await,
        Err(OrderError::Refused(ChangeRejection::Transition(TransitionRejection::AlreadyFinal { .. })))
    ));
    assert!(matches!(
        orderly.pay(Actor::Buyer(Uid(5)), order_no).await,
        Err(OrderError::Refused(ChangeRejection::Transition(TransitionRejection::AlreadyFinal { .. })))
    ));
    orderly.drain().await.expect("relay runs");
    assert_eq!(stock(&ports, 1).await, (10, Some(10)));
    settle_and_audit(&orderly, &clock).await;
}

#[tokio::test]
async fn a_buyer_sees_only_their_orders_newest_first() {
    let Harness { orderly, .. } = harness(10).await;
    let mine_first = orderly.place_orders(&body(5, false, &[(1, 1)]), None).await.expect("accepted")[0];
    let theirs = orderly.place_orders(&body(6, false, &[(1, 1)]), None).await.expect("accepted")[0];
    let mine_second = orderly.place_orders(&body(5, false, &[(2, 1)]), None).await.expect("accepted")[0];
    let page = orderly.orders_of(Uid(5), None, 10).await.expect("lists");
    let listed: Vec<_> = page.iter().map(|o| o.order_no).collect();
    assert_eq!(listed, vec![mine_second, mine_first]);
    let next = orderly.orders_of(Uid(5), Some(mine_second), 10).await.expect("lists");
    assert_eq!(next.iter().map(|o| o.order_no).collect::<Vec<_>>(), vec![mine_first]);
    assert!(matches!(
        orderly.order(Actor::Buyer(Uid(5)), theirs).await,
        Err(OrderError::Refused(ChangeRejection::NotFound))
    ));
}
