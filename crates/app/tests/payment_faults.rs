//! Safe pay: declines, timeouts, lost answers and a charge cut off mid-flight all end definite, and an
//! order is `paid` iff the acquirer captured it, exactly once (I5).

mod common;

use std::sync::Arc;

use common::*;
use orderly_app::Actor;
use orderly_app::ports::ChangeRejection;
use orderly_app::time::ManualClock;
use orderly_app::{FlowConfig, OrderError, PayOutcome};
use orderly_domain::{OrderState, Uid};
use orderly_local::AcquirerConfig;

fn acquirer(decline: f64, timeout: f64, lost: f64) -> AcquirerConfig {
    AcquirerConfig { decline_rate: decline, timeout_rate: timeout, lost_answer_rate: lost, ..AcquirerConfig::default() }
}

#[tokio::test]
async fn a_declined_card_leaves_the_order_to_pay_and_uncharged() {
    let Harness { orderly, ports, clock, .. } = harness_with(10, acquirer(1.0, 0.0, 0.0)).await;
    let order_no = orderly.place_orders(&body(5, true, &[(1, 1)]), None).await.expect("accepted")[0];
    orderly.drain().await.expect("workers run");
    let declined = order(&ports, order_no).await;
    assert_eq!(declined.state, OrderState::ToPay);
    assert_eq!(declined.last_decline.as_deref(), Some("insufficient_funds"));
    assert!(declined.payment_attempt.is_none());
    assert!(ports.payments.succeeded().await.expect("ledger").is_empty());
    // Unpaid, it closes in time and the stock returns.
    settle_and_audit(&orderly, &clock).await;
    assert_eq!(state(&ports, order_no).await, OrderState::Closed);
    assert_eq!(stock(&ports, 1).await, (10, Some(10)));
}

#[tokio::test]
async fn a_lost_answer_is_settled_as_paid_by_the_reconciler() {
    let Harness { orderly, ports, clock, .. } = harness_with(10, acquirer(0.0, 0.0, 1.0)).await;
    let order_no = orderly.place_orders(&body(5, false, &[(1, 1)]), None).await.expect("accepted")[0];
    orderly.drain().await.expect("workers run");
    let pending = orderly.pay(Actor::Buyer(Uid(5)), order_no).await.expect("no definite answer is not an error");
    assert!(matches!(pending, PayOutcome::Pending(_)));
    assert_eq!(ports.store.payments_pending().await.expect("count"), 1, "in the safe-pay set");
    // While the outcome is unknown, neither the buyer nor the timeout may cancel (the money may be taken).
    assert!(matches!(
        orderly.cancel(Actor::Buyer(Uid(5)), order_no).await,
        Err(OrderError::Refused(ChangeRejection::PaymentInFlight))
    ));
    assert!(matches!(
        orderly.pay(Actor::Buyer(Uid(5)), order_no).await,
        Err(OrderError::Refused(ChangeRejection::PaymentInFlight))
    ));

    clock.advance_ms(FlowConfig::default().reconcile_backoff_ms_max);
    orderly.drain().await.expect("reconciler runs");
    let paid = order(&ports, order_no).await;
    assert_eq!(paid.state, OrderState::Paid);
    assert_eq!(ports.store.payments_pending().await.expect("count"), 0);
    assert_eq!(ports.payments.succeeded().await.expect("ledger").len(), 1, "captured exactly once");
    settle_and_audit(&orderly, &clock).await;
}

#[tokio::test]
async fn an_acquirer_timeout_is_settled_back_to_to_pay() {
    let Harness { orderly, ports, clock, .. } = harness_with(10, acquirer(0.0, 1.0, 0.0)).await;
    let order_no = orderly.place_orders(&body(5, false, &[(1, 1)]), None).await.expect("accepted")[0];
    orderly.drain().await.expect("workers run");
    assert!(matches!(orderly.pay(Actor::Buyer(Uid(5)), order_no).await, Ok(PayOutcome::Pending(_))));
    assert!(order(&ports, order_no).await.payment_attempt.is_some());
    clock.advance_ms(FlowConfig::default().reconcile_backoff_ms_max);
    orderly.drain().await.expect("reconciler runs");
    let settled = order(&ports, order_no).await;
    assert_eq!(settled.state, OrderState::ToPay);
    assert!(settled.payment_attempt.is_none());
    assert!(ports.payments.succeeded().await.expect("ledger").is_empty());
    settle_and_audit(&orderly, &clock).await;
}

