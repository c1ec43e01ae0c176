//! Property: random interleavings of orders, cancels, payments, timeouts, duplicate deliveries, worker
//! steps, payment faults, restarts and a lost stock cache never oversell and conserve stock (I1, I2), and once quiet every
//! invariant I1–I5 holds. A failing case prints its operations and replays from proptest's seed file.

mod common;

use std::sync::Arc;

use common::*;
use orderly_app::Actor;
use orderly_app::audit::Violation;
use orderly_app::model::{Message, Outgoing};
use orderly_app::time::ManualClock;
use orderly_app::workers::Step;
use orderly_app::{Orderly, Ports};
use orderly_domain::{
    CatalogEntry, CommodityId, Money, OrderNo, OrderState, PlaceOrderBody, PlaceOrderLine, ShopId, Uid,
};
use orderly_local::AcquirerConfig;
use proptest::prelude::*;

const STOCK: u32 = 6;

#[derive(Debug, Clone)]
enum Op {
    Place {
        uid: u64,
        lines: Vec<(u64, i64)>,
        pay_at_once: bool,
        key: Option<u8>,
    },
    Step(usize),
    Advance(u64),
    Cancel(usize),
    Pay(usize),
    Redeliver(usize),
    Restart,
    /// The stock cache is lost (Redis flushed) now, or right after the next claim with an immediate reload.
    LoseCache {
        at_next_claim: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..4u64, prop::collection::vec((1..=3u64, 1..=4i64), 1..=3), any::<bool>(), prop::option::of(0..3u8))
            .prop_map(|(uid, lines, pay_at_once, key)| Op::Place { uid, lines, pay_at_once, key }),
        4 => (0..Step::ALL.len()).prop_map(Op::Step),
        2 => prop::sample::select(vec![500u64, 10_000, 60_000, 15 * 60 * 1000]).prop_map(Op::Advance),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => any::<usize>().prop_map(Op::Pay),
        1 => any::<usize>().prop_map(Op::Redeliver),
        1 => Just(Op::Restart),
        1 => any::<bool>().prop_map(|at_next_claim| Op::LoseCache { at_next_claim }),
    ]
}

fn cart(uid: u64, lines: &[(u64, i64)], pay_at_once: bool) -> PlaceOrderBody {
    let mut seen = std::collections::HashSet::new();
    let details = lines
        .iter()
        .filter(|(id, _)| seen.insert(*id))
        .map(|&(id, num)| {
            let price = Money::from_cents(1000 * id as i64);
            PlaceOrderLine {
                actual_price: price,
                commodity_id: CommodityId(id),
                good_type: 0,
                page_type: 0,
                prices: price,
                user_id: ShopId(if id == 2 { 200 } else { 100 }),
                num,
            }
        })
        .collect();
    PlaceOrderBody {
        uid: Uid(uid),
        to_uid: Uid(uid),
        origin_price: Money::ZERO,
        actual_price: Money::ZERO,
        pay_at_once,
        commodity_details: details,
    }
}

fn assert_never_oversold(report: &orderly_app::audit::AuditReport, ops: &[Op]) {
    for violation in &report.violations {
        assert!(
            !matches!(
                violation,
                Violation::Oversold { .. } | Violation::Leaked { .. } | Violation::ChargedTwice { .. }
            ),
            "{violation:?} after {ops:#?}"
        );
    }
}

async fn run(ops: Vec<Op>, faults: (f64, f64, f64), seed: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let acquirer = AcquirerConfig {
        decline_rate: faults.0,
        timeout_rate: faults.1,
        lost_answer_rate: faults.2,
        seed,
        ..AcquirerConfig::default()
    };
    let (mut orderly, mut ports): (Orderly, Ports) = open_at(dir.path(), Arc::clone(&clock), acquirer.clone()).await;
    let mut cache = LosableCache::install(&mut orderly, &mut ports);
    let catalog: Vec<CatalogEntry> = (1..=3u64)
        .map(|id| CatalogEntry {
            commodity_id: CommodityId(id),
            shop_id: ShopId(if id == 2 { 200 } else { 100 }),
            unit_price: Money::from_cents(1000 * id as i64),
        })
        .collect();
    let stock: Vec<(CommodityId, u32)> = (1..=3).map(|id| (CommodityId(id), STOCK)).collect();
    orderly.load_catalog(&catalog, &stock).await.expect("catalog");
    let mut accepted: Vec<(Uid, OrderNo)> = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        match op {
            Op::Place { uid, lines, pay_at_once, key } => {
                let key = key.map(|k| format!("k{k}"));
                if let Ok(order_nos) = orderly.place_orders(&cart(*uid, lines, *pay_at_once), key.as_deref()).await {
                    accepted.extend(order_nos.into_iter().map(|n| (Uid(*uid), n)));
                }
            }
            Op::Step(step) => {
                orderly.try_execute(Step::ALL[*step]).await.expect("step");
            }
            Op::Advance(ms) => clock.advance_ms(*ms),
            Op::Cancel(pick) if !accepted.is_empty() => {
                let (uid, order_no) = accepted[pick % accepted.len()];
                let _ = orderly.cancel(Actor::Buyer(uid), order_no).await;
            }
            Op::Pay(pick) if !accepted.is_empty() => {
                let (uid, order_no) = accepted[pick % accepted.len()];
                let _ = orderly.pay(Actor::Buyer(uid), order_no).await;
            }
            Op::Redeliver(pick) if !accepted.is_empty() => {
                let (_, order_no) = accepted[pick % accepted.len()];
                let mut copy = ports.store.order(order_no).await.expect("store").expect("recorded");
                copy.state = OrderState::Pending;
                let now_ms = orderly_app::Clock::now_ms(clock.as_ref());
                let message = Outgoing { message: Message::CreateOrder(Box::new(copy)), deliver_at_ms: now_ms };
                ports.bus.publish(vec![message]).await.expect("publish");
            }
            Op::Restart => {
                drop((orderly, ports));
                drop(cache); // it holds the store too
                (orderly, ports) = reopen_at(dir.path(), Arc::clone(&clock), acquirer.clone()).await;
                cache = LosableCache::install(&mut orderly, &mut ports);
            }
            Op::LoseCache { at_next_claim: true } => cache.lose_at_next_claim(),
            Op::LoseCache { at_next_claim: false } => cache.lose(),
            Op::Cancel(_) | Op::Pay(_) | Op::Redeliver(_) => {}
        }
        let report = orderly.audit(false, u64::MAX).await.expect("audit");
        assert_never_oversold(&report, &ops[..=index]);
    }
    settle_and_audit(&orderly, &clock).await;
    for (_, order_no) in &accepted {
        let state = ports.store.order(*order_no).await.expect("store").expect("every accepted order exists").state;
        assert!(state.is_final() || state == OrderState::ToPay, "{order_no} still {state:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_never_oversell_and_conserve_stock(
        ops in prop::collection::vec(op(), 1..60),
        faults in prop::sample::select(vec![(0.0, 0.0, 0.0), (0.3, 0.2, 0.2)]),
        seed in any::<u64>(),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        runtime.block_on(run(ops, faults, seed));
    }
}
