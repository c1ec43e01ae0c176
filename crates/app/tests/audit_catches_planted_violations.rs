//! The audit is only worth its "no violations" if it sees violations: plant each kind through the ports
//! (bypassing the flow) and require the audit to name it.

mod common;

use common::{T0_MS, harness};
use orderly_app::audit::Violation;
use orderly_app::model::{Order, Restock};
use orderly_domain::{CommodityId, Money, OrderLine, OrderNo, OrderState, ShopId, SnowflakeId, Uid};

fn order(id: u64, buyer: u64, state: OrderState, commodity: u64, token_generation: Option<u8>) -> Order {
    Order {
        order_no: OrderNo::new(SnowflakeId(id), Uid(buyer)),
        buyer: Uid(buyer),
        to_uid: Uid(buyer),
        shop_id: ShopId(100_001),
        pay_at_once: false,
        lines: vec![OrderLine {
            commodity_id: CommodityId(commodity),
            quantity: 1,
            unit_price: Money::from_cents(2999),
        }],
        total: Money::from_cents(2999),
        state,
        created_ms: T0_MS,
        updated_ms: T0_MS,
        payment_attempt: None,
        payment_id: None,
        last_decline: None,
        rejected_for: None,
        token_generation,
        stock_versions: Vec::new(),
        trace: None,
    }
}

#[tokio::test]
async fn a_clean_store_has_no_violations() {
    let h = harness(10).await;
    let report = h.orderly.audit(true, 60_000).await.expect("audit");
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

#[tokio::test]
async fn duplicate_ids_orphans_and_stale_pending_orders_are_named() {
    let h = harness(10).await;
    // Same snowflake id for two buyers (different shard suffix): the generator repeated itself.
    let twin_a = order(1_000, 1, OrderState::Pending, 1, None);
    let twin_b = order(1_000, 2, OrderState::Pending, 1, None);
    // A line naming a commodity the store has no ledger for.
    let unknown = order(2_000, 3, OrderState::Pending, 99, None);
    h.ports.store.insert_pending(&[twin_a.clone(), twin_b.clone(), unknown.clone()]).await.expect("planted");
    // Keep the pending views pending: their create messages are not on the bus, so nothing finishes them.
    h.clock.advance_ms(120_000);

    let report = h.orderly.audit(false, 60_000).await.expect("audit");
    let v = &report.violations;
    assert!(
        v.iter().any(|x| matches!(x, Violation::DuplicateId { order_nos } if order_nos.len() == 2)),
        "duplicate id named: {v:?}"
    );
    assert!(
        v.contains(&Violation::Orphan { order_no: unknown.order_no, reason: "a commodity without a stock ledger" }),
        "orphan named: {v:?}"
    );
    let stale = v.iter().filter(|x| matches!(x, Violation::NotDefinite { state: OrderState::Pending, .. })).count();
    assert_eq!(stale, 3, "every pending order past the deadline is named: {v:?}");
}

#[tokio::test]
async fn leaked_stock_and_a_cache_that_disagrees_are_named() {
    let h = harness(10).await;
    // Stock added to the cache only (a restock the store never made): the cache would sell 5 more.
    h.orderly.commodity(CommodityId(1)).await.expect("loads commodity 1 into the cache");
    let restock = Restock { key: "planted".into(), shop_id: ShopId(100_001), lines: vec![(CommodityId(1), 5, 99)] };
    h.ports.cache.restock(&restock).await.expect("planted");
    let report = h.orderly.audit(true, 60_000).await.expect("audit");
    assert!(
        report.violations.iter().any(|x| matches!(x, Violation::CacheDisagrees { commodity_id: CommodityId(1), .. })),
        "{:?}",
        report.violations
    );

    // A created order whose stock was never deducted, and one selling more than was ever added
    // (`insert_pending` writes the order as given, so it plants them without touching the ledger).
    let h = harness(10).await;
    let undeducted = order(4_000, 5, OrderState::ToPay, 1, None);
    let mut oversold = order(5_000, 6, OrderState::Paid, 2, Some(0));
    oversold.lines[0].quantity = 11;
    h.ports.store.insert_pending(&[undeducted.clone(), oversold]).await.expect("planted");
    let report = h.orderly.audit(false, 60 * 60 * 1000).await.expect("audit");
    let v = &report.violations;
    assert!(
        v.contains(&Violation::Leaked { commodity_id: CommodityId(1), initial: 10, available: 10, sold: 1 }),
        "leak named: {v:?}"
    );
    assert!(
        v.contains(&Violation::Orphan { order_no: undeducted.order_no, reason: "created without a reservation" }),
        "orphan named: {v:?}"
    );
    assert!(v.contains(&Violation::Oversold { commodity_id: CommodityId(2), initial: 10, sold: 11 }), "{v:?}");
    // Paid without a successful charge in the payment ledger.
    assert!(v.iter().any(|x| matches!(x, Violation::PaymentMismatch { charged: false, .. })), "{v:?}");
}

#[tokio::test]
async fn pay_at_once_orders_closed_or_left_unpaid_without_a_decline_are_named() {
    let h = harness(10).await;
    let mut closed = order(6_000, 7, OrderState::Closed, 1, Some(0));
    closed.pay_at_once = true;
    let mut left = order(7_000, 8, OrderState::ToPay, 1, Some(0));
    left.pay_at_once = true;
    let mut declined = order(8_000, 9, OrderState::Closed, 1, Some(0));
    (declined.pay_at_once, declined.last_decline) = (true, Some("insufficient_funds".into()));
    let later = order(9_000, 9, OrderState::Closed, 1, Some(0));
    h.ports.store.insert_pending(&[closed.clone(), left.clone(), declined, later]).await.expect("planted");
    let unpaid = |v: &[Violation]| -> Vec<OrderNo> {
        v.iter()
            .filter_map(|x| match x {
                Violation::PayAtOnceUnpaid { order_no, .. } => Some(*order_no),
                _ => None,
            })
            .collect()
    };
    // While traffic runs a pay-at-once order may wait for its charge; a close without a decline may not.
    let busy = h.orderly.audit(false, 60 * 60 * 1000).await.expect("audit");
    assert_eq!(unpaid(&busy.violations), vec![closed.order_no], "{:?}", busy.violations);
    let quiet = h.orderly.audit(true, 60 * 60 * 1000).await.expect("audit");
    let mut named = unpaid(&quiet.violations);
    named.sort_unstable();
    assert_eq!(named, vec![closed.order_no, left.order_no], "{:?}", quiet.violations);
}
