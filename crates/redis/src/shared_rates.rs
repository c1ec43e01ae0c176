//! [`RedisSharedRates`]: the [`SharedRates`] port as one Lua script (`lua/shared_rate.lua`, a GCRA bucket
//! per key on the Redis server's clock), so a rate rule holds across every API of a cluster. One key per
//! bucket and setting, `<ns>:rate:<key>:<per_second>:<burst>` (a changed rule starts full); on a Redis
//! Cluster each bucket lives on its key's shard.

use async_trait::async_trait;
use orderly_app::ports::{PortResult, SharedRates, Taken};
use redis::Script;

use crate::{RedisConnection, port_error};

pub struct RedisSharedRates {
    connection: RedisConnection,
    namespace: String,
    script: Script,
}

impl std::fmt::Debug for RedisSharedRates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSharedRates").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

impl RedisSharedRates {
    /// On a connection shared with the other adapters.
    pub fn with_connection(connection: RedisConnection, namespace: String) -> RedisSharedRates {
        RedisSharedRates { connection, namespace, script: Script::new(include_str!("../lua/shared_rate.lua")) }
    }
}

#[async_trait]
impl SharedRates for RedisSharedRates {
    async fn take(&self, key: &str, per_second: u32, burst: u32, want: u32) -> PortResult<Taken> {
        let (granted, wait_ms): (u32, u64) = self
            .script
            // A rule changed to another rate or burst is another bucket: it starts full.
            .key(format!("{}:rate:{key}:{per_second}:{burst}", self.namespace))
            .arg(per_second.max(1))
            .arg(burst.max(1))
            .arg(want.max(1))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(port_error)?;
        Ok(Taken { granted, wait_ms })
    }
}
