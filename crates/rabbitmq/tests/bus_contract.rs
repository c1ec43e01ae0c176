//! The `Bus` contract suite against RabbitMQ (`TEST_AMQP_URL`, default the local broker), each case on
//! queues of its own that the broker deletes once idle.

use std::sync::Arc;
use std::time::Duration;

use orderly_app::Bus;
use orderly_clock::SystemClock;
use orderly_contract::{BusFixture, OnABroker};
use orderly_rabbitmq::{RabbitBus, RabbitBusConfig};
use rand::TryRngCore;

fn url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Queues of a namespace of their own, which the broker deletes once idle.
fn fresh_config() -> RabbitBusConfig {
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("randomness");
    let mut config = RabbitBusConfig::new(url(), format!("orderly-test-{}", u64::from_le_bytes(bytes)));
    config.queue_expires_ms = Some(120_000);
    config
}

async fn fixture() -> Arc<dyn BusFixture> {
    let config = fresh_config();
    let bus =
        RabbitBus::connect(config, Arc::new(SystemClock)).await.expect("RabbitMQ is up (CI starts it; see .ci/run)");
    Arc::new(OnABroker { bus: Arc::new(bus), clock: Arc::new(SystemClock) })
}

orderly_contract::bus_contract!(fixture);

/// A consumer that dies holding a delivery (its connection drops, as under `kill -9`) loses nothing: the
/// broker delivers the message again, and the quorum queue's delivery count makes it attempt 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_delivery_comes_back_when_its_consumer_dies() {
    use orderly_app::model::{Message, Outgoing, Topic};
    use orderly_domain::{OrderNo, SnowflakeId, Uid};

    let config = fresh_config();
    let message = Message::Charge { order_no: OrderNo::new(SnowflakeId(1), Uid(1)) };

    let first = RabbitBus::connect(config.clone(), Arc::new(SystemClock)).await.expect("connect");
    first.publish(vec![Outgoing { message: message.clone(), deliver_at_ms: 0 }]).await.expect("publish");
    let held = first.receive(Topic::Charge, 1).await.expect("receive");
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].attempt, 1);
    drop(first);

    let second = RabbitBus::connect(config, Arc::new(SystemClock)).await.expect("connect");
    let mut again = Vec::new();
    for _ in 0..100 {
        again = second.receive(Topic::Charge, 1).await.expect("receive");
        if !again.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(again.len(), 1, "redelivered after the consumer died");
    assert_eq!(again[0].message, message);
    assert_eq!(again[0].attempt, 2, "the redelivery is counted");
    second.ack(&[again[0].receipt.clone()]).await.expect("ack");
}

/// The connection drops under a live process (the broker restarted): the next call opens a new one, the
/// delivery held on the old one comes back from the broker, and its stale receipt is skipped — an ack
/// with a tag the new channel never gave out would close that channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_reopened_and_stale_receipts_are_skipped() {
    use orderly_app::model::{Message, Outgoing, Topic};
    use orderly_domain::{OrderNo, SnowflakeId, Uid};

    let config = fresh_config();
    let bus = RabbitBus::connect(config, Arc::new(SystemClock)).await.expect("connect");
    let message = Message::Charge { order_no: OrderNo::new(SnowflakeId(1), Uid(1)) };
    bus.publish(vec![Outgoing { message: message.clone(), deliver_at_ms: 0 }]).await.expect("publish");
    let held = bus.receive(Topic::Charge, 1).await.expect("receive");
    assert_eq!(held.len(), 1);

    bus.close().await.expect("close");
    bus.ack(&[held[0].receipt.clone()]).await.expect("a stale ack is skipped");
    bus.retry(&held[0].receipt, 0).await.expect("a stale retry is skipped");
    let mut again = Vec::new();
    for _ in 0..100 {
        again = bus.receive(Topic::Charge, 1).await.expect("receive reconnects");
        if !again.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(again.len(), 1, "the broker had it again");
    assert_eq!((again[0].message.clone(), again[0].attempt), (message, 2));
    bus.ack(&[again[0].receipt.clone()]).await.expect("ack on the new connection");
    let depth = bus.depth().await.expect("depth");
    assert_eq!(depth.queued.iter().map(|(_, n)| n).sum::<usize>(), 0, "acked for good: {depth:?}");
}

/// Concurrent publishes travel together: one broker message carries many (the broker pays once for
/// them). Each is still a delivery of its own, and the broker message is acked only once every one of
/// them is settled: a consumer that dies before that gets the unsettled ones again (and the settled ones
/// of the same envelope — consumers are idempotent per message), never loses one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_broker_messages_and_an_envelope_is_acked_once_all_its_parts_are() {
    use orderly_app::model::{Message, Outgoing, Topic};
    use orderly_domain::{OrderNo, SnowflakeId, Uid};

    let config = fresh_config();
    let charge = |n: u64| Message::Charge { order_no: OrderNo::new(SnowflakeId(n), Uid(1)) };
    let first = Arc::new(RabbitBus::connect(config.clone(), Arc::new(SystemClock)).await.expect("connect"));
    let publishes = (1..=40u64).map(|n| {
        let bus = Arc::clone(&first);
        tokio::spawn(async move { bus.publish(vec![Outgoing { message: charge(n), deliver_at_ms: 0 }]).await })
    });
    for published in futures_util::future::join_all(publishes).await {
        published.expect("task").expect("publish");
    }
    let queued = first.depth().await.expect("depth").queued.iter().find(|(t, _)| *t == Topic::Charge).map(|(_, n)| *n);
    assert!(queued.is_some_and(|n| (1..40).contains(&n)), "40 publishes in fewer broker messages: {queued:?}");

    let mut held = Vec::new();
    for _ in 0..100 {
        held.extend(first.receive(Topic::Charge, 40 - held.len()).await.expect("receive"));
        if held.len() == 40 {
            break;
        }
    }
    assert_eq!(held.len(), 40, "each message a delivery of its own");
    let unsettled = held.pop().expect("a delivery");
    let receipts: Vec<Vec<u8>> = held.into_iter().map(|d| d.receipt).collect();
    first.ack(&receipts).await.expect("ack all but one");
    first.close().await.expect("close: the consumer dies");

    let second = RabbitBus::connect(config, Arc::new(SystemClock)).await.expect("connect");
    let mut again = Vec::new();
    for _ in 0..100 {
        again.extend(second.receive(Topic::Charge, 40).await.expect("receive"));
        if again.iter().any(|d| d.message == unsettled.message) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.iter().any(|d| d.message == unsettled.message && d.attempt == 2), "the unsettled one came back");
    if queued > Some(1) {
        assert!(again.len() < 40, "broker messages whose parts were all acked are gone: {}", again.len());
    }
}
