//! The `Holdings` contract: the gate of the buyer's caps ([`orderly_app::caps`]) — a cart judged and
//! recorded in one step, so racing carts of one buyer never pass a cap together; orders admitted lately
//! counted until the store's read shows them, and the store's word winning then; refusals recording
//! nothing; withdrawals; retries; buyers kept apart.

use std::sync::Arc;

use orderly_app::caps::{Admission, Admit, HeldOrder, Holding, RECENT_MS};
use orderly_app::ports::Holdings;
use orderly_domain::{CommodityId, OrderNo, SnowflakeId, Uid};

const A: CommodityId = CommodityId(11);
const B: CommodityId = CommodityId(12);
const BUYER: Uid = Uid(501);
const NOW: u64 = 1_800_000_000_000;

fn no(n: u64) -> OrderNo {
    OrderNo::new(SnowflakeId(n << 22), BUYER)
}

fn order(n: u64, holding: Holding, lines: &[(CommodityId, u32)]) -> HeldOrder {
    HeldOrder { order_no: no(n), holding, lines: lines.to_vec() }
}

fn cart(n: u64, lines: &[(CommodityId, u32)]) -> Vec<HeldOrder> {
    vec![order(n, Holding::Unpaid, lines)]
}

fn admission(now_ms: u64, known: Vec<HeldOrder>, new: Vec<HeldOrder>, units: u32, unpaid: u32) -> Admission {
    Admission { now_ms, recent_ms: RECENT_MS, units_per_commodity: units, unpaid_orders: unpaid, known, new }
}

async fn admit(gate: &Arc<dyn Holdings>, admission: Admission) -> Admit {
    gate.admit(BUYER, &admission).await.expect("admit")
}

pub async fn a_cart_past_the_units_cap_is_refused_and_records_nothing(gate: Arc<dyn Holdings>) {
    let known = vec![order(1, Holding::Paid, &[(A, 2)]), order(2, Holding::Free, &[(A, 9)])];
    let refused = admit(&gate, admission(NOW, known.clone(), cart(10, &[(A, 2), (B, 1)]), 3, 0)).await;
    assert_eq!(refused, Admit::PurchaseCap { commodity_id: A, held: 2, cap: 3 });
    // The refused cart holds nothing: one unit still fits, and only one.
    assert_eq!(admit(&gate, admission(NOW, known.clone(), cart(11, &[(A, 1)]), 3, 0)).await, Admit::Admitted);
    let full = admit(&gate, admission(NOW, known, cart(12, &[(A, 1)]), 3, 0)).await;
    assert_eq!(full, Admit::PurchaseCap { commodity_id: A, held: 3, cap: 3 });
}

