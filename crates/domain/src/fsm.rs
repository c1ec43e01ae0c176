//! The order state machine, as a table: (state, action) → next state + effects.
//!
//! Anything not in the table is a typed [`TransitionRejection`], never a panic. Effects are what must
//! happen *because* of the transition; the use-cases in `app` carry them out (the store writes them in
//! the same atomic batch as the state change, as outbox events).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    /// Accepted at the entry, stock reserved in the cache, not yet persisted. What the poller sees first.
    Pending,
    /// Persisted with its stock deducted; waiting for payment.
    ToPay,
    Paid,
    /// Cancelled by the buyer; stock returned.
    Cancelled,
    /// Unpaid past its deadline; stock returned.
    Closed,
    /// Stock ran out after acceptance; nothing was deducted.
    Rejected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderAction {
    Create,
    Pay,
    Cancel,
    AutoCancel,
    Reject,
}

/// Follow-up work a transition requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Deduct the order's stock from the durable stock ledger (same atomic write as the transition).
    DeductStock,
    /// Return the order's stock to the ledger (same write) and then to the cache.
    ReturnStock,
    /// Drop the cache reservation without touching the ledger (nothing was deducted).
    ReleaseReservation,
    /// Arm the unpaid-order timeout.
    ScheduleUnpaidTimeout,
    /// Tell the buyer; drop cached reads of the order.
    NotifyBuyer,
}

impl OrderState {
    pub const ALL: [OrderState; 6] = [
        OrderState::Pending,
        OrderState::ToPay,
        OrderState::Paid,
        OrderState::Cancelled,
        OrderState::Closed,
        OrderState::Rejected,
    ];

    /// No action leaves a final state.
    pub fn is_final(self) -> bool {
        matches!(self, OrderState::Paid | OrderState::Cancelled | OrderState::Closed | OrderState::Rejected)
    }

    /// The order holds sold stock (deducted and not returned).
    pub fn holds_stock(self) -> bool {
        matches!(self, OrderState::ToPay | OrderState::Paid)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Pending => "pending",
            OrderState::ToPay => "to_pay",
            OrderState::Paid => "paid",
            OrderState::Cancelled => "cancelled",
            OrderState::Closed => "closed",
            OrderState::Rejected => "rejected",
        }
    }
}

impl OrderAction {
    pub const ALL: [OrderAction; 5] =
        [OrderAction::Create, OrderAction::Pay, OrderAction::Cancel, OrderAction::AutoCancel, OrderAction::Reject];
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub next: OrderState,
    pub effects: &'static [Effect],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionRejection {
    #[error("the order is already {}", state.as_str())]
    AlreadyFinal { state: OrderState, action: OrderAction },
    #[error("the order is still being created")]
    NotCreatedYet { action: OrderAction },
    #[error("the order is already created")]
    AlreadyCreated { action: OrderAction },
}

/// The whole table. Every pair not listed is rejected with the reason that fits.
pub fn transition(state: OrderState, action: OrderAction) -> Result<Transition, TransitionRejection> {
    use Effect::*;
    use OrderAction as A;
    use OrderState as S;
    let (next, effects): (OrderState, &'static [Effect]) = match (state, action) {
        (S::Pending, A::Create) => (S::ToPay, &[DeductStock, ScheduleUnpaidTimeout, NotifyBuyer]),
        (S::Pending, A::Reject) => (S::Rejected, &[ReleaseReservation, NotifyBuyer]),
        (S::ToPay, A::Pay) => (S::Paid, &[NotifyBuyer]),
        (S::ToPay, A::Cancel) => (S::Cancelled, &[ReturnStock, NotifyBuyer]),
        (S::ToPay, A::AutoCancel) => (S::Closed, &[ReturnStock, NotifyBuyer]),
        (s, a) if s.is_final() => return Err(TransitionRejection::AlreadyFinal { state: s, action: a }),
        (S::Pending, a) => return Err(TransitionRejection::NotCreatedYet { action: a }),
        (S::ToPay, a) => return Err(TransitionRejection::AlreadyCreated { action: a }),
        (s, a) => unreachable!("every state is pending, to_pay or final: {s:?} {a:?}"),
    };
    Ok(Transition { next, effects })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Effect::*;
    use OrderAction as A;
    use OrderState as S;

    /// The exhaustive table: every (state, action) pair, with its exact outcome.
    #[test]
    fn every_pair_has_its_exact_outcome() {
        let allowed = |next, effects: &'static [Effect]| Ok(Transition { next, effects });
        for state in S::ALL {
            for action in A::ALL {
                let expected = match (state, action) {
                    (S::Pending, A::Create) => allowed(S::ToPay, &[DeductStock, ScheduleUnpaidTimeout, NotifyBuyer]),
                    (S::Pending, A::Reject) => allowed(S::Rejected, &[ReleaseReservation, NotifyBuyer]),
                    (S::Pending, A::Pay | A::Cancel | A::AutoCancel) => {
                        Err(TransitionRejection::NotCreatedYet { action })
                    }
                    (S::ToPay, A::Pay) => allowed(S::Paid, &[NotifyBuyer]),
                    (S::ToPay, A::Cancel) => allowed(S::Cancelled, &[ReturnStock, NotifyBuyer]),
                    (S::ToPay, A::AutoCancel) => allowed(S::Closed, &[ReturnStock, NotifyBuyer]),
                    (S::ToPay, A::Create | A::Reject) => Err(TransitionRejection::AlreadyCreated { action }),
                    (S::Paid | S::Cancelled | S::Closed | S::Rejected, _) => {
                        Err(TransitionRejection::AlreadyFinal { state, action })
                    }
                };
                assert_eq!(transition(state, action), expected, "{state:?} + {action:?}");
            }
        }
    }

    #[test]
    fn stock_is_deducted_once_and_returned_only_from_a_state_that_holds_it() {
        for state in S::ALL {
            for action in A::ALL {
                let Ok(t) = transition(state, action) else { continue };
                if t.effects.contains(&DeductStock) {
                    assert!(!state.holds_stock() && t.next.holds_stock());
                }
                if t.effects.contains(&ReturnStock) {
                    assert!(state.holds_stock() && !t.next.holds_stock());
                }
                assert_eq!(state.holds_stock() && !t.next.holds_stock(), t.effects.contains(&ReturnStock));
            }
        }
    }
}
