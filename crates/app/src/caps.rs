//! The buyer's caps ([`BuyerCaps`]): units of one commodity held in live orders, and orders left unpaid.
//!
//! How a cap holds against racing carts: the entry reads the buyer's orders from the store — the truth
//! for every order it has, the cart's own pending views included — and then asks the [`Holdings`] gate,
//! one atomic call per buyer, to admit the cart's orders. The gate remembers the orders it admitted for
//! [`RECENT_MS`] (far longer than an entry takes to write their pending views) and counts those the
//! store read did not find yet; for an order the store read found, the store's state wins (one cancelled
//! a moment ago holds nothing). A cart that would take the buyer past a cap is refused and nothing is
//! recorded; two racing carts meet in the gate, and the second counts the first. A cart refused later
//! (sold out, an error) is withdrawn from the gate.
//!
//! Why a gate per buyer and not a line of the reservation script: on a Redis Cluster a reservation is one
//! shop's (its keys share the shop's slot), and a buyer's orders span shops; the gate is one key under
//! the buyer's hash tag. [`judge`] is the rule; the in-process gate calls it and `admit.lua` is its copy,
//! and both pass the same contract suite.
//!
//! [`Holdings`]: crate::ports::Holdings

use std::collections::HashSet;

use orderly_domain::{CommodityId, OrderNo, OrderState};

use crate::config::BuyerCaps;
use crate::model::Order;

/// How long the gate counts an order it admitted that the store read does not show.
pub const RECENT_MS: u64 = 60_000;

/// The buyer's orders read per page, and the most pages read, for one cart: a cap counts the live orders
/// among the buyer's latest `PAGE * PAGES`.
pub const PAGE: usize = 100;
pub const PAGES: usize = 10;

/// What an order holds for the caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// `pending` or `to_pay`: counts towards both caps.
    Unpaid,
    /// `paid` within the window: counts towards the units.
    Paid,
    /// Cancelled, closed, rejected, or paid before the window: holds nothing.
    Free,
}

/// An order as the gate counts it: its number, what it holds, and its lines (only those of the cart's
/// commodities matter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldOrder {
    pub order_no: OrderNo,
    pub holding: Holding,
    pub lines: Vec<(CommodityId, u32)>,
}

/// One cart at the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub now_ms: u64,
    /// How long an admitted order counts without the store's word ([`RECENT_MS`]).
    pub recent_ms: u64,
    /// 0: off.
    pub units_per_commodity: u32,
    /// 0: off.
    pub unpaid_orders: u32,
    /// The buyer's orders as the store read them.
    pub known: Vec<HeldOrder>,
    /// The cart's orders (each `Unpaid`).
    pub new: Vec<HeldOrder>,
}

/// The gate's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Recorded (or already counted: a retry of the same orders).
    Admitted,
    /// The buyer holds `held` units of this commodity; the cart's would pass `cap`. Nothing recorded.
    PurchaseCap { commodity_id: CommodityId, held: u64, cap: u32 },
    /// The buyer has `held` unpaid orders; the cart's would pass `cap`. Nothing recorded.
    UnpaidCap { held: u64, cap: u32 },
}

/// An order the gate admitted: its number, when, and its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub order_no: OrderNo,
    pub at_ms: u64,
    pub lines: Vec<(CommodityId, u32)>,
}

/// The rule of the gate: whether `admission` passes, given the orders the gate admitted lately. The
/// cart's orders already counted (known to the store, or admitted lately: a retry) are not counted again;
/// a cart that adds nothing passes.
pub fn judge(admission: &Admission, recent: &[Admitted]) -> Admit {
    let (counted, fresh) = count(admission, recent);
    if fresh.is_empty() {
        return Admit::Admitted;
    }
    let cap = admission.units_per_commodity;
    if cap > 0 {
        let units = |orders: &mut dyn Iterator<Item = &[(CommodityId, u32)]>, id: CommodityId| -> u64 {
            orders.flat_map(|lines| lines.iter()).filter(|(c, _)| *c == id).map(|(_, q)| u64::from(*q)).sum()
        };
        for &(id, _) in fresh.iter().flat_map(|o| o.lines.iter()) {
            let held = units(&mut counted.iter().map(|(_, lines)| *lines), id);
            let adding = units(&mut fresh.iter().map(|o| &o.lines[..]), id);
            if held + adding > u64::from(cap) {
                return Admit::PurchaseCap { commodity_id: id, held, cap };
            }
        }
    }
    let cap = admission.unpaid_orders;
    if cap > 0 {
        let held = counted.iter().filter(|(holding, _)| *holding == Holding::Unpaid).count() as u64;
        if held + fresh.len() as u64 > u64::from(cap) {
            return Admit::UnpaidCap { held, cap };
        }
    }
    Admit::Admitted
}

