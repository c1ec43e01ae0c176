//! The roles one process of a cluster runs at a time (the outbox relay, the reconciler). Elected in the
//! registry when there is one: the leader's fence is checked by the store at every renewal, so a leader
//! that was replaced — paused, cut off — is refused as soon as it tries again; while the registry is out
//! of reach the leader goes on under the same store check (degraded, not down). Otherwise a lease in the
//! store, taken by the process's id-generator instance. Either is renewed at half time.

use crate::orderly::Orderly;
use crate::ports::PortError;

impl Orderly {
    /// Whether this process holds role `name` now; asks again once half of `lease_ms` has passed.
    pub(crate) async fn hold_lease(&self, name: &'static str) -> Result<bool, PortError> {
        let now_ms = self.ports.clock.now_ms();
        let length_ms = self.config().lease_ms.max(2);
        if self.leases.held_until(name) > now_ms + length_ms / 2 {
            return Ok(true);
        }
        let until_ms = now_ms + length_ms;
        let held = match &self.registry {
            Some(registry) => {
                let fence = match registry.lead(name).await {
                    Ok(fence) => fence,
                    // The registry out of reach (etcd down): a leader goes on with its fence for as long
                    // as the store has seen no newer one — nobody can be elected meanwhile, unless this
                    // process is the one cut off, and then the newer leader's fence stops it here.
                    Err(error) if error.is_retryable() => self.leases.fence(name),
                    Err(error) => return Err(error),
                };
                // Fences are compared within their registry's era: an etcd created afresh starts again.
                let held = match fence {
                    Some(lead) => self.ports.store.fence(&format!("{name}@{:x}", lead.era), lead.fence).await?,
                    None => false,
                };
                self.leases.set_fence(name, fence.filter(|_| held));
                held
            }
            None => self.ports.store.lease(name, self.ports.ids.instance(), now_ms, until_ms).await?,
        };
        self.leases.set(name, if held { until_ms } else { 0 });
        Ok(held)
    }
}
