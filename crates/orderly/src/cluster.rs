//! The cluster profile: PostgreSQL store, Redis stock cache, RabbitMQ bus, the payment service over
//! gRPC — one set of adapters shared by any number of `orderly api` and `orderly worker` processes.

use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, bail};
use orderly_app::ids::LeasedSnowflake;
use orderly_app::{Orderly, Ports};
use serde::{Deserialize, Serialize};

use crate::config::Config;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `ORDERLY_CLUSTER__POSTGRES_URL`: the order store (migrated at start).
    pub postgres_url: String,
    /// `ORDERLY_CLUSTER__REDIS_URL`: the stock cache.
    pub redis_url: String,
    /// `ORDERLY_CLUSTER__AMQP_URL`: the bus.
    pub amqp_url: String,
    /// Prefix of Redis keys and RabbitMQ queues: several systems can share the servers.
    pub namespace: String,
    /// Snowflake worker id: unique per process of the cluster (0–1023).
    pub worker_id: u16,
    /// Connections to PostgreSQL per process.
    pub postgres_connections_max: u32,
    /// How long the cache remembers a reservation token.
    pub token_ttl_ms: u64,
    /// How long a copy of an order lives in Redis for the buyers' queries at most (every change deletes
    /// it); 0: no order cache, queries read PostgreSQL.
    pub order_cache_ttl_ms: u64,
    /// Idle RabbitMQ queues are deleted by the broker after this long: for throwaway clusters (tests).
    /// `None` (the default) keeps them.
    pub queue_expires_ms: Option<u64>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            postgres_url: "postgres://postgres@127.0.0.1:5432/orderly".to_owned(),
            redis_url: "redis://127.0.0.1:6379/0".to_owned(),
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            namespace: "orderly".to_owned(),
            worker_id: 1,
            postgres_connections_max: 16,
            token_ttl_ms: 60 * 60 * 1000,
            order_cache_ttl_ms: 60_000,
            queue_expires_ms: None,
        }
    }
}

/// Connects every adapter of the cluster profile.
pub async fn open(config: &Config) -> anyhow::Result<Orderly> {
    let cluster = &config.cluster;
    if config.payments.endpoints.is_empty() {
        bail!(
            "the cluster profile pays through `orderly payment`: set payments.endpoints (ORDERLY_PAYMENTS__ENDPOINTS)"
        );
    }
    let clock: Arc<dyn orderly_app::Clock> = Arc::new(orderly_clock::SystemClock);
    let options = sqlx::postgres::PgConnectOptions::from_str(&cluster.postgres_url).context("postgres_url")?;
    let store = Arc::new(
        orderly_postgres::PgStore::connect(options, cluster.postgres_connections_max)
            .await
            .context("connecting to PostgreSQL")?,
    );
    let cache = Arc::new(
        orderly_redis::RedisStockCache::connect(orderly_redis::RedisCacheConfig {
            url: cluster.redis_url.clone(),
            namespace: cluster.namespace.clone(),
            token_ttl_ms: cluster.token_ttl_ms,
        })
        .await
        .context("connecting to Redis")?,
    );
    let bus = Arc::new(
        orderly_rabbitmq::RabbitBus::connect(
            orderly_rabbitmq::RabbitBusConfig {
                queue_expires_ms: cluster.queue_expires_ms,
                ..orderly_rabbitmq::RabbitBusConfig::new(cluster.amqp_url.clone(), cluster.namespace.clone())
            },
            Arc::clone(&clock),
        )
        .await
        .context("connecting to RabbitMQ")?,
    );
    let orders: Option<Arc<dyn orderly_app::OrderCache>> = match cluster.order_cache_ttl_ms {
        0 => None,
        ttl_ms => Some(Arc::new(
            orderly_redis::RedisOrderCache::connect(&cluster.redis_url, cluster.namespace.clone(), ttl_ms)
                .await
                .context("connecting to Redis (order cache)")?,
        )),
    };
    let payments = Arc::new(orderly_payment::GrpcPayments::new(config.payments.clone())?);
    let ids = Arc::new(
        LeasedSnowflake::start(store.clone(), Arc::clone(&clock), cluster.worker_id, config.local.id_lease_ms)
            .await
            .context("leasing the id generator")?,
    );
    Ok(Orderly::new(Ports { cache, store, bus, payments, clock, ids, orders }, config.flow.clone()))
}
