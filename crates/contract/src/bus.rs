//! The `Bus` contract: durable publish, at-least-once delivery with an attempt count, acks, retries at a
//! later time, delayed delivery, dead letters, one queue per topic. Each case takes a fresh bus.
//!
//! Time: a fixture says what "now" is and how to let time pass — a manual clock for an embedded bus,
//! real sleeping for a broker — so delays are kept to about a second.

use std::sync::Arc;

use async_trait::async_trait;
use orderly_app::model::{Delivery, Message, Outgoing, Topic};
use orderly_app::ports::Bus;
use orderly_domain::{OrderNo, SnowflakeId, Uid};

#[async_trait]
pub trait BusFixture: Send + Sync {
    fn bus(&self) -> Arc<dyn Bus>;
    fn now_ms(&self) -> u64;
    /// Lets `ms` pass (and a little more, for a broker's timers).
    async fn advance_ms(&self, ms: u64);
}

/// The fixture of a bus on a real broker: the time is `clock`'s, and letting time pass sleeps it, plus
/// 300 ms for the broker's timers and round trips (a delay tier's lateness, a commit's trip).
pub struct OnABroker {
    pub bus: Arc<dyn Bus>,
    pub clock: Arc<dyn orderly_app::Clock>,
}

impl std::fmt::Debug for OnABroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnABroker").field("bus", &self.bus).finish_non_exhaustive()
    }
}

#[async_trait]
impl BusFixture for OnABroker {
    fn bus(&self) -> Arc<dyn Bus> {
        Arc::clone(&self.bus)
    }
    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
    async fn advance_ms(&self, ms: u64) {
        tokio::time::sleep(std::time::Duration::from_millis(ms + 300)).await;
    }
}

fn timeout(n: u64) -> Message {
    Message::UnpaidTimeout { order_no: OrderNo::new(SnowflakeId(n), Uid(1)) }
}

fn charge(n: u64) -> Message {
    Message::Charge { order_no: OrderNo::new(SnowflakeId(n), Uid(1)) }
}

fn now(fixture: &dyn BusFixture, message: Message) -> Outgoing {
    Outgoing { message, deliver_at_ms: fixture.now_ms() }
}

/// Receives until `want` deliveries arrived or a few polls found nothing more.
async fn receive(fixture: &dyn BusFixture, topic: Topic, want: usize) -> Vec<Delivery> {
    let bus = fixture.bus();
    let mut got = Vec::new();
    for _ in 0..50 {
        got.extend(bus.receive(topic, want.saturating_sub(got.len()).max(1)).await.expect("receive"));
        if got.len() >= want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    got
}

async fn queued(bus: &Arc<dyn Bus>, topic: Topic) -> usize {
    bus.depth().await.expect("depth").queued.iter().find(|(t, _)| *t == topic).map_or(0, |(_, n)| *n)
}

pub async fn published_messages_are_delivered_then_gone_once_acked(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus();
    let at_ms = fixture.now_ms();
    let messages = (1..=3).map(|n| Outgoing { message: timeout(n), deliver_at_ms: at_ms }).collect();
    bus.publish(messages).await.expect("publish");
    let got = receive(fixture.as_ref(), Topic::UnpaidTimeout, 3).await;
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|d| d.attempt == 1), "first delivery");
    assert!(got.iter().all(|d| d.due_ms == at_ms), "due when published: how long each waited is known");
    let mut messages: Vec<Message> = got.iter().map(|d| d.message.clone()).collect();
    messages.sort_by_key(|m| format!("{m:?}"));
    assert_eq!(messages, vec![timeout(1), timeout(2), timeout(3)]);
    assert!(bus.receive(Topic::UnpaidTimeout, 10).await.expect("receive").is_empty(), "held, not handed twice");
    let receipts: Vec<Vec<u8>> = got.into_iter().map(|d| d.receipt).collect();
    bus.ack(&receipts).await.expect("ack");
    bus.ack(&receipts).await.expect("a second ack is harmless");
    fixture.advance_ms(100).await;
    assert!(bus.receive(Topic::UnpaidTimeout, 10).await.expect("receive").is_empty());
    assert_eq!(queued(&bus, Topic::UnpaidTimeout).await, 0);
}

