//! The roles one process of a cluster runs at a time (the outbox relay, the reconciler): a lease in the
//! store, taken by the process's id-generator instance and renewed at half time.

use crate::orderly::Orderly;
use crate::ports::PortError;

impl Orderly {
    /// Whether this process holds lease `name` now; renews it once half of it has passed.
    pub(crate) async fn hold_lease(&self, name: &'static str) -> Result<bool, PortError> {
        let now_ms = self.ports.clock.now_ms();
        let length_ms = self.config().lease_ms.max(2);
        if self.leases.held_until(name) > now_ms + length_ms / 2 {
            return Ok(true);
        }
        let until_ms = now_ms + length_ms;
        let held = self.ports.store.lease(name, self.ports.ids.instance(), now_ms, until_ms).await?;
        self.leases.set(name, if held { until_ms } else { 0 });
        Ok(held)
    }
}