pub async fn racing_carts_never_pass_a_cap_together(gate: Arc<dyn Holdings>) {
    let mut racers = Vec::new();
    for n in 0..20 {
        let gate = Arc::clone(&gate);
        // Every racer read the store before any was admitted: only the gate can count the others.
        racers.push(tokio::spawn(
            async move { admit(&gate, admission(NOW, vec![], cart(100 + n, &[(A, 1)]), 3, 0)).await },
        ));
    }
    let mut admitted = 0;
    for racer in racers {
        match racer.await.expect("racer") {
            Admit::Admitted => admitted += 1,
            Admit::PurchaseCap { commodity_id: A, held: 3, cap: 3 } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(admitted, 3, "exactly the cap");

    let other = Uid(502);
    let mut racers = Vec::new();
    for n in 0..20 {
        let gate = Arc::clone(&gate);
        let unpaid = admission(
            NOW,
            vec![],
            vec![HeldOrder {
                order_no: OrderNo::new(SnowflakeId((200 + n) << 22), other),
                holding: Holding::Unpaid,
                lines: vec![(B, 1)],
            }],
            0,
            2,
        );
        racers.push(tokio::spawn(async move { gate.admit(other, &unpaid).await.expect("admit") }));
    }
    let mut admitted = 0;
    for racer in racers {
        if racer.await.expect("racer") == Admit::Admitted {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 2, "exactly the unpaid cap");
}

pub async fn admitted_orders_count_until_the_store_shows_them(gate: Arc<dyn Holdings>) {
    assert_eq!(admit(&gate, admission(NOW, vec![], cart(1, &[(A, 2)]), 3, 0)).await, Admit::Admitted);
    let next = admit(&gate, admission(NOW + 1, vec![], cart(2, &[(A, 2)]), 3, 0)).await;
    assert_eq!(next, Admit::PurchaseCap { commodity_id: A, held: 2, cap: 3 }, "counted before the store shows it");
    // The store's read shows order 1 cancelled: it holds nothing however lately it was admitted.
    let freed =
        admit(&gate, admission(NOW + 2, vec![order(1, Holding::Free, &[(A, 2)])], cart(2, &[(A, 2)]), 3, 0)).await;
    assert_eq!(freed, Admit::Admitted);
}

pub async fn an_admission_stops_counting_after_recent_ms(gate: Arc<dyn Holdings>) {
    assert_eq!(admit(&gate, admission(NOW, vec![], cart(1, &[(A, 3)]), 3, 0)).await, Admit::Admitted);
    let within = admit(&gate, admission(NOW + RECENT_MS, vec![], cart(2, &[(A, 1)]), 3, 0)).await;
    assert_eq!(within, Admit::PurchaseCap { commodity_id: A, held: 3, cap: 3 });
    // Past the window and never in the store: an entry that failed without withdrawing.
    let after = admit(&gate, admission(NOW + RECENT_MS + 1, vec![], cart(2, &[(A, 1)]), 3, 0)).await;
    assert_eq!(after, Admit::Admitted);
}

pub async fn withdrawn_orders_no_longer_count(gate: Arc<dyn Holdings>) {
    let two = vec![order(1, Holding::Unpaid, &[(A, 1)]), order(2, Holding::Unpaid, &[(B, 1)])];
    assert_eq!(admit(&gate, admission(NOW, vec![], two, 0, 2)).await, Admit::Admitted);
    let third = admit(&gate, admission(NOW, vec![], cart(3, &[(A, 1)]), 0, 2)).await;
    assert_eq!(third, Admit::UnpaidCap { held: 2, cap: 2 });
    gate.withdraw(BUYER, &[no(1), no(2)]).await.expect("withdraw");
    gate.withdraw(BUYER, &[no(1)]).await.expect("withdraw again: nothing to do");
    assert_eq!(admit(&gate, admission(NOW, vec![], cart(3, &[(A, 1)]), 0, 2)).await, Admit::Admitted);
}

pub async fn a_retry_of_admitted_orders_passes_and_counts_once(gate: Arc<dyn Holdings>) {
    assert_eq!(admit(&gate, admission(NOW, vec![], cart(1, &[(A, 3)]), 3, 1)).await, Admit::Admitted);
    // The same cart again (an idempotent retry), before and after the store shows it.
    assert_eq!(admit(&gate, admission(NOW + 1, vec![], cart(1, &[(A, 3)]), 3, 1)).await, Admit::Admitted);
    let known = vec![order(1, Holding::Unpaid, &[(A, 3)])];
    assert_eq!(admit(&gate, admission(NOW + 2, known.clone(), cart(1, &[(A, 3)]), 3, 1)).await, Admit::Admitted);
    let another = admit(&gate, admission(NOW + 3, known, cart(2, &[(B, 1)]), 3, 1)).await;
    assert_eq!(another, Admit::UnpaidCap { held: 1, cap: 1 });
}

pub async fn buyers_are_kept_apart(gate: Arc<dyn Holdings>) {
    assert_eq!(admit(&gate, admission(NOW, vec![], cart(1, &[(A, 3)]), 3, 1)).await, Admit::Admitted);
    let other = Uid(503);
    let theirs = admission(
        NOW,
        vec![],
        vec![HeldOrder {
            order_no: OrderNo::new(SnowflakeId(9 << 22), other),
            holding: Holding::Unpaid,
            lines: vec![(A, 3)],
        }],
        3,
        1,
    );
    assert_eq!(gate.admit(other, &theirs).await.expect("admit"), Admit::Admitted);
}

pub async fn caps_off_refuse_nothing_but_still_record(gate: Arc<dyn Holdings>) {
    let known = vec![order(1, Holding::Unpaid, &[(A, 50)])];
    assert_eq!(admit(&gate, admission(NOW, known, cart(2, &[(A, 50)]), 0, 0)).await, Admit::Admitted);
    // Turned on: the store's read and the admission above count.
    let on =
        admit(&gate, admission(NOW, vec![order(1, Holding::Unpaid, &[(A, 50)])], cart(3, &[(A, 1)]), 100, 0)).await;
    assert_eq!(on, Admit::PurchaseCap { commodity_id: A, held: 100, cap: 100 });
}

pub async fn orders_the_store_already_shows_are_not_recorded_again(gate: Arc<dyn Holdings>) {
    // A keyed retry after the store showed the order: nothing to record.
    let known = vec![order(1, Holding::Paid, &[(A, 1)])];
    assert_eq!(admit(&gate, admission(NOW, known, cart(1, &[(A, 1)]), 0, 1)).await, Admit::Admitted);
    // Had it been recorded, it would count here as an unpaid order the store read does not show.
    assert_eq!(admit(&gate, admission(NOW + 1, vec![], cart(2, &[(A, 1)]), 0, 1)).await, Admit::Admitted);
}
