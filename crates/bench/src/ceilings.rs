//! The engines' own ceilings, measured in the same run as the scenario: how many one-line reserves a
//! second the cluster's Redis answers through the stock cache's own script and client (no HTTP, no
//! flow), and how many confirmed publishes a second its broker takes through the bus adapter. orderly's
//! accepted orders are reported as a share of each: what the design leaves of what its engines can do.
//!
//! Each runs on a namespace of its own (keys and queues of this run only): the Redis keys are deleted
//! afterwards; the queues are declared to expire a minute after their last use.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use orderly_app::model::{Message, Outgoing, StockLevel, Token};
use orderly_app::ports::{Reserve, StockCache};
use orderly_app::time::Clock;
use orderly_domain::{CommodityId, OrderNo, ShopId, SnowflakeId, Uid};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// One engine's measured rate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ceiling {
    pub name: &'static str,
    pub what: &'static str,
    pub operations: u64,
    pub elapsed_s: f64,
    pub per_s: f64,
    pub callers: usize,
}

/// Commodities and shops the reserve ceiling spreads its one-line carts over (as the mixed workload).
const COMMODITIES: u64 = 1_000;
const SHOPS: u64 = 50;

/// Runs `operation` from `callers` concurrent tasks for `duration`; the operations that succeeded, and
/// how long it took. An error stops the caller that met it and fails the measurement.
async fn hammer<F, Fut>(callers: usize, duration: Duration, operation: F) -> anyhow::Result<(u64, f64)>
where
    F: Fn(u64, &mut SmallRng) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let operation = Arc::new(operation);
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(callers);
    for caller in 0..callers as u64 {
        let (operation, done) = (Arc::clone(&operation), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(caller);
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                operation((caller << 32) | n, &mut rng).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("a caller panicked")??;
    }
    Ok((done.load(Ordering::Relaxed), start.elapsed().as_secs_f64()))
}

/// A namespace no earlier run used.
fn namespace(engine: &str) -> String {
    let now_ms = orderly_clock::SystemClock.now_ms();
    format!("orderly-ceiling-{engine}-{}-{now_ms}", std::process::id())
}

/// One-line reserves a second through `RedisStockCache` (the reserve script, EVALSHA, the API's client).
pub async fn redis_reserve(url: &str, callers: usize, duration: Duration) -> anyhow::Result<Ceiling> {
    let namespace = namespace("redis");
    let cache = Arc::new(
        orderly_redis::RedisStockCache::connect(orderly_redis::RedisCacheConfig {
            target: orderly_redis::RedisTarget::Single(url.to_owned()),
            namespace: namespace.clone(),
            token_ttl_ms: 60_000,
        })
        .await
        .context("connecting to Redis for its ceiling")?,
    );
    let levels: Vec<(CommodityId, StockLevel)> = (1..=COMMODITIES)
        .map(|id| {
            let level =
                StockLevel { shop_id: ShopId(id % SHOPS + 1), initial: 1 << 40, available: 1 << 40, version: 1 };
            (CommodityId(id), level)
        })
        .collect();
    cache.init(&levels, &[]).await.context("loading the ceiling's counters")?;
    let reserving = Arc::clone(&cache);
    let measured = hammer(callers, duration, move |n, rng| {
        let cache = Arc::clone(&reserving);
        let id = rng.random_range(1..=COMMODITIES);
        async move {
            let token = Token {
                order_no: OrderNo::new(SnowflakeId(n), Uid(1)),
                shop_id: ShopId(id % SHOPS + 1),
                generation: 0,
            };
            // As the entry reserves: with the reservation's check armed in the same script (never due here).
            match cache.reserve_checked(token, &[(CommodityId(id), 1)], u64::MAX >> 12).await? {
                Reserve::Reserved => Ok(()),
                other => anyhow::bail!("the ceiling's reserve answered {other:?}"),
            }
        }
    })
    .await;
    forget_keys(url, &namespace).await?;
    let (operations, elapsed_s) = measured?;
    Ok(Ceiling {
        name: "redis reserve",
        what: "one-line reserves/s (each arming its check) through the stock cache's script and client, no HTTP",
        operations,
        elapsed_s,
        per_s: operations as f64 / elapsed_s.max(0.001),
        callers,
    })
}

/// Deletes the keys of `namespace` (SCAN, so the server is not blocked).
async fn forget_keys(url: &str, namespace: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url).context("Redis URL")?;
    let mut connection = client.get_multiplexed_async_connection().await.context("connecting to Redis")?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{namespace}:*"))
            .arg("COUNT")
            .arg(1_000)
            .query_async(&mut connection)
            .await
            .context("scanning the ceiling's keys")?;
        if !keys.is_empty() {
            redis::cmd("DEL").arg(&keys).query_async::<()>(&mut connection).await.context("deleting them")?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Confirmed publishes a second through the cluster's bus adapter, one message a publish. On RabbitMQ
/// (`RabbitBus`): a durable message to a quorum queue, its confirm awaited, each its own broker message
/// (`envelope_max` 1: the broker's cost per message, though concurrent publishes still share a confirm
/// window). On Kafka (`KafkaBus`): a record acknowledged by every in-sync replica (`acks=all`), its
/// delivery awaited; concurrent publishes share the producer's batches, as they do in orderly. The
/// ceiling's topics stay (a namespace of their own): tansu 0.6 deletes every topic of its cluster when
/// asked to delete one.
pub async fn broker_publish(
    cluster: &orderly::cluster::ClusterConfig,
    callers: usize,
    duration: Duration,
) -> anyhow::Result<Ceiling> {
    let clock = Arc::new(orderly_clock::SystemClock);
    let bus: Arc<dyn orderly_app::Bus> = match cluster.bus {
        orderly::cluster::BusKind::Rabbitmq => {
            let config = orderly_rabbitmq::RabbitBusConfig {
                queue_expires_ms: Some(60_000),
                envelope_max: 1,
                ..orderly_rabbitmq::RabbitBusConfig::new(&cluster.amqp_url, namespace("broker"))
            };
            Arc::new(
                orderly_rabbitmq::RabbitBus::connect(config, clock)
                    .await
                    .context("connecting to RabbitMQ for its ceiling")?,
            )
        }
        orderly::cluster::BusKind::Kafka => {
            let config = orderly_kafka::KafkaBusConfig {
                partitions: cluster.kafka_partitions,
                replication: cluster.kafka_replication,
                linger_ms: cluster.kafka_linger_ms,
                ..orderly_kafka::KafkaBusConfig::new(&cluster.kafka_brokers, namespace("broker"))
            };
            Arc::new(
                orderly_kafka::KafkaBus::connect(config, clock).await.context("connecting to Kafka for its ceiling")?,
            )
        }
    };
    let (operations, elapsed_s) = hammer(callers, duration, move |n, _| {
        let bus = Arc::clone(&bus);
        async move {
            let token = Token { order_no: OrderNo::new(SnowflakeId(n), Uid(1)), shop_id: ShopId(1), generation: 0 };
            let message = Outgoing { message: Message::ReservationCheck { token }, deliver_at_ms: 0 };
            bus.publish(vec![message]).await?;
            Ok(())
        }
    })
    .await?;
    Ok(Ceiling {
        name: "broker publish",
        what: "confirmed publishes/s through the bus adapter, one message each, no HTTP",
        operations,
        elapsed_s,
        per_s: operations as f64 / elapsed_s.max(0.001),
        callers,
    })
}
