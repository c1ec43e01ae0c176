//! The cluster profile: PostgreSQL store, Redis stock cache, RabbitMQ or Kafka bus, etcd registry, the payment
//! service over gRPC (its instances found in the registry) — one set of adapters shared by any number
//! of `orderly api` and `orderly worker` processes.

use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context;
use orderly_app::ids::LeasedSnowflake;
use orderly_app::registry::{Member, Registry};
use orderly_app::{Orderly, Ports};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::registry::Opened;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `ORDERLY_CLUSTER__POSTGRES_URL`: the order store (migrated at start).
    pub postgres_url: String,
    /// `ORDERLY_CLUSTER__PATRONI_SCOPE`: PostgreSQL is a Patroni cluster of this scope whose store is this
    /// etcd (`cluster.etcd_endpoints`): `postgres_url` (and `payment_service.postgres_url`) are used with
    /// the current primary's host and port instead of their own, followed through every failover. Unset
    /// (the default): the server the URLs name.
    pub patroni_scope: Option<String>,
    /// `ORDERLY_CLUSTER__REDIS_URL`: the stock cache and the order cache, on one Redis server.
    pub redis_url: String,
    /// `ORDERLY_CLUSTER__REDIS_CLUSTER_NODES`: a Redis Cluster instead (any of its nodes; the rest are
    /// found from them), e.g. `["redis://127.0.0.1:7001","redis://127.0.0.1:7002"]`. Empty (the
    /// default): the one server at `redis_url`.
    pub redis_cluster_nodes: Vec<String>,
    /// `ORDERLY_CLUSTER__BUS`: `rabbitmq` (the default) or `kafka`.
    pub bus: BusKind,
    /// `ORDERLY_CLUSTER__AMQP_URL`: the RabbitMQ bus.
    pub amqp_url: String,
    /// `ORDERLY_CLUSTER__KAFKA_BROKERS`: the Kafka bus's bootstrap brokers, `host:port,host:port`.
    pub kafka_brokers: String,
    /// Partitions of each Kafka topic: the most consumers of one topic that work at once.
    pub kafka_partitions: i32,
    /// Replicas of each Kafka topic (`min.insync.replicas` is 2 when this is 2 or more). tansu takes any
    /// value and ignores it: its brokers keep their data in the storage they share.
    pub kafka_replication: i32,
    /// How long the Kafka producer waits for more records to batch with (`linger.ms`): a publish's
    /// latency against the broker's cost per record.
    pub kafka_linger_ms: u64,
    /// Prefix of Redis keys, RabbitMQ queues and Kafka topics: several systems can share the servers.
    pub namespace: String,
    /// Snowflake worker id, unique per process of the cluster (0–1023). Unset (the default): claimed from
    /// the registry, held while the process lives.
    pub worker_id: Option<u16>,
    /// `ORDERLY_CLUSTER__ETCD_ENDPOINTS`: the registry (members, worker ids, settings changed at run time).
    pub etcd_endpoints: Vec<String>,
    /// A process's registration lives this long after its last keep-alive: a killed instance leaves
    /// the balancers within it.
    pub registry_ttl_s: i64,
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
            patroni_scope: None,
            redis_url: "redis://127.0.0.1:6379/0".to_owned(),
            redis_cluster_nodes: Vec::new(),
            bus: BusKind::Rabbitmq,
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            kafka_brokers: "127.0.0.1:9092".to_owned(),
            kafka_partitions: 6,
            kafka_replication: 3,
            kafka_linger_ms: orderly_kafka::KafkaBusConfig::new("", "").linger_ms,
            namespace: "orderly".to_owned(),
            worker_id: None,
            etcd_endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            registry_ttl_s: 5,
            postgres_connections_max: 16,
            token_ttl_ms: 60 * 60 * 1000,
            order_cache_ttl_ms: 60_000,
            queue_expires_ms: None,
        }
    }
}

/// Which broker carries the cluster's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    Rabbitmq,
    Kafka,
}

