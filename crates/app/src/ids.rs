//! The order-number generator: a snowflake whose time floor survives restarts.
//!
//! Ids are issued only up to a lease stored durably. The caller that finds the lease too short renews it
//! (one durable write) before taking its id; others wait for that renewal instead of writing too. After
//! a restart, even with the clock stepped back, the floor is the last stored lease, so no id can repeat.
//! Cost: one durable write per `lease_ms` of ids, none otherwise.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use orderly_domain::{Snowflake, SnowflakeId};

use crate::ports::{Clock, IdGen, PortError, PortResult, Store};

#[derive(Debug)]
pub struct LeasedSnowflake {
    state: Mutex<LeaseState>,
    /// Held while a renewal is written, so concurrent callers wait for one write instead of each writing.
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
}

impl LeasedSnowflake {
    /// Reads the last lease of `worker` and stores a fresh one.
    pub async fn start(store: Arc<dyn Store>, clock: Arc<dyn Clock>, worker: u16, lease_ms: u64) -> PortResult<Self> {
        // After a restart ids start at the last lease, which may be up to `lease_ms` ahead of the clock.
        assert!(
            lease_ms < orderly_domain::snowflake::DRIFT_MS_MAX,
            "the id lease must be shorter than the allowed drift"
        );
        let key = format!("snowflake-lease-{worker}");
        let floor_ms = store.meta(&key).await?.unwrap_or(0);
        let leased_until_ms = clock.now_ms().max(floor_ms) + lease_ms;
        store.set_meta(&key, leased_until_ms).await?;
        let state = Mutex::new(LeaseState { generator: Snowflake::new(worker, floor_ms + 1), leased_until_ms });
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
        let until_ms = {
            let state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.clock.now_ms().max(state.generator.last_unix_ms()) + self.lease_ms
        };
        self.store.set_meta(&self.key, until_ms).await?;
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).leased_until_ms = until_ms;
        self.try_next()?.ok_or_else(|| PortError::unavailable("ids", "id lease renewed but still too short"))
    }
}
