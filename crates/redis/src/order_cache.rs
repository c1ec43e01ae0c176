//! [`RedisOrderCache`]: copies of orders for the buyers' queries, the seed's order cache. One key per
//! order, `<ns>:order:<order_no>`, holding the order as JSON with a time to live; the flow deletes it on
//! every change, and again a moment later (the delayed double delete).
//!
//! Each copy is stamped with the replication id of the master that wrote it — stored as `<replid>
//! <json>` (`order_put.lua`) — and read only on that master (`order_get.lua`): after a failover — the
//! promoted replica may lack the last deletes, or hold a copy whose deletes failed while its master was
//! down — every copy of that shard is a miss, so a failover does not show a buyer an order as it was
//! before a change. Left: on a master that stays up but fails both deletes of a change (each cut off at
//! the flow's call bound), the old copy is read until its time to live.

use async_trait::async_trait;
use orderly_app::PortError;
use orderly_app::model::Order;
use orderly_app::ports::{OrderCache, PortResult};
use orderly_domain::OrderNo;
use redis::{AsyncCommands, Script};

use crate::{RedisConnection, RedisTarget, port_error};

pub struct RedisOrderCache {
    connection: RedisConnection,
    namespace: String,
    ttl_ms: u64,
    get: Script,
    put: Script,
}

impl std::fmt::Debug for RedisOrderCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOrderCache").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

impl RedisOrderCache {
    /// `ttl_ms`: how long a copy lives at most, should a delete be lost.
    pub async fn connect(target: &RedisTarget, namespace: String, ttl_ms: u64) -> PortResult<RedisOrderCache> {
        Ok(RedisOrderCache::with_connection(RedisConnection::connect(target).await?, namespace, ttl_ms))
    }

    /// On a connection shared with other adapters.
    pub fn with_connection(connection: RedisConnection, namespace: String, ttl_ms: u64) -> RedisOrderCache {
        let master_id = include_str!("../lua/master_id.lua");
        let script = |body: &str| Script::new(&format!("{master_id}{body}"));
        RedisOrderCache {
            connection,
            namespace,
            ttl_ms,
            get: script(include_str!("../lua/order_get.lua")),
            put: script(include_str!("../lua/order_put.lua")),
        }
    }

    fn key(&self, order_no: OrderNo) -> String {
        format!("{}:order:{order_no}", self.namespace)
    }
}

#[async_trait]
impl OrderCache for RedisOrderCache {
    async fn get(&self, order_no: OrderNo) -> PortResult<Option<Order>> {
        let text: Option<String> =
            self.get.key(self.key(order_no)).invoke_async(&mut self.connection.clone()).await.map_err(port_error)?;
        text.map(|text| serde_json::from_str(&text).map_err(|e| crate::bad_answer(format!("cached order: {e}"))))
            .transpose()
    }

    async fn put(&self, order: &Order) -> PortResult<()> {
        let text = serde_json::to_string(order).map_err(|e| PortError::from(crate::CacheError::Unencodable(e)))?;
        let _: i64 = self
            .put
            .key(self.key(order.order_no))
            .arg(text)
            .arg(self.ttl_ms)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(port_error)?;
        Ok(())
    }

    async fn forget(&self, order_nos: &[OrderNo]) -> PortResult<()> {
        if order_nos.is_empty() {
            return Ok(());
        }
        // On a cluster the client splits the DEL by slot (keys of several masters).
        let keys: Vec<String> = order_nos.iter().map(|n| self.key(*n)).collect();
        let _: () = self.connection.clone().del(keys).await.map_err(port_error)?;
        Ok(())
    }
}
