//! What a `Store` decides, written once for every store: the batched create (the final oversell guard),
//! an order's change by an action or a payment with its stock return. Pure: a store reads (and locks)
//! what these need, calls them, and writes what they return in one atomic write.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use orderly_domain::{CommodityId, Effect, OrderAction, OrderNo, OrderState, transition};

use crate::model::{IdempotencyRecord, Order, OutboxEvent, PaymentAttempt, Restock, StockLevel};
use crate::ports::{
    ChangeRejection, CreateOutcome, CreateRequest, IdempotencyBegin, OrderChange, PaymentResult, PortError,
};

/// The `meta` key under which a store keeps its [`crate::ports::Store::catalog_version`].
pub const CATALOG_VERSION: &str = "catalog_version";

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

/// What a create batch needs read (and, in a store that locks, locked) before [`plan_create`]: its
/// distinct order numbers and commodities, each sorted — the order in which rows are locked, so two
/// batches do not deadlock (PostgreSQL's one exception: `PgStore::lock_batch`).
pub fn create_batch_keys(requests: &[CreateRequest]) -> (Vec<OrderNo>, Vec<CommodityId>) {
    let order_nos: BTreeSet<OrderNo> = requests.iter().map(|r| r.order.order_no).collect();
    let commodities: BTreeSet<CommodityId> =
        requests.iter().flat_map(|r| r.order.lines.iter().map(|l| l.commodity_id)).collect();
    (order_nos.into_iter().collect(), commodities.into_iter().collect())
}

/// A create batch, decided: what to answer for each request and what to write, in one atomic write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreatePlan {
    /// One per request, in the requests' order.
    pub outcomes: Vec<CreateOutcome>,
    /// Orders to write (each order number once), and the outbox events they owe.
    pub orders: Vec<Order>,
    pub events: Vec<OutboxEvent>,
    /// Stock levels to write: one per commodity the batch deducted from, however many orders did.
    pub stock: Vec<(CommodityId, StockLevel)>,
}

/// Decides a whole create batch from what the store read for [`create_batch_keys`]: the orders stored
/// under its numbers (`stored`; a `pending` view counts as not created) and the stock levels of its
/// commodities (`levels`; a commodity without a ledger is absent). An order already created, or decided
/// earlier in the same batch (a duplicate message), is answered `AlreadyDone` and written again by
/// nobody; every other one goes through [`decide_create`] against the levels as the batch leaves them.
pub fn plan_create(
    requests: &[CreateRequest],
    mut stored: HashMap<OrderNo, Order>,
    mut levels: Levels,
    now_ms: u64,
) -> Result<CreatePlan, PortError> {
    let mut plan = CreatePlan { outcomes: Vec::with_capacity(requests.len()), ..CreatePlan::default() };
    let mut deducted = BTreeSet::new();
    for request in requests {
        let order_no = request.order.order_no;
        if let Some(existing) = stored.get(&order_no).filter(|o| o.state != OrderState::Pending) {
            plan.outcomes.push(CreateOutcome::AlreadyDone(Box::new(existing.clone())));
            continue;
        }
        let decision = decide_create(request, &mut levels, now_ms)?;
        deducted.extend(decision.deducted);
        plan.events.extend(decision.events);
        plan.outcomes.push(decision.outcome);
        plan.orders.push(decision.order.clone());
        stored.insert(order_no, decision.order);
    }
    plan.stock = deducted.into_iter().filter_map(|id| Some((id, levels.remove(&id)?))).collect();
    Ok(plan)
}

/// A request under an idempotency key the store already holds (`seen`): the same request is answered
/// from it; another request under the same key is refused.
pub fn idempotency_seen(seen: IdempotencyRecord, request: &IdempotencyRecord) -> IdempotencyBegin {
    if seen.request == request.request { IdempotencyBegin::Seen(seen) } else { IdempotencyBegin::Mismatch }
}