#[tokio::test]
async fn a_charge_cut_off_by_its_deadline_is_settled_and_never_charged_twice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(T0_MS));
    // The acquirer takes 200 ms of the clock; the caller gives up after 20 ms and drops the call.
    let flow = FlowConfig { payment_call_timeout_ms: 20, ..FlowConfig::default() };
    let acquirer = AcquirerConfig { latency_ms: 200, ..AcquirerConfig::default() };
    let (orderly, ports) = open_with(dir.path(), Arc::clone(&clock), flow, acquirer).await;
    let catalog = [orderly_domain::CatalogEntry {
        commodity_id: orderly_domain::CommodityId(1),
        shop_id: orderly_domain::ShopId(100_001),
        unit_price: orderly_domain::Money::from_cents(2999),
    }];
    orderly.load_catalog(&catalog, &[(orderly_domain::CommodityId(1), 5)]).await.expect("loads");
    let order_no = orderly.place_orders(&body(5, false, &[(1, 1)]), None).await.expect("accepted")[0];
    orderly.drain().await.expect("workers run");
    let pay = |orderly: orderly_app::Orderly| async move { orderly.pay(Actor::Buyer(Uid(5)), order_no).await };
    // Two waits on the clock once the charge is sent: the caller's limit and the acquirer's latency.
    let first = run_on_clock(&clock, 2, 20, pay(orderly.clone())).await;
    assert!(matches!(first, Ok(PayOutcome::Pending(_))), "cut off at 20 ms: {first:?}");
    clock.advance_ms(FlowConfig::default().reconcile_backoff_ms_max);
    orderly.drain().await.expect("reconciler runs");
    assert_eq!(state(&ports, order_no).await, OrderState::ToPay, "the dropped charge never captured");
    // Paying again now works and captures once (the clock passes the caller's limit and the acquirer's
    // latency together: either answer may come first).
    let again = run_on_clock(&clock, 2, 200, pay(orderly.clone())).await;
    assert!(matches!(again, Ok(PayOutcome::Pending(_)) | Ok(PayOutcome::Paid(_))), "{again:?}");
    clock.advance_ms(FlowConfig::default().reconcile_backoff_ms_max);
    orderly.drain().await.expect("reconciler runs");
    let captures = ports.payments.succeeded().await.expect("ledger");
    let paid = state(&ports, order_no).await == OrderState::Paid;
    assert_eq!(paid, captures.len() == 1, "paid iff captured");
    assert!(captures.len() <= 1);
}

/// One reconciler in a cluster: while another process holds the `reconciler` lease this one leaves the
/// safe-pay set alone; when the holder stops renewing, it takes over and settles the payment.
#[tokio::test]
async fn the_reconciler_runs_only_where_the_lease_is_held() {
    use orderly_app::Clock;
    use orderly_app::workers::Step;

    let Harness { orderly, ports, clock, .. } = harness_with(10, acquirer(0.0, 0.0, 1.0)).await;
    let order_no = orderly.place_orders(&body(5, false, &[(1, 1)]), None).await.expect("accepted")[0];
    orderly.drain().await.expect("workers run");
    assert!(matches!(orderly.pay(Actor::Buyer(Uid(5)), order_no).await, Ok(PayOutcome::Pending(_))));

    // The drain made this process the reconciler; it stops renewing (a pause), another takes over.
    let lease_ms = FlowConfig::default().lease_ms;
    let other_holder = u64::MAX;
    clock.advance_ms(lease_ms + 1);
    let now_ms = clock.now_ms();
    assert!(ports.store.lease("reconciler", other_holder, now_ms, now_ms + lease_ms).await.expect("lease"));
    clock.advance_ms(lease_ms / 2);
    let idle = orderly.try_execute(Step::Reconcile).await.expect("step");
    assert!(idle.is_idle(), "another process reconciles: {idle:?}");
    assert_eq!(ports.store.payments_pending().await.expect("count"), 1);

    clock.advance_ms(lease_ms);
    let settled = orderly.try_execute(Step::Reconcile).await.expect("step");
    assert_eq!(settled.done, 1, "the lease expired: this process took over");
    assert_eq!(state(&ports, order_no).await, OrderState::Paid);
    settle_and_audit(&orderly, &clock).await;
}

/// Issue 10, defect 6: a pay-at-once attempt that got no answer (timeouts, lost answers) is voided, not
/// the buyer's decline: the system charges again, with a new attempt, until the acquirer answers — and
/// the unpaid timeout waits meanwhile. Captured exactly once.
#[tokio::test]
async fn a_pay_at_once_order_is_charged_again_until_the_acquirer_answers() {
    let Harness { orderly, ports, clock, .. } = harness_with(10, acquirer(0.0, 0.6, 0.2)).await;
    let order_nos = orderly.place_orders(&body(5, true, &[(1, 1), (2, 1)]), None).await.expect("accepted");
    let step_ms = FlowConfig::default().reconcile_backoff_ms_max;
    for _ in 0..60 {
        orderly.drain().await.expect("workers run");
        clock.advance_ms(step_ms);
    }
    orderly.drain().await.expect("workers run");
    for order_no in order_nos {
        let paid = order(&ports, order_no).await;
        assert_eq!(paid.state, OrderState::Paid, "{paid:?}");
    }
    // The unpaid timeout (15 min) passed many times over while attempts went unanswered.
    assert!(60 * step_ms > FlowConfig::default().unpaid_timeout_ms);
    assert_eq!(ports.payments.succeeded().await.expect("ledger").len(), 2, "one capture per order");
    settle_and_audit(&orderly, &clock).await;
}

/// Issue 10, defect 3: a backlog holds a pay-at-once order's charge past its unpaid timeout; the timeout
/// waits for the charge instead of closing the order the buyer asked to pay at once.
#[tokio::test]
async fn the_unpaid_timeout_waits_for_a_pay_at_once_charge() {
    use orderly_app::workers::Step;
    let Harness { orderly, ports, clock, .. } = harness(10).await;
    let order_no = orderly.place_orders(&body(5, true, &[(1, 1)]), None).await.expect("accepted")[0];
    orderly.try_execute(Step::CreateOrders).await.expect("created");
    orderly.try_execute(Step::Outbox).await.expect("timer and charge queued");
    clock.advance_ms(FlowConfig::default().unpaid_timeout_ms + 1);
    orderly.try_execute(Step::UnpaidTimeouts).await.expect("timeout runs");
    assert_eq!(state(&ports, order_no).await, OrderState::ToPay, "not closed before its charge ran");
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&ports, order_no).await, OrderState::Paid);
    settle_and_audit(&orderly, &clock).await;
}
