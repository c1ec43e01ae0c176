//! [`LocalHoldings`]: the gate of the buyer's caps in process ([`orderly_app::caps`]). One mutex: a
//! cart's judgement and its record are one step, so racing carts of a buyer meet here.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use orderly_app::PortError;
use orderly_app::caps::{Admission, Admit, Admitted, fresh, judge};
use orderly_app::ports::{Holdings, PortResult};
use orderly_domain::{OrderNo, Uid};

#[derive(Debug, Default)]
pub struct LocalHoldings {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Per buyer, the orders admitted lately; a buyer's are dropped once all are older than the window.
    recent: HashMap<Uid, Vec<Admitted>>,
    admits: u64,
}

/// Every this many admissions, the stale records of every buyer are dropped (buyers who never come back).
const SWEEP_EVERY: u64 = 4_096;

impl LocalHoldings {
    pub fn new() -> LocalHoldings {
        LocalHoldings::default()
    }
}

fn poisoned() -> PortError {
    PortError::failed("holdings", "lock poisoned")
}

#[async_trait]
impl Holdings for LocalHoldings {
    async fn admit(&self, buyer: Uid, admission: &Admission) -> PortResult<Admit> {
        let mut inner = self.inner.lock().map_err(|_| poisoned())?;
        let stale = |a: &Admitted| a.at_ms.saturating_add(admission.recent_ms) < admission.now_ms;
        inner.admits += 1;
        let sweep = inner.admits % SWEEP_EVERY == 0;
        let recent = &mut inner.recent;
        if sweep {
            recent.retain(|_, admitted| {
                admitted.retain(|a| !stale(a));
                !admitted.is_empty()
            });
        }
        let mine = recent.entry(buyer).or_default();
        mine.retain(|a| !stale(a));
        let answer = judge(admission, mine);
        if answer == Admit::Admitted {
            let fresh: Vec<Admitted> = fresh(admission, mine)
                .into_iter()
                .map(|order| Admitted { order_no: order.order_no, at_ms: admission.now_ms, lines: order.lines.clone() })
                .collect();
            mine.extend(fresh);
        }
        if mine.is_empty() {
            recent.remove(&buyer);
        }
        Ok(answer)
    }

    async fn withdraw(&self, buyer: Uid, order_nos: &[OrderNo]) -> PortResult<()> {
        let recent = &mut self.inner.lock().map_err(|_| poisoned())?.recent;
        if let Some(mine) = recent.get_mut(&buyer) {
            mine.retain(|a| !order_nos.contains(&a.order_no));
            if mine.is_empty() {
                recent.remove(&buyer);
            }
        }
        Ok(())
    }
}
