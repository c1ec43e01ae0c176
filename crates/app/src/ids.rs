//! The order-number generator: a snowflake whose time floor survives restarts.
//!
//! The generator leases time ahead: ids are issued only up to a lease stored durably, renewed in the
//! background while half the lease is left. After a restart, even with the clock stepped back, the
//! floor is the last stored lease, so no id can repeat. One durable write per half lease, none on the
//! hot path.

use std::sync::{Arc, Mutex};

use orderly_domain::{Snowflake, SnowflakeId};

use crate::ports::{Clock, IdGen, PortError, PortResult, Store};

#[derive(Debug)]
pub struct LeasedSnowflake {
    state: Arc<Mutex<LeaseState>>,
    clock: Arc<dyn Clock>,
    renew_tx: tokio::sync::mpsc::Sender<u64>,
    lease_ms: u64,
}

#[derive(Debug)]
struct LeaseState {
    generator: Snowflake,
    /// Ids up to this Unix ms are covered by a durable lease.
    leased_until_ms: u64,
    /// A renewal is on its way to the store.
    renewing: bool,
}

impl LeasedSnowflake {
    /// Reads the last lease of `worker`, stores a fresh one, and starts the renewal task.
    pub async fn start(store: Arc<dyn Store>, clock: Arc<dyn Clock>, worker: u16, lease_ms: u64) -> PortResult<Self> {
        let key = format!("snowflake-lease-{worker}");
        let floor_ms = store.meta(&key).await?.unwrap_or(0);
        let leased_until_ms = clock.now_ms().max(floor_ms) + lease_ms;
        store.set_meta(&key, leased_until_ms).await?;
        let state = Arc::new(Mutex::new(LeaseState {
            generator: Snowflake::new(worker, floor_ms + 1),
            leased_until_ms,
            renewing: false,
        }));
        let (renew_tx, mut renew_rx) = tokio::sync::mpsc::channel::<u64>(1);
        let renewed = Arc::clone(&state);
        tokio::spawn(async move {
            while let Some(until_ms) = renew_rx.recv().await {
                let stored = store.set_meta(&key, until_ms).await;
                let Ok(mut state) = renewed.lock() else { return };
                state.renewing = false;
                match stored {
                    Ok(()) => state.leased_until_ms = state.leased_until_ms.max(until_ms),
                    Err(error) => tracing::error!(%error, "cannot store the id lease; will try again"),
                }
            }
        });
        Ok(LeasedSnowflake { state, clock, renew_tx, lease_ms })
    }
}

impl IdGen for LeasedSnowflake {
    fn next_id(&self) -> PortResult<SnowflakeId> {
        let now_ms = self.clock.now_ms();
        let mut state = self.state.lock().map_err(|_| PortError::corrupt("ids", "lock poisoned"))?;
        if !state.renewing && now_ms.max(state.generator.last_unix_ms()) + self.lease_ms / 2 >= state.leased_until_ms {
            let until_ms = now_ms.max(state.generator.last_unix_ms()) + self.lease_ms;
            state.renewing = self.renew_tx.try_send(until_ms).is_ok();
        }
        // Never issue past the durable lease: refuse (rarely, briefly) rather than risk a repeat.
        let mut probe = state.generator.clone();
        let id = probe.next(now_ms).map_err(|e| PortError::unavailable("ids", e))?;
        if id.unix_ms() > state.leased_until_ms {
            return Err(PortError::unavailable("ids", "id lease not renewed yet"));
        }
        state.generator = probe;
        Ok(id)
    }
}
