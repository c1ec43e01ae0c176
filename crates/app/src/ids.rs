//! The order-number generator: a snowflake whose time floor survives restarts.
//!
//! Ids are issued only up to a lease stored durably. The caller that finds the lease too short renews it
//! (one durable write) before taking its id; others wait for that renewal instead of writing too. After
//! a restart, even with the clock stepped back, the floor is the last stored lease, so no id can repeat.
//!
//! Fenced: every write of the lease replaces the value this generator last wrote (or read, at start),
//! never another's. When a second process takes the same worker id (the registry gave it away after
//! this one's registration lapsed), it starts above this one's lease and its write replaces it; this
//! one's next renewal is refused and it issues no more ids — the ids it issued all lie at or below the
//! lease the other one started above.
//! Cost: one durable write per `lease_ms` of ids, none otherwise.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use orderly_domain::{Snowflake, SnowflakeId};

use crate::ports::{Clock, IdGen, PortError, PortResult, Store};

#[derive(Debug)]
pub struct LeasedSnowflake {
    state: Mutex<LeaseState>,
    /// Held while a renewal is written, so concurrent callers wait for one write instead of each writing.
    /// A renewal refused (fenced) is refused again on every later call: the stored value stays another's.
    renewal: tokio::sync::Mutex<()>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    key: String,
    lease_ms: u64,
    worker: u16,
}

#[derive(Debug)]
struct LeaseState {
    generator: Snowflake,
    /// Ids up to this Unix ms are covered by a durable lease.
    leased_until_ms: u64,
    /// The last lease this generator tried to write: a renewal cut off by its caller's deadline may
    /// have landed, and then the stored value is this one — its own, not another holder's.
    attempted_ms: u64,
}

impl LeasedSnowflake {
    /// Reads the last lease of `worker` and stores a fresh one above it.
    pub async fn start(store: Arc<dyn Store>, clock: Arc<dyn Clock>, worker: u16, lease_ms: u64) -> PortResult<Self> {
        // After a restart ids start at the last lease, which may be up to `lease_ms` ahead of the clock.
        assert!(
            lease_ms < orderly_domain::snowflake::DRIFT_MS_MAX,
            "the id lease must be shorter than the allowed drift"
        );
        let key = format!("snowflake-lease-{worker}");
        let mut attempts = 0;
        let (floor_ms, leased_until_ms) = loop {
            let floor = store.meta(&key).await?;
            let floor_ms = floor.unwrap_or(0);
            let leased_until_ms = clock.now_ms().max(floor_ms) + lease_ms;
            // Another holder renewed between the read and the write: read its lease again.
            if store.replace_meta(&key, floor, leased_until_ms).await? {
                break (floor_ms, leased_until_ms);
            }
            attempts += 1;
            if attempts >= 10 {
                return Err(PortError::unavailable("ids", format!("worker id {worker}: its lease keeps changing")));
            }
        };
        let state = Mutex::new(LeaseState {
            generator: Snowflake::new(worker, floor_ms + 1),
            leased_until_ms,
            attempted_ms: leased_until_ms,
        });
        Ok(LeasedSnowflake { state, renewal: tokio::sync::Mutex::new(()), store, clock, key, lease_ms, worker })
    }

    /// The next id if the lease covers it.
    fn try_next(&self) -> PortResult<Option<SnowflakeId>> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut probe = state.generator.clone();
        let id = probe.next(self.clock.now_ms()).map_err(|e| PortError::unavailable("ids", e))?;
        if id.unix_ms() > state.leased_until_ms {
            return Ok(None);
        }
        state.generator = probe;
        Ok(Some(id))
    }
}

#[async_trait]
impl IdGen for LeasedSnowflake {
    fn instance(&self) -> u64 {
        u64::from(self.worker)
    }

    async fn next_id(&self) -> PortResult<SnowflakeId> {
        if let Some(id) = self.try_next()? {
            return Ok(id);
        }
        let _renewing = self.renewal.lock().await;
        if let Some(id) = self.try_next()? {
            return Ok(id);
        }
        let (held_ms, earlier_attempt_ms, until_ms) = {
            let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let until_ms = self.clock.now_ms().max(state.generator.last_unix_ms()) + self.lease_ms;
            let earlier = std::mem::replace(&mut state.attempted_ms, until_ms);
            (state.leased_until_ms, earlier, until_ms)
        };
        let mut renewed = self.store.replace_meta(&self.key, Some(held_ms), until_ms).await?;
        if !renewed && earlier_attempt_ms != held_ms {
            // An earlier renewal answered an error but landed: the stored value is that attempt's.
            renewed = self.store.replace_meta(&self.key, Some(earlier_attempt_ms), until_ms).await?;
        }
        if !renewed {
            tracing::error!(
                worker = self.worker,
                "snowflake worker id taken over by another process; no more ids here"
            );
            return Err(PortError::failed(
                "ids",
                format!("worker id {} is held by another process now: this one issues no more ids", self.worker),
            ));
        }
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).leased_until_ms = until_ms;
        self.try_next()?.ok_or_else(|| PortError::unavailable("ids", "id lease renewed but still too short"))
    }
}
