//! What a `Store` decides, written once for every store: the batched create (the final oversell guard)
//! and an order transition with its stock return. Pure: a store reads (and locks) what these need,
//! calls them, and writes what they return in one atomic write.

use std::collections::BTreeMap;

use orderly_domain::{CommodityId, Effect, OrderAction, OrderState, transition};

use crate::model::{Order, OutboxEvent, Restock, StockLevel};
use crate::ports::{ChangeRejection, CreateOutcome, CreateRequest, PortError};

/// Stock as a write leaves it, by commodity.
pub type Levels = BTreeMap<CommodityId, StockLevel>;

/// What becomes of one still-pending order of a create batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateDecision {
    /// The order to write: `to_pay` with its token generation, or `rejected`.
    pub order: Order,
    pub outcome: CreateOutcome,
    /// Outbox events to write with it.
    pub events: Vec<OutboxEvent>,
    /// Commodities whose level this decision changed.
    pub deducted: Vec<CommodityId>,
}

/// Decides a pending order: every line must fit in the durable stock (`levels`, which must hold every
/// line's commodity that has a ledger), or none is taken and the order is rejected — the final oversell
/// guard. An order without a reservation (`token: None`: the cache had no stock) is rejected.
pub fn decide_create(request: &CreateRequest, levels: &mut Levels, now_ms: u64) -> Result<CreateDecision, PortError> {
    let mut order = request.order.clone();
    let short = match request.token {
        None => order.lines.first().map(|l| l.commodity_id),
        Some(_) => order
            .lines
            .iter()
            .find(|l| levels.get(&l.commodity_id).is_none_or(|s| s.available < u64::from(l.quantity)))
            .map(|l| l.commodity_id),
    };
    order.updated_ms = now_ms;
    let step = |order: &Order, action| {
        transition(order.state, action).map(|t| t.next).map_err(|e| PortError::corrupt("store rules", e))
    };
    if let Some(commodity_id) = short {
        order.state = step(&order, OrderAction::Reject)?;
        order.rejected_for = Some(commodity_id);
        return Ok(CreateDecision {
            order,
            outcome: CreateOutcome::Rejected { commodity_id },
            events: Vec::new(),
            deducted: Vec::new(),
        });
    }
    let mut deducted = Vec::with_capacity(order.lines.len());
    for line in &order.lines {
        if let Some(level) = levels.get_mut(&line.commodity_id) {
            level.available -= u64::from(line.quantity);
            deducted.push(line.commodity_id);
        }
    }
    order.state = step(&order, OrderAction::Create)?;
    order.token_generation = request.token.map(|t| t.generation);
    let order_no = order.order_no;
    let mut events = vec![OutboxEvent::ScheduleUnpaidTimeout { order_no, at_ms: request.unpaid_deadline_ms }];
    if order.pay_at_once {
        events.push(OutboxEvent::Charge { order_no });
    }
    Ok(CreateDecision { order, outcome: CreateOutcome::Created, events, deducted })
}

/// An order after `action`, through the FSM, with its store-side effect: stock returned to `levels`
/// (which must hold every line's commodity) and the restock event telling the cache. A refused action
/// changes nothing.
pub fn apply_transition(
    mut order: Order,
    action: OrderAction,
    levels: &mut Levels,
    now_ms: u64,
) -> Result<Result<(Order, Option<OutboxEvent>), ChangeRejection>, PortError> {
    let step = match transition(order.state, action) {
        Ok(step) => step,
        Err(rejection) => return Ok(Err(rejection.into())),
    };
    let mut event = None;
    if step.effects.contains(&Effect::ReturnStock) {
        let mut lines = Vec::with_capacity(order.lines.len());
        for line in &order.lines {
            let level = levels.get_mut(&line.commodity_id).ok_or_else(|| {
                PortError::corrupt(
                    "store rules",
                    format!("order {} sold unknown {}", order.order_no, line.commodity_id),
                )
            })?;
            level.available += u64::from(line.quantity);
            level.version += 1;
            if level.available > level.initial {
                return Err(PortError::corrupt(
                    "store rules",
                    format!("{} returned past its initial stock", line.commodity_id),
                ));
            }
            lines.push((line.commodity_id, line.quantity, level.version));
        }
        let key = format!("return:{}:{}", order.order_no, action_name(action));
        event = Some(OutboxEvent::RestockCache(Restock { key, shop_id: order.shop_id, lines }));
    }
    order.state = step.next;
    order.updated_ms = now_ms;
    debug_assert!(order.state != OrderState::Pending, "no action leads back to pending");
    Ok(Ok((order, event)))
}

fn action_name(action: OrderAction) -> &'static str {
    match action {
        OrderAction::Create => "create",
        OrderAction::Pay => "pay",
        OrderAction::Cancel => "cancel",
        OrderAction::AutoCancel => "auto_cancel",
        OrderAction::Reject => "reject",
    }
}