/// Decides a pending order: every line must fit in the durable stock (`levels`, which must hold every
/// line's commodity that has a ledger), or none is taken and the order is rejected — the final oversell
/// guard. An order without a reservation (`token: None`: the cache had no stock) is rejected.
pub fn decide_create(request: &CreateRequest, levels: &mut Levels, now_ms: u64) -> Result<CreateDecision, PortError> {
    let mut order = request.order.clone();
    // The create came over the bus: checked as read, so what follows may assert.
    if order.state != OrderState::Pending {
        return Err(PortError::corrupt(
            "create message",
            format!("order {} to create is {:?}, not pending", order.order_no, order.state),
        ));
    }
    let short = match request.token {
        None => request.short_of.or_else(|| order.lines.first().map(|l| l.commodity_id)),
        Some(_) => {
            // What the order takes of each commodity, all its lines counted (a cart names a commodity
            // once, but a create is read off the bus: it is not trusted to).
            let mut wanted: BTreeMap<CommodityId, u64> = BTreeMap::new();
            for line in &order.lines {
                *wanted.entry(line.commodity_id).or_default() += u64::from(line.quantity);
            }
            order
                .lines
                .iter()
                .find(|l| levels.get(&l.commodity_id).is_none_or(|s| s.available < wanted[&l.commodity_id]))
                .map(|l| l.commodity_id)
        }
    };
    order.updated_ms = now_ms;
    // Checked above: a pending order may be created or rejected, by the FSM's table.
    let step = |order: &Order, action| match transition(order.state, action) {
        Ok(step) => step.next,
        Err(rejection) => unreachable!("a pending order is always {action:?}-able: {rejection}"),
    };
    if let Some(commodity_id) = short {
        order.state = step(&order, OrderAction::Reject);
        order.rejected_for = Some(commodity_id);
        return Ok(CreateDecision {
            order,
            outcome: CreateOutcome::Rejected { commodity_id },
            events: Vec::new(),
            deducted: Vec::new(),
        });
    }
    let mut deducted = Vec::with_capacity(order.lines.len());
    let mut stock_versions = Vec::with_capacity(order.lines.len());
    for line in &order.lines {
        // `short` found every line's level with enough stock, or the order was rejected above.
        let Some(level) = levels.get_mut(&line.commodity_id) else {
            unreachable!("{} passed the stock check without a level", line.commodity_id)
        };
        assert!(level.available >= u64::from(line.quantity), "{} passed the stock check short", line.commodity_id);
        level.available -= u64::from(line.quantity);
        level.version += 1;
        deducted.push(line.commodity_id);
        stock_versions.push(level.version);
    }
    order.state = step(&order, OrderAction::Create);
    order.token_generation = request.token.map(|t| t.generation);
    order.stock_versions = stock_versions;
    let order_no = order.order_no;
    let mut events = vec![OutboxEvent::ScheduleUnpaidTimeout { order_no, at_ms: request.unpaid_deadline_ms }];
    if order.pay_at_once {
        events.push(OutboxEvent::Charge { order_no });
    }
    let outcome = CreateOutcome::Created(Box::new(order.clone()));
    Ok(CreateDecision { order, outcome, events, deducted })
}

/// An order after `action`, through the FSM, with its store-side effect: stock returned to `levels`
/// (which must hold every line's commodity) and the restock event telling the cache. A refused action
/// changes nothing.
fn apply_transition(
    mut order: Order,
    action: OrderAction,
    levels: &mut Levels,
    now_ms: u64,
) -> Result<Result<Changed, ChangeRejection>, PortError> {
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

/// An order after a change, and the outbox event the change owes (a restock), if any.
pub type Changed = (Order, Option<OutboxEvent>);

/// Whether `action` on `order` would return stock (its lines' levels are then read for [`change`]).
fn returns_stock(order: &Order, action: OrderAction) -> bool {
    transition(order.state, action).is_ok_and(|t| t.effects.contains(&Effect::ReturnStock))
}

/// A buyer's or a timer's action on an order. Cancel and auto-cancel wait while a payment is in flight
/// (its outcome decides whether the order is paid).
///
/// The unpaid timeout also waits for a pay-at-once order whose charge has not ended in a decline: the
/// buyer asked to pay, so the charge runs (and runs again after an attempt that got no answer) before the
/// order may close unpaid.
fn change(
    order: Order,
    action: OrderAction,
    levels: &mut Levels,
    now_ms: u64,
) -> Result<Result<Changed, ChangeRejection>, PortError> {
    if matches!(action, OrderAction::Cancel | OrderAction::AutoCancel) && order.payment_attempt.is_some() {
        return Ok(Err(ChangeRejection::PaymentInFlight));
    }
    if action == OrderAction::AutoCancel && charge_owed(&order) {
        return Ok(Err(ChangeRejection::PaymentInFlight));
    }
    apply_transition(order, action, levels, now_ms)
}

/// A pay-at-once order to pay that has not been declined: the system still owes the buyer the charge
/// they asked for (queued, in flight, or to be run again after an attempt without an answer).
pub fn charge_owed(order: &Order) -> bool {
    order.pay_at_once && order.state == OrderState::ToPay && order.last_decline.is_none()
}

/// What a change does to the order's entry in the safe-pay set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SafePay {
    Untouched,
    /// Enters it (or moves it), due at this time.
    Enter {
        due_ms: u64,
    },
    Leave,
}