/// The cart's orders not counted yet (neither in the store's read nor admitted lately): what a pass
/// records.
pub fn fresh<'a>(admission: &'a Admission, recent: &'a [Admitted]) -> Vec<&'a HeldOrder> {
    count(admission, recent).1
}

/// An order that counts: what it holds, and its lines.
type Counted<'a> = (Holding, &'a [(CommodityId, u32)]);

/// What counts (each live order once: the store's word first, then the orders admitted lately), and the
/// cart's orders that would add to it.
fn count<'a>(admission: &'a Admission, recent: &'a [Admitted]) -> (Vec<Counted<'a>>, Vec<&'a HeldOrder>) {
    let mut counted: Vec<Counted> =
        admission.known.iter().filter(|o| o.holding != Holding::Free).map(|o| (o.holding, &o.lines[..])).collect();
    let mut seen: HashSet<OrderNo> = admission.known.iter().map(|o| o.order_no).collect();
    for admitted in recent {
        if admitted.at_ms.saturating_add(admission.recent_ms) >= admission.now_ms && seen.insert(admitted.order_no) {
            counted.push((Holding::Unpaid, &admitted.lines));
        }
    }
    let fresh = admission.new.iter().filter(|o| !seen.contains(&o.order_no)).collect();
    (counted, fresh)
}

/// What `order` holds at `now_ms` under `caps`.
pub fn holding(order: &Order, now_ms: u64, caps: &BuyerCaps) -> Holding {
    match order.state {
        OrderState::Pending | OrderState::ToPay => Holding::Unpaid,
        OrderState::Paid if order.created_ms.saturating_add(caps.window_ms) >= now_ms => Holding::Paid,
        OrderState::Paid | OrderState::Cancelled | OrderState::Closed | OrderState::Rejected => Holding::Free,
    }
}

/// How far back the buyer's orders matter: the units' window, and for unpaid orders twice their timeout
/// (an order accepted and not yet created is still unpaid; one unpaid past that has been closed).
pub fn lookback_ms(caps: &BuyerCaps, unpaid_timeout_ms: u64) -> u64 {
    let units = if caps.units_per_commodity > 0 { caps.window_ms } else { 0 };
    units.max(unpaid_timeout_ms.saturating_mul(2))
}

/// The gate's question for a cart: the buyer's `orders` (newest first, as read) against the cart's.
pub fn admission(cart: &[Order], orders: &[Order], now_ms: u64, caps: &BuyerCaps) -> Admission {
    let in_cart: HashSet<CommodityId> = cart.iter().flat_map(Order::stock_lines).map(|(id, _)| id).collect();
    let relevant = |order: &Order| -> Vec<(CommodityId, u32)> {
        order.stock_lines().into_iter().filter(|(id, _)| in_cart.contains(id)).collect()
    };
    Admission {
        now_ms,
        recent_ms: RECENT_MS,
        units_per_commodity: caps.units_per_commodity,
        unpaid_orders: caps.unpaid_orders,
        known: orders
            .iter()
            .map(|o| HeldOrder { order_no: o.order_no, holding: holding(o, now_ms, caps), lines: relevant(o) })
            .collect(),
        new: cart
            .iter()
            .map(|o| HeldOrder { order_no: o.order_no, holding: Holding::Unpaid, lines: relevant(o) })
            .collect(),
    }
}

/// When a refused cart may pass: the first of the counted orders that would free room leaves — an
/// unpaid one by its timeout at the latest, a paid one when it leaves the window. At least a second.
pub fn retry_after_ms(refusal: &Admit, orders: &[Order], now_ms: u64, caps: &BuyerCaps, unpaid_timeout_ms: u64) -> u64 {
    let frees_at = |order: &Order| match holding(order, now_ms, caps) {
        Holding::Unpaid => Some(order.created_ms.saturating_add(unpaid_timeout_ms)),
        Holding::Paid => Some(order.created_ms.saturating_add(caps.window_ms)),
        Holding::Free => None,
    };
    let first = match refusal {
        Admit::Admitted => None,
        Admit::UnpaidCap { .. } => {
            orders.iter().filter(|o| holding(o, now_ms, caps) == Holding::Unpaid).filter_map(frees_at).min()
        }
        Admit::PurchaseCap { commodity_id, .. } => {
            orders.iter().filter(|o| o.lines.iter().any(|l| l.commodity_id == *commodity_id)).filter_map(frees_at).min()
        }
    };
    // Only orders admitted lately (not in the store's read yet): the store shows them, or the gate forgets
    // them, within RECENT_MS; ask again then.
    let first = first.unwrap_or(now_ms.saturating_add(RECENT_MS.min(unpaid_timeout_ms)));
    first.saturating_sub(now_ms).max(1_000)
}

