//! The `Bus` contract suite against a real Kafka-protocol broker (`TEST_KAFKA_BROKERS`, default the
//! local tansu cluster of `scripts/kafka-up`), each case on topics of a namespace of its own, created
//! through the admin API as the cluster profile creates them.

use std::sync::Arc;
use std::time::Duration;

use orderly_app::model::Topic;
use orderly_clock::SystemClock;
use orderly_contract::{BusFixture, OnABroker};
use orderly_kafka::{KafkaBus, KafkaBusConfig};
use rand::TryRngCore;

fn brokers() -> String {
    std::env::var("TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094".to_owned())
}

async fn fixture() -> Arc<dyn BusFixture> {
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("randomness");
    let mut config = KafkaBusConfig::new(brokers(), format!("orderly-test-{}", u64::from_le_bytes(bytes)));
    config.partitions = 2;
    let bus = KafkaBus::connect(config, Arc::new(SystemClock))
        .await
        .expect("a Kafka-protocol broker is up (CI starts tansu: scripts/kafka-up)");
    bus.join(&Topic::ALL, Duration::from_secs(30)).await.expect("join the groups");
    Arc::new(OnABroker { bus: Arc::new(bus), clock: Arc::new(SystemClock) })
}

orderly_contract::bus_contract!(fixture);
