//! The `Bus` contract suite on librdkafka's mock cluster (three brokers in this process, topics with
//! three replicas), each case on a cluster and topics of its own; then what Kafka adds: a broker taken
//! down mid-run, a consumer that dies holding deliveries, a group that rebalances.

use std::sync::Arc;
use std::time::Duration;

use orderly_app::Bus;
use orderly_app::model::{Message, Outgoing, Topic};
use orderly_clock::SystemClock;
use orderly_contract::{BusFixture, OnABroker};
use orderly_domain::{OrderNo, SnowflakeId, Uid};
use orderly_kafka::{KafkaBus, KafkaBusConfig};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

type Mock = MockCluster<'static, DefaultProducerContext>;

/// A mock cluster of three brokers with every topic of `config` created (the mock broker has no admin
/// API). Leaked: it lives as long as the test's process.
fn cluster(partitions: i32) -> (&'static Mock, KafkaBusConfig) {
    let mock: &'static Mock = Box::leak(Box::new(MockCluster::new(3).expect("mock cluster")));
    let mut config = KafkaBusConfig::new(mock.bootstrap_servers(), "orderly-test");
    config.partitions = partitions;
    config.create_topics = false;
    for (topic, partitions) in config.topics() {
        mock.create_topic(&topic, partitions, 3).expect("topic");
    }
    (mock, config)
}

async fn joined(config: KafkaBusConfig) -> KafkaBus {
    let bus = KafkaBus::connect(config, Arc::new(SystemClock)).await.expect("connect");
    bus.join(&Topic::ALL, Duration::from_secs(20)).await.expect("join the groups");
    bus
}

async fn fixture() -> Arc<dyn BusFixture> {
    let (_, config) = cluster(3);
    Arc::new(OnABroker { bus: Arc::new(joined(config).await), clock: Arc::new(SystemClock) })
}

orderly_contract::bus_contract!(fixture);

fn charge(n: u64) -> Message {
    Message::Charge { order_no: OrderNo::new(SnowflakeId(n), Uid(1)) }
}

/// Receives from `bus` until `want` deliveries arrived or `within` passed.
async fn receive(bus: &KafkaBus, topic: Topic, want: usize, within: Duration) -> Vec<orderly_app::model::Delivery> {
    let until = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < want && tokio::time::Instant::now() < until {
        got.extend(bus.receive(topic, want - got.len()).await.expect("receive"));
    }
    got
}

/// A consumer that dies holding deliveries loses nothing: the next member of its group gets them again,
/// the redelivery counted as a second attempt (the dead consumer had noted what it handed out); what it
/// had acked is not delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_dies_holding_deliveries_has_them_redelivered_and_counted() {
    let (_, config) = cluster(1);
    let first = joined(config.clone()).await;
    first.publish((1..=4).map(|n| Outgoing { message: charge(n), deliver_at_ms: 0 }).collect()).await.expect("publish");
    let held = receive(&first, Topic::Charge, 4, Duration::from_secs(10)).await;
    assert_eq!(held.len(), 4);
    assert!(held.iter().all(|d| d.attempt == 1));
    first.ack(&[held[0].receipt.clone()]).await.expect("ack the first");
    // The note of what was handed out travels with the commits (asynchronous); let it land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(first);

    let second = joined(config).await;
    let again = receive(&second, Topic::Charge, 3, Duration::from_secs(20)).await;
    let mut messages: Vec<Message> = again.iter().map(|d| d.message.clone()).collect();
    messages.sort_by_key(|m| format!("{m:?}"));
    assert_eq!(messages, vec![charge(2), charge(3), charge(4)], "the unacked ones, not the acked one");
    assert!(again.iter().all(|d| d.attempt == 2), "redeliveries counted: {again:?}");
    second.ack(&again.iter().map(|d| d.receipt.clone()).collect::<Vec<_>>()).await.expect("ack");
}

/// A broker of three is taken down while messages are published and consumed, and brought back:
/// every message is delivered, none twice once acked (the idempotent producer's retries write no
/// duplicates), and the bus's depth comes back to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_mid_run_loses_nothing_and_duplicates_nothing() {
    let (mock, config) = cluster(3);
    let bus = Arc::new(joined(config).await);
    let total = 600u64;
    let producer = {
        let bus = Arc::clone(&bus);
        tokio::spawn(async move {
            for batch in 0..total / 20 {
                let messages =
                    (0..20).map(|i| Outgoing { message: charge(batch * 20 + i + 1), deliver_at_ms: 0 }).collect();
                // A publish that failed is published again (as the entry's caller would retry).
                while bus.publish(Vec::clone(&messages)).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut seen = std::collections::HashMap::<String, u32>::new();
    let mut downed: Option<tokio::time::Instant> = None;
    let mut upped = false;
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while (seen.len() < usize::try_from(total).expect("small") || !upped) && tokio::time::Instant::now() < until {
        if downed.is_none() && seen.len() > 100 {
            mock.broker_down(2).expect("broker down");
            downed = Some(tokio::time::Instant::now());
        }
        if !upped && downed.is_some_and(|at| at.elapsed() > Duration::from_secs(3)) {
            mock.broker_up(2).expect("broker up");
            upped = true;
        }
        let Ok(got) = bus.receive(Topic::Charge, 50).await else { continue };
        for delivery in &got {
            *seen.entry(format!("{:?}", delivery.message)).or_default() += 1;
        }
        bus.ack(&got.into_iter().map(|d| d.receipt).collect::<Vec<_>>()).await.expect("ack");
    }
    producer.await.expect("producer");
    assert!(downed.is_some() && upped, "the broker went down mid-run and came back");
    assert_eq!(seen.len(), usize::try_from(total).expect("small"), "every message delivered");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered twice though acked once and never redelivered: {twice:?}");
    let mut depth = bus.depth().await.expect("depth");
    for _ in 0..20 {
        if depth.queued.iter().all(|(_, n)| *n == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        depth = bus.depth().await.expect("depth");
    }
    assert!(depth.queued.iter().all(|(_, n)| *n == 0), "everything committed: {depth:?}");
}
