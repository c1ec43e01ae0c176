//! Worker: the outbox relay. Events written with a store's change are carried out here, oldest first.

use super::Outcome;
use crate::model::OutboxEvent;
use crate::orderly::Orderly;
use crate::ports::PortError;

impl Orderly {
    /// Relay: carries out outbox events, oldest first, then marks them done. At least once; every
    /// event's handler is idempotent. One active instance (the `outbox` lease): several would all take
    /// the same oldest events.
    pub(super) async fn relay_outbox_step(&self) -> Result<Outcome, PortError> {
        if !self.hold_lease("outbox").await? {
            return Ok(Outcome::default());
        }
        let events = self.ports.store.outbox(self.config().worker_batch_max).await?;
        if events.is_empty() {
            return Ok(Outcome::default());
        }
        let now_ms = self.ports.clock.now_ms();
        let mut publish = Vec::new();
        for (_, event) in &events {
            match event {
                OutboxEvent::RestockCache(restock) => self.ports.cache.restock(restock).await?,
                other => publish.extend(other.message(now_ms)),
            }
        }
        if !publish.is_empty() {
            self.ports.bus.publish(publish).await?;
        }
        let ids: Vec<u64> = events.iter().map(|(id, _)| *id).collect();
        self.ports.store.outbox_done(&ids).await?;
        Ok(Outcome { done: ids.len(), retried: 0 })
    }
}