pub async fn receive_hands_out_at_most_max(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus();
    bus.publish((1..=5).map(|n| now(fixture.as_ref(), timeout(n))).collect()).await.expect("publish");
    let first = receive(fixture.as_ref(), Topic::UnpaidTimeout, 2).await;
    assert!(first.len() <= 2 && !first.is_empty(), "{}", first.len());
    let rest = receive(fixture.as_ref(), Topic::UnpaidTimeout, 5 - first.len()).await;
    assert_eq!(first.len() + rest.len(), 5);
}

pub async fn topics_are_separate_queues(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus();
    bus.publish(vec![now(fixture.as_ref(), timeout(1)), now(fixture.as_ref(), charge(2))]).await.expect("publish");
    let charges = receive(fixture.as_ref(), Topic::Charge, 1).await;
    assert_eq!(charges.iter().map(|d| d.message.clone()).collect::<Vec<_>>(), vec![charge(2)]);
    let timeouts = receive(fixture.as_ref(), Topic::UnpaidTimeout, 1).await;
    assert_eq!(timeouts.iter().map(|d| d.message.clone()).collect::<Vec<_>>(), vec![timeout(1)]);
}

pub async fn delayed_messages_wait_until_due(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus();
    let due_ms = fixture.now_ms() + 1_000;
    bus.publish(vec![Outgoing { message: timeout(1), deliver_at_ms: due_ms }]).await.expect("publish");
    assert!(bus.receive(Topic::UnpaidTimeout, 10).await.expect("receive").is_empty(), "not due yet");
    fixture.advance_ms(1_000).await;
    let got = receive(fixture.as_ref(), Topic::UnpaidTimeout, 1).await;
    assert_eq!(got.len(), 1, "due now");
    assert_eq!(got[0].due_ms, due_ms, "its wait counts from when it was due, not from the publish");
}

pub async fn a_retry_comes_back_later_with_its_attempt_count(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus();
    bus.publish(vec![now(fixture.as_ref(), timeout(1))]).await.expect("publish");
    let got = receive(fixture.as_ref(), Topic::UnpaidTimeout, 1).await;
    let retry_at_ms = fixture.now_ms() + 500;
    bus.retry(&got[0].receipt, retry_at_ms).await.expect("retry");
    assert!(bus.receive(Topic::UnpaidTimeout, 10).await.expect("receive").is_empty(), "not before its time");
    fixture.advance_ms(500).await;
    let again = receive(fixture.as_ref(), Topic::UnpaidTimeout, 1).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message, timeout(1));
    assert_eq!(again[0].attempt, 2);
    assert_eq!(again[0].due_ms, retry_at_ms);
}

pub async fn a_dead_letter_leaves_the_queue_and_is_counted(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus();
    bus.publish(vec![now(fixture.as_ref(), timeout(1))]).await.expect("publish");
    let got = receive(fixture.as_ref(), Topic::UnpaidTimeout, 1).await;
    bus.dead_letter(&got[0].receipt, "failed too often").await.expect("dead letter");
    fixture.advance_ms(100).await;
    assert!(bus.receive(Topic::UnpaidTimeout, 10).await.expect("receive").is_empty());
    let depth = bus.depth().await.expect("depth");
    assert_eq!(depth.dead_letters, 1);
    assert_eq!(queued(&bus, Topic::UnpaidTimeout).await, 0);
}

pub async fn depth_counts_waiting_and_delayed_messages(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus();
    let later = Outgoing { message: timeout(2), deliver_at_ms: fixture.now_ms() + 60_000 };
    bus.publish(vec![now(fixture.as_ref(), timeout(1)), later]).await.expect("publish");
    bus.publish_guards(vec![now(fixture.as_ref(), Message::Charge { order_no: OrderNo::new(SnowflakeId(3), Uid(1)) })])
        .await
        .expect("publish guard");
    assert_eq!(queued(&bus, Topic::UnpaidTimeout).await, 2, "a delayed message is still waiting");
    assert_eq!(queued(&bus, Topic::Charge).await, 1);
}
