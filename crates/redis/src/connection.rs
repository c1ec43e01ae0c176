//! [`RedisConnection`]: one connection type for a single Redis and a Redis Cluster, so every adapter
//! here runs on either. On a cluster, each command and script goes to the master of its keys' slot (the
//! `redis` crate's cluster client follows MOVED and failovers); a shop's keys share one slot (its hash
//! tag), so a per-shop script stays one call.

use std::time::Duration;

use orderly_app::ports::PortResult;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::port_error;

/// Where the cache lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (`redis://host:port/db`).
    Single(String),
    /// A Redis Cluster, found from any of these nodes (`redis://host:port`).
    Cluster(Vec<String>),
}

#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_cluster() { "RedisConnection::Cluster" } else { "RedisConnection::Single" })
    }
}

impl RedisConnection {
    pub async fn connect(target: &RedisTarget) -> PortResult<RedisConnection> {
        match target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(port_error)?;
                Ok(RedisConnection::Single(ConnectionManager::new(client).await.map_err(port_error)?))
            }
            RedisTarget::Cluster(nodes) => {
                // A failover takes a few seconds (the node timeout, then an election): retries spread over
                // about as long, each bounded, so a call waits out a failover but not a cluster that is gone.
                let client = redis::cluster::ClusterClient::builder(nodes.clone())
                    .retries(8)
                    .min_retry_wait(100)
                    .max_retry_wait(1_000)
                    .connection_timeout(Duration::from_secs(1))
                    .response_timeout(Duration::from_secs(2))
                    .build()
                    .map_err(port_error)?;
                Ok(RedisConnection::Cluster(client.get_async_connection().await.map_err(port_error)?))
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConnection::Cluster(_))
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(connection) => connection.req_packed_command(cmd),
            RedisConnection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(connection) => connection.get_db(),
            RedisConnection::Cluster(connection) => connection.get_db(),
        }
    }
}