/// The configured bus, connected. `consumes`: the process takes messages (a worker) — on Kafka it also
/// moves delayed records on; a process that only publishes stays out of the consumer groups, whose every
/// change of members is a rebalance. `publish_timeout_ms`: on Kafka, how long the producer may go on
/// retrying a record — for the APIs the entry's call bound, so a create the entry answered an error for
/// is not still being sent seconds later (it could land after the entry's clean-up; the flow refuses it,
/// but that refusal lives in the cache).
pub async fn connect_bus(
    cluster: &ClusterConfig,
    clock: Arc<dyn orderly_app::Clock>,
    consumes: bool,
    publish_timeout_ms: u64,
) -> anyhow::Result<Arc<dyn orderly_app::Bus>> {
    Ok(match cluster.bus {
        BusKind::Rabbitmq => Arc::new(
            orderly_rabbitmq::RabbitBus::connect(
                orderly_rabbitmq::RabbitBusConfig {
                    queue_expires_ms: cluster.queue_expires_ms,
                    ..orderly_rabbitmq::RabbitBusConfig::new(cluster.amqp_url.clone(), cluster.namespace.clone())
                },
                clock,
            )
            .await
            .with_context(|| format!("connecting to RabbitMQ at {}", cluster.amqp_url))?,
        ),
        BusKind::Kafka => Arc::new(
            orderly_kafka::KafkaBus::connect(
                orderly_kafka::KafkaBusConfig {
                    partitions: cluster.kafka_partitions,
                    replication: cluster.kafka_replication,
                    linger_ms: cluster.kafka_linger_ms,
                    move_delayed: consumes,
                    delivery_timeout_ms: publish_timeout_ms.max(1),
                    ..orderly_kafka::KafkaBusConfig::new(cluster.kafka_brokers.clone(), cluster.namespace.clone())
                },
                clock,
            )
            .await
            .with_context(|| format!("connecting to Kafka at {}", cluster.kafka_brokers))?,
        ),
    })
}

/// Connects to the cluster's registry (etcd).
pub async fn connect_registry(config: &Config) -> anyhow::Result<Arc<orderly_etcd::EtcdRegistry>> {
    let cluster = &config.cluster;
    let etcd = orderly_etcd::EtcdConfig {
        lease_ttl_s: cluster.registry_ttl_s.max(1),
        ..orderly_etcd::EtcdConfig::new(cluster.etcd_endpoints.clone(), cluster.namespace.clone())
    };
    let registry = orderly_etcd::EtcdRegistry::connect(etcd)
        .await
        .with_context(|| format!("connecting to etcd at {:?} (cluster.etcd_endpoints)", cluster.etcd_endpoints))?;
    Ok(Arc::new(registry))
}

/// With `cluster.patroni_scope`: `options` aimed at the current primary (waiting up to
/// [`PRIMARY_WAIT`] for one: a failover may be under way), and `primary` moved at every later change of
/// Patroni's leader, for the life of the process. Without: `options` as they are.
pub async fn follow_primary(
    config: &Config,
    registry: &Arc<orderly_etcd::EtcdRegistry>,
    options: sqlx::postgres::PgConnectOptions,
    primary: &Arc<orderly_postgres::Primary>,
) -> anyhow::Result<sqlx::postgres::PgConnectOptions> {
    let Some(scope) = &config.cluster.patroni_scope else { return Ok(options) };
    let mut leader = registry.patroni_primary(scope);
    let (host, port) = tokio::time::timeout(PRIMARY_WAIT, leader.wait_for(Option::is_some))
        .await
        .ok()
        .and_then(|found| found.ok().and_then(|found| found.clone()))
        .with_context(|| format!("no PostgreSQL primary in Patroni scope {scope:?} within {PRIMARY_WAIT:?}"))?;
    tracing::info!(%scope, %host, port, "PostgreSQL primary (Patroni)");
    let primary = Arc::clone(primary);
    let mut current = (host.clone(), port);
    // The registry lives as long as this follower (its watch is the registry's).
    let registry = Arc::clone(registry);
    tokio::spawn(async move {
        let _registry = registry;
        while leader.changed().await.is_ok() {
            let next = leader.borrow_and_update().clone();
            // None: a failover under way; connections fail until the next primary is known.
            if let Some(next) = next
                && next != current
            {
                primary.moved_to(&next.0, next.1);
                current = next;
            }
        }
    });
    Ok(options.host(&host).port(port))
}