/// A change decided: what to write, in one atomic write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangePlan {
    pub order: Order,
    /// An outbox event the change owes (a restock, a new charge).
    pub event: Option<OutboxEvent>,
    /// Stock levels to write (the stock a change returned), by commodity.
    pub stock: Vec<(CommodityId, StockLevel)>,
    pub safe_pay: SafePay,
}

/// The commodities whose stock levels a store must read (and, where it locks, lock) before
/// [`plan_change`] of `order`: its lines when the change returns stock, none otherwise.
pub fn stock_to_lock(order: &Order, change: &OrderChange) -> Vec<CommodityId> {
    match change {
        OrderChange::Action(action) if returns_stock(order, *action) => {
            order.lines.iter().map(|line| line.commodity_id).collect()
        }
        _ => Vec::new(),
    }
}

/// Whether a change may return stock, whatever the order's state: a store that locks stock rows before
/// the order's row reads the order unlocked first only then.
pub fn may_return_stock(change: &OrderChange) -> bool {
    matches!(change, OrderChange::Action(_))
}

/// Decides a change of `order` (as the store read it) against `levels`, the stock levels of
/// [`stock_to_lock`] (a commodity without a ledger is absent). A refused change writes nothing.
pub fn plan_change(
    order: Order,
    change: OrderChange,
    mut levels: Levels,
    now_ms: u64,
) -> Result<Result<ChangePlan, ChangeRejection>, PortError> {
    let (changed, safe_pay) = match change {
        OrderChange::Action(action) => (self::change(order, action, &mut levels, now_ms)?, SafePay::Untouched),
        OrderChange::BeginPayment(attempt) => (
            begin_attempt(order, attempt).map(|order| (order, None)),
            SafePay::Enter { due_ms: attempt.charge_deadline_ms },
        ),
        OrderChange::FinishPayment(result) => (finish_attempt(order, result, now_ms)?, SafePay::Leave),
    };
    Ok(changed.map(|(order, event)| {
        // Levels are written only with the restock that tells the cache about them.
        let returned = matches!(event, Some(OutboxEvent::RestockCache(_)));
        let stock = if returned { levels.into_iter().collect() } else { Vec::new() };
        ChangePlan { order, event, stock, safe_pay }
    }))
}

/// An attempt that ended without the acquirer's word: it never started, or it was voided because no
/// answer came (a timeout, a lost answer, an instance killed mid-charge). Nothing was taken, and it is
/// not the buyer's decline.
fn unanswered(result: &PaymentResult) -> bool {
    match result {
        PaymentResult::NeverCharged => true,
        PaymentResult::Declined { reason } => reason == crate::ports::NO_ANSWER_REASON,
        PaymentResult::Succeeded { .. } => false,
    }
}

/// A payment attempt starts: only on an order that may be paid, one attempt at a time.
fn begin_attempt(mut order: Order, attempt: PaymentAttempt) -> Result<Order, ChangeRejection> {
    if order.payment_attempt.is_some() {
        return Err(ChangeRejection::PaymentInFlight);
    }
    transition(order.state, OrderAction::Pay)?;
    order.payment_attempt = Some(attempt);
    Ok(order)
}

/// A payment attempt ends: a success pays the order (through the FSM); a decline, or a charge that never
/// started, leaves it to pay, free to be paid again or cancelled. Paying returns no stock.
///
/// A pay-at-once order whose attempt got no answer from the acquirer is charged again: the outbox gets a
/// new `Charge` (a new attempt with a new key; the ledger never charges an order twice), and no decline
/// is recorded, so its unpaid timeout keeps waiting.
fn finish_attempt(
    mut order: Order,
    result: PaymentResult,
    now_ms: u64,
) -> Result<Result<Changed, ChangeRejection>, PortError> {
    order.payment_attempt = None;
    if order.pay_at_once && order.state == OrderState::ToPay && unanswered(&result) {
        order.updated_ms = now_ms;
        let order_no = order.order_no;
        return Ok(Ok((order, Some(OutboxEvent::Charge { order_no }))));
    }
    match result {
        PaymentResult::Succeeded { payment_id } => {
            order.payment_id = Some(payment_id);
            apply_transition(order, OrderAction::Pay, &mut Levels::new(), now_ms)
        }
        PaymentResult::Declined { reason } => {
            order.last_decline = Some(reason);
            order.updated_ms = now_ms;
            Ok(Ok((order, None)))
        }
        PaymentResult::NeverCharged => {
            order.updated_ms = now_ms;
            Ok(Ok((order, None)))
        }
    }
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
