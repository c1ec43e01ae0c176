//! [`RedisConnection`]: one connection type for a single Redis and a Redis Cluster, so every adapter
//! here runs on either. On a cluster, each command and script goes to the master of its keys' slot (the
//! `redis` crate's cluster client follows MOVED and failovers); a shop's keys share one slot (its hash
//! tag), so a per-shop script stays one call.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use orderly_app::ports::PortResult;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

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
    Cluster(Arc<Cluster>),
}

/// A cluster connection, made again when it stays broken: after a master was killed under load, the
/// `redis` crate's cluster client (1.8) was seen to time out every call for good in some processes
/// while others recovered (`scripts/failover redis-master`). Calls failing on the connection (time-outs,
/// I/O) without a pause of [`STREAK_GAP`] for [`REBUILD_AFTER`] — whatever calls to other shards did
/// meanwhile, since a client can be stuck on one shard's slots only — make a new one from the client,
/// at most one attempt per that interval. A rebuild during a genuine outage longer than that costs a
/// reconnect, nothing else.
pub struct Cluster {
    client: ClusterClient,
    current: ArcSwap<ClusterConnection>,
    failing: Mutex<Failing>,
}

#[derive(Debug, Default)]
struct Failing {
    /// The first failure of the current streak, and the last one.
    streak: Option<(Instant, Instant)>,
    /// When the last rebuild was tried.
    rebuilt: Option<Instant>,
}

/// Failures this far apart are separate streaks.
const STREAK_GAP: Duration = Duration::from_secs(2);

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").finish_non_exhaustive()
    }
}

const REBUILD_AFTER: Duration = Duration::from_secs(5);

impl Cluster {
    fn connection(&self) -> ClusterConnection {
        (**self.current.load()).clone()
    }

    fn observe<T>(self: &Arc<Self>, result: &RedisResult<T>) {
        let broken = |error: &RedisError| {
            error.is_timeout() || error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal()
        };
        let Err(error) = result else { return };
        if !broken(error) {
            return;
        }
        let now = Instant::now();
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        let since = match failing.streak {
            Some((first, last)) if now.duration_since(last) < STREAK_GAP => first,
            _ => now,
        };
        failing.streak = Some((since, now));
        let tried_recently = failing.rebuilt.is_some_and(|at| now.duration_since(at) < REBUILD_AFTER);
        if now.duration_since(since) >= REBUILD_AFTER && !tried_recently {
            failing.rebuilt = Some(now);
            let cluster = Arc::clone(self);
            tokio::spawn(async move { cluster.rebuild().await });
        }
    }

    async fn rebuild(&self) {
        match tokio::time::timeout(REBUILD_AFTER, self.client.get_async_connection()).await {
            Ok(Ok(connection)) => {
                self.current.store(Arc::new(connection));
                self.failing.lock().unwrap_or_else(PoisonError::into_inner).streak = None;
                tracing::warn!("Redis Cluster connection broken for {REBUILD_AFTER:?}: made a new one");
            }
            Ok(Err(error)) => tracing::warn!(%error, "Redis Cluster connection broken; a new one failed too"),
            Err(_) => tracing::warn!("Redis Cluster connection broken; a new one did not connect in time"),
        }
    }
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
                let connection = client.get_async_connection().await.map_err(port_error)?;
                Ok(RedisConnection::Cluster(Arc::new(Cluster {
                    client,
                    current: ArcSwap::from_pointee(connection),
                    failing: Mutex::default(),
                })))
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
            RedisConnection::Cluster(cluster) => {
                let cluster = Arc::clone(cluster);
                Box::pin(async move {
                    let result = cluster.connection().req_packed_command(cmd).await;
                    cluster.observe(&result);
                    result
                })
            }
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
            RedisConnection::Cluster(cluster) => {
                let cluster = Arc::clone(cluster);
                Box::pin(async move {
                    let result = cluster.connection().req_packed_commands(pipeline, offset, count).await;
                    cluster.observe(&result);
                    result
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(connection) => connection.get_db(),
            RedisConnection::Cluster(cluster) => cluster.connection().get_db(),
        }
    }
}