/// How long a process starting waits for Patroni to name a primary.
const PRIMARY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Connects every adapter of the cluster profile. With a `member`, the process registers as it and takes a
/// worker id from the registry (unless `cluster.worker_id` is set); without one (the audit) it registers
/// nothing.
pub async fn open(config: &Config, member: Option<Member>) -> anyhow::Result<Opened> {
    let cluster = &config.cluster;
    let registry = connect_registry(config).await?;
    // Registered before anything runs: worker ids are claimed, and the roles that run once are led,
    // through the registration. A process that serves HTTP registers again once it listens.
    if let Some(member) = &member {
        registry.register(member.clone()).await.context("registering in etcd")?;
    }
    let worker_id = match (&member, cluster.worker_id) {
        (_, Some(id)) => id,
        (None, None) => orderly_domain::snowflake::WORKER_ID_MAX,
        (Some(_), None) => registry
            .claim_worker_id(orderly_domain::snowflake::WORKER_ID_MAX)
            .await
            .context("claiming a snowflake worker id")?,
    };
    let clock: Arc<dyn orderly_app::Clock> = Arc::new(orderly_clock::SystemClock);
    let options = sqlx::postgres::PgConnectOptions::from_str(&cluster.postgres_url).context("postgres_url")?;
    let primary = orderly_postgres::Primary::new();
    let options = follow_primary(config, &registry, options, &primary).await?;
    let store = Arc::new(
        orderly_postgres::PgStore::connect(options, cluster.postgres_connections_max, &primary)
            .await
            .context("connecting to PostgreSQL")?,
    );
    let redis_target = if cluster.redis_cluster_nodes.is_empty() {
        orderly_redis::RedisTarget::Single(cluster.redis_url.clone())
    } else {
        orderly_redis::RedisTarget::Cluster(cluster.redis_cluster_nodes.clone())
    };
    let redis = orderly_redis::RedisConnection::connect(&redis_target)
        .await
        .with_context(|| format!("connecting to Redis at {redis_target:?}"))?;
    let cache = Arc::new(orderly_redis::RedisStockCache::with_connection(
        redis.clone(),
        orderly_redis::RedisCacheConfig {
            target: redis_target,
            namespace: cluster.namespace.clone(),
            token_ttl_ms: cluster.token_ttl_ms,
        },
    ));
    let consumes = member.as_ref().is_some_and(|m| m.role == orderly_app::registry::Role::Worker);
    // The entry's processes: a publish the entry gave up on must not go on being sent. The workers' own
    // publishes (the outbox relay's charges, retries) are not bounded by the entry and keep the default.
    let publish_timeout_ms = match consumes {
        true => orderly_kafka::KafkaBusConfig::new("", "").delivery_timeout_ms,
        false => config.flow.entry_call_timeout_ms,
    };
    let bus = connect_bus(cluster, Arc::clone(&clock), consumes, publish_timeout_ms).await?;
    let shared_rates: Arc<dyn orderly_app::SharedRates> =
        Arc::new(orderly_redis::RedisSharedRates::with_connection(redis.clone(), cluster.namespace.clone()));
    let holdings = Arc::new(orderly_redis::RedisHoldings::with_connection(redis.clone(), cluster.namespace.clone()));
    let orders: Option<Arc<dyn orderly_app::OrderCache>> = match cluster.order_cache_ttl_ms {
        0 => None,
        ttl_ms => {
            Some(Arc::new(orderly_redis::RedisOrderCache::with_connection(redis, cluster.namespace.clone(), ttl_ms)))
        }
    };
    // Configured endpoints win; otherwise the payment instances registered in etcd, followed.
    let payments = Arc::new(if config.payments.endpoints.is_empty() {
        orderly_payment::GrpcPayments::discovered(config.payments.clone(), registry.members())
    } else {
        orderly_payment::GrpcPayments::new(config.payments.clone())?
    });
    let ids = Arc::new(
        LeasedSnowflake::start(store.clone(), Arc::clone(&clock), worker_id, config.local.id_lease_ms)
            .await
            .context("leasing the id generator")?,
    );
    tracing::info!(worker_id, "snowflake worker id");
    let mut orderly =
        Orderly::new(Ports { cache, store, bus, payments, clock, ids, orders, holdings }, config.flow.clone());
    if member.is_some() {
        orderly = orderly.elected_through(Arc::clone(&registry) as Arc<dyn Registry>);
    }
    Ok(Opened { orderly, registry, shared_rates: Some(shared_rates) })
}