#[cfg(test)]
mod tests {
    use orderly_domain::{SnowflakeId, Uid};

    use super::*;

    const A: CommodityId = CommodityId(1);
    const B: CommodityId = CommodityId(2);

    fn no(n: u64) -> OrderNo {
        OrderNo::new(SnowflakeId(n), Uid(7))
    }

    fn held(n: u64, holding: Holding, lines: &[(CommodityId, u32)]) -> HeldOrder {
        HeldOrder { order_no: no(n), holding, lines: lines.to_vec() }
    }

    fn admission(known: Vec<HeldOrder>, new: Vec<HeldOrder>, units: u32, unpaid: u32) -> Admission {
        Admission {
            now_ms: 100_000,
            recent_ms: RECENT_MS,
            units_per_commodity: units,
            unpaid_orders: unpaid,
            known,
            new,
        }
    }

    #[test]
    fn units_held_in_live_orders_count_and_free_ones_do_not() {
        let known = vec![
            held(1, Holding::Paid, &[(A, 2)]),
            held(2, Holding::Free, &[(A, 5)]),
            held(3, Holding::Unpaid, &[(B, 1)]),
        ];
        let one_more = admission(known.clone(), vec![held(9, Holding::Unpaid, &[(A, 1)])], 3, 0);
        assert_eq!(judge(&one_more, &[]), Admit::Admitted);
        let two_more = admission(
            known,
            vec![held(9, Holding::Unpaid, &[(A, 1), (B, 1)]), held(10, Holding::Unpaid, &[(A, 1)])],
            3,
            0,
        );
        assert_eq!(judge(&two_more, &[]), Admit::PurchaseCap { commodity_id: A, held: 2, cap: 3 });
    }

    #[test]
    fn orders_admitted_lately_count_until_the_store_shows_them_and_the_store_wins() {
        let recent = [
            Admitted { order_no: no(1), at_ms: 99_000, lines: vec![(A, 2)] },
            Admitted { order_no: no(2), at_ms: 99_500, lines: vec![(A, 1)] },
        ];
        let cart = vec![held(9, Holding::Unpaid, &[(A, 1)])];
        assert_eq!(
            judge(&admission(vec![], cart.clone(), 3, 0), &recent),
            Admit::PurchaseCap { commodity_id: A, held: 3, cap: 3 }
        );
        // The store read shows order 1 cancelled: it holds nothing, however lately it was admitted.
        let known = vec![held(1, Holding::Free, &[(A, 2)])];
        assert_eq!(judge(&admission(known, cart.clone(), 3, 0), &recent), Admit::Admitted);
        // Admitted longer ago than `recent_ms` and not in the store: never written (a failed entry).
        let old = [Admitted { order_no: no(1), at_ms: 100_000 - RECENT_MS - 1, lines: vec![(A, 3)] }];
        assert_eq!(judge(&admission(vec![], cart, 3, 0), &old), Admit::Admitted);
    }

    #[test]
    fn a_retry_of_orders_already_counted_passes() {
        let known = vec![held(1, Holding::Unpaid, &[(A, 3)])];
        let again = admission(known, vec![held(1, Holding::Unpaid, &[(A, 3)])], 3, 1);
        assert_eq!(judge(&again, &[]), Admit::Admitted);
        let recent = [Admitted { order_no: no(2), at_ms: 99_000, lines: vec![(A, 3)] }];
        let again = admission(vec![], vec![held(2, Holding::Unpaid, &[(A, 3)])], 3, 1);
        assert_eq!(judge(&again, &recent), Admit::Admitted);
    }

    #[test]
    fn unpaid_orders_are_counted_whatever_they_hold() {
        let known = vec![held(1, Holding::Unpaid, &[]), held(2, Holding::Paid, &[(A, 1)]), held(3, Holding::Free, &[])];
        let recent = [Admitted { order_no: no(4), at_ms: 99_000, lines: vec![] }];
        let cart = vec![held(9, Holding::Unpaid, &[(B, 1)])];
        assert_eq!(judge(&admission(known.clone(), cart.clone(), 0, 3), &recent), Admit::Admitted);
        let two = vec![held(9, Holding::Unpaid, &[(B, 1)]), held(10, Holding::Unpaid, &[(A, 1)])];
        assert_eq!(judge(&admission(known, two, 0, 3), &recent), Admit::UnpaidCap { held: 2, cap: 3 });
    }

    #[test]
    fn caps_off_admit_everything() {
        let known = vec![held(1, Holding::Unpaid, &[(A, 1_000)])];
        assert_eq!(judge(&admission(known, vec![held(9, Holding::Unpaid, &[(A, 1)])], 0, 0), &[]), Admit::Admitted);
    }
}
