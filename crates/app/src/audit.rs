//! The invariants of ARCHITECTURE.md checked over a store, a cache, a bus and the payment service.
//!
//! I1 no oversell, I2 no leak (once quiet), I3 exactly once, I4 forced completion (every order definite,
//! every pay-at-once order paid or declined), I5 payments.
//! Used by the tests and by `orderly audit`.

use std::collections::{BTreeMap, HashMap};

use orderly_domain::{CommodityId, OrderNo, OrderState};
use serde::Serialize;

use crate::orderly::Orderly;
use crate::ports::PortError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "invariant", rename_all = "snake_case")]
pub enum Violation {
    /// I1: more sold than ever added, or the ledger below zero.
    Oversold { commodity_id: CommodityId, initial: u64, sold: u64 },
    /// I2: initial ≠ available + sold in live orders.
    Leaked { commodity_id: CommodityId, initial: u64, available: u64, sold: u64 },
    /// I2: the cache would sell a different amount than the store holds (only checked when quiet).
    CacheDisagrees { commodity_id: CommodityId, cache: Option<u64>, store: u64 },
    /// I3: two order numbers with one snowflake id — the id generator repeated itself.
    DuplicateId { order_nos: Vec<OrderNo> },
    /// I3: an order the flow cannot have made: created without a reservation, without lines, or
    /// naming a commodity the store has no stock ledger for.
    Orphan { order_no: OrderNo, reason: &'static str },
    /// I4: still pending (or paying) past its deadline.
    NotDefinite { order_no: OrderNo, state: OrderState, age_ms: u64 },
    /// I5: paid without a successful charge, or a successful charge on an order not paid.
    PaymentMismatch { order_no: OrderNo, state: Option<OrderState>, charged: bool },
    /// I5: two successful charges for one order.
    ChargedTwice { order_no: OrderNo },
    /// I4: a pay-at-once order closed by the unpaid timeout with no decline from the acquirer, or (when
    /// quiet) left to pay with no charge running and none declined — the buyer asked to pay at once.
    PayAtOnceUnpaid { order_no: OrderNo, state: OrderState },
}

#[derive(Debug, Clone, Serialize)]
pub struct StockRow {
    pub commodity_id: CommodityId,
    pub initial: u64,
    pub available: u64,
    pub sold: u64,
    pub cache: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub quiet: bool,
    pub orders_by_state: BTreeMap<&'static str, usize>,
    pub stock: Vec<StockRow>,
    pub violations: Vec<Violation>,
}

impl Orderly {
    /// Checks I1–I5. `quiet`: no traffic, queues drained, timers fired — only then are I2's equalities
    /// owed. `deadline_ms`: how long an order may take to become definite.
    pub async fn audit(&self, quiet: bool, deadline_ms: u64) -> Result<AuditReport, PortError> {
        let now_ms = self.ports.clock.now_ms();
        let (orders, stock) = self.ports.store.audit_view().await?;
        let ids: Vec<CommodityId> = stock.iter().map(|(id, _)| *id).collect();
        let cache = self.ports.cache.available(&ids).await?;
        let charges = self.ports.payments.succeeded().await?;
        let mut violations = Vec::new();

        let mut sold: HashMap<CommodityId, u64> = HashMap::new();
        let mut orders_by_state = BTreeMap::new();
        let ledger: std::collections::HashSet<CommodityId> = stock.iter().map(|(id, _)| *id).collect();
        let mut by_id: HashMap<u64, Vec<OrderNo>> = HashMap::new();
        for order in &orders {
            by_id.entry(order.order_no.id.0).or_default().push(order.order_no);
            let created = !matches!(order.state, OrderState::Pending | OrderState::Rejected);
            let orphan = if order.lines.is_empty() {
                Some("no lines")
            } else if order.lines.iter().any(|l| !ledger.contains(&l.commodity_id)) {
                Some("a commodity without a stock ledger")
            } else if created && order.token_generation.is_none() {
                Some("created without a reservation")
            } else {
                None
            };
            if let Some(reason) = orphan {
                violations.push(Violation::Orphan { order_no: order.order_no, reason });
            }
            *orders_by_state.entry(order.state.as_str()).or_insert(0) += 1;
            if order.state.holds_stock() {
                for line in &order.lines {
                    *sold.entry(line.commodity_id).or_insert(0) += u64::from(line.quantity);
                }
            }
            if order.pay_at_once && order.last_decline.is_none() {
                let left_to_pay = quiet && order.state == OrderState::ToPay && order.payment_attempt.is_none();
                if order.state == OrderState::Closed || left_to_pay {
                    violations.push(Violation::PayAtOnceUnpaid { order_no: order.order_no, state: order.state });
                }
            }
            let age_ms = now_ms.saturating_sub(order.created_ms);
            let unsettled = order.state == OrderState::Pending || order.payment_attempt.is_some();
            if unsettled && age_ms > deadline_ms {
                violations.push(Violation::NotDefinite { order_no: order.order_no, state: order.state, age_ms });
            }
        }

        let mut duplicates: Vec<Vec<OrderNo>> = by_id.into_values().filter(|nos| nos.len() > 1).collect();
        duplicates.sort();
        violations.extend(duplicates.into_iter().map(|order_nos| Violation::DuplicateId { order_nos }));

        let mut rows = Vec::with_capacity(stock.len());
        for ((commodity_id, level), cache) in stock.into_iter().zip(cache) {
            let sold = sold.get(&commodity_id).copied().unwrap_or(0);
            if sold > level.initial {
                violations.push(Violation::Oversold { commodity_id, initial: level.initial, sold });
            }
            if level.available + sold != level.initial {
                violations.push(Violation::Leaked {
                    commodity_id,
                    initial: level.initial,
                    available: level.available,
                    sold,
                });
            }
            if quiet && cache.is_some_and(|c| c != level.available) {
                violations.push(Violation::CacheDisagrees { commodity_id, cache, store: level.available });
            }
            rows.push(StockRow { commodity_id, initial: level.initial, available: level.available, sold, cache });
        }

        let mut charged: HashMap<OrderNo, usize> = HashMap::new();
        for (order_no, _) in &charges {
            *charged.entry(*order_no).or_insert(0) += 1;
        }
        for (order_no, count) in &charged {
            if *count > 1 {
                violations.push(Violation::ChargedTwice { order_no: *order_no });
            }
        }
        let by_no: HashMap<OrderNo, OrderState> = orders.iter().map(|o| (o.order_no, o.state)).collect();
        for order in &orders {
            let is_charged = charged.contains_key(&order.order_no);
            let paid = order.state == OrderState::Paid;
            // A charge may succeed before the order shows it; that gap closes when quiet.
            if paid != is_charged && (paid || quiet) {
                violations.push(Violation::PaymentMismatch {
                    order_no: order.order_no,
                    state: Some(order.state),
                    charged: is_charged,
                });
            }
        }
        for order_no in charged.keys() {
            if !by_no.contains_key(order_no) {
                violations.push(Violation::PaymentMismatch { order_no: *order_no, state: None, charged: true });
            }
        }
        Ok(AuditReport { quiet, orders_by_state, stock: rows, violations })
    }
}
