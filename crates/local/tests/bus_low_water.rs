//! The local bus starts its scans at a per-topic low-water key (to skip the tombstones of acked
//! messages). A message must never sort below it unseen: published in the past, retried to an earlier
//! time, or published while a scan runs — each is still delivered, exactly as often as it should be.

use std::collections::HashSet;
use std::sync::Arc;

use orderly_app::Bus;
use orderly_app::model::{Message, Outgoing, Topic};
use orderly_app::time::ManualClock;
use orderly_domain::{OrderNo, SnowflakeId, Uid};
use orderly_local::{Durability, LocalBus, LocalDb};

const T0_MS: u64 = 1_800_000_000_000;

fn timeout(id: u64, deliver_at_ms: u64) -> Outgoing {
    Outgoing { message: Message::UnpaidTimeout { order_no: OrderNo::new(SnowflakeId(id), Uid(1)) }, deliver_at_ms }
}

fn id_of(message: &Message) -> u64 {
    match message {
        Message::UnpaidTimeout { order_no } => order_no.id.0,
        other => panic!("unexpected message {other:?}"),
    }
}

async fn depth(bus: &LocalBus, topic: Topic) -> usize {
    let depth = bus.depth().await.expect("depth");
    depth.queued.iter().find(|(t, _)| *t == topic).map_or(0, |(_, n)| *n)
}

#[tokio::test]
async fn messages_below_the_low_water_are_still_delivered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let bus =
        LocalBus::new(LocalDb::open(dir.path(), Durability::Os).expect("db"), clock.clone(), 30_000).expect("bus");

    // Many messages delivered and acked: the low water moves past their tombstones.
    bus.publish((1..=300).map(|id| timeout(id, T0_MS)).collect()).await.expect("publish");
    let mut seen = 0;
    loop {
        let batch = bus.receive(Topic::UnpaidTimeout, 64).await.expect("receive");
        if batch.is_empty() {
            break;
        }
        seen += batch.len();
        let receipts: Vec<Vec<u8>> = batch.into_iter().map(|d| d.receipt).collect();
        bus.ack(&receipts).await.expect("ack");
    }
    assert_eq!(seen, 300);
    assert_eq!(depth(&bus, Topic::UnpaidTimeout).await, 0);

    // An empty scan raised the low water to "now": a message due in the past sorts below it.
    assert!(bus.receive(Topic::UnpaidTimeout, 64).await.expect("receive").is_empty());
    bus.publish(vec![timeout(1_000, T0_MS - 5_000), timeout(1_001, T0_MS)]).await.expect("publish");
    // A guard (no fsync) is written the same way.
    bus.publish_guards(vec![timeout(1_002, T0_MS - 1)]).await.expect("publish guard");
    assert_eq!(depth(&bus, Topic::UnpaidTimeout).await, 3);
    let batch = bus.receive(Topic::UnpaidTimeout, 64).await.expect("receive");
    let ids: HashSet<u64> = batch.iter().map(|d| id_of(&d.message)).collect();
    assert_eq!(ids, HashSet::from([1_000, 1_001, 1_002]));

    // A retry to a time before everything else left is delivered again, as attempt 2.
    let first = &batch[0];
    bus.retry(&first.receipt, T0_MS - 60_000).await.expect("retry");
    let rest: Vec<Vec<u8>> = batch[1..].iter().map(|d| d.receipt.clone()).collect();
    bus.ack(&rest).await.expect("ack");
    let again = bus.receive(Topic::UnpaidTimeout, 64).await.expect("receive");
    assert_eq!(again.len(), 1);
    assert_eq!(id_of(&again[0].message), id_of(&first.message));
    assert_eq!(again[0].attempt, 2);

    // Not yet due stays; due later is delivered then.
    bus.ack(&[again[0].receipt.clone()]).await.expect("ack");
    bus.publish(vec![timeout(2_000, T0_MS + 10_000)]).await.expect("publish");
    assert!(bus.receive(Topic::UnpaidTimeout, 64).await.expect("receive").is_empty());
    clock.advance_ms(10_000);
    assert_eq!(bus.receive(Topic::UnpaidTimeout, 64).await.expect("receive").len(), 1);
}

/// Publishers and a consumer race on real threads: every message is delivered, none twice (leases hold
/// for the whole test, so a second delivery could only come from a scan that went wrong).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_racing_scans_are_never_skipped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let db = LocalDb::open(dir.path(), Durability::Os).expect("db");
    let bus = Arc::new(LocalBus::new(db, clock, 600_000).expect("bus"));
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 500;
    // The clock is frozen: only messages due by "now" are delivered.
    let due = (1..=PUBLISHERS * EACH).filter(|id| T0_MS - 50 + (id % 100) <= T0_MS).count();

    let mut publishers = Vec::new();
    for publisher in 0..PUBLISHERS {
        let bus = Arc::clone(&bus);
        publishers.push(tokio::spawn(async move {
            for n in 0..EACH {
                let id = publisher * EACH + n + 1;
                // Due times spread around "now", so some sort below a low water set by an empty scan.
                let due = T0_MS - 50 + (id % 100);
                bus.publish(vec![timeout(id, due)]).await.expect("publish");
                if n % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    let consumer = {
        let bus = Arc::clone(&bus);
        tokio::spawn(async move {
            let mut seen = HashSet::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while seen.len() < due && std::time::Instant::now() < deadline {
                let batch = bus.receive(Topic::UnpaidTimeout, 32).await.expect("receive");
                if batch.is_empty() {
                    tokio::task::yield_now().await;
                    continue;
                }
                for delivery in &batch {
                    assert!(seen.insert(id_of(&delivery.message)), "delivered twice: {:?}", delivery.message);
                }
                let receipts: Vec<Vec<u8>> = batch.into_iter().map(|d| d.receipt).collect();
                bus.ack(&receipts).await.expect("ack");
            }
            seen
        })
    };
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let seen = consumer.await.expect("consumer");
    assert_eq!(seen.len(), due, "every due message delivered");
    assert!(bus.receive(Topic::UnpaidTimeout, 64).await.expect("receive").is_empty(), "and none left over");
    assert_eq!(depth(&bus, Topic::UnpaidTimeout).await, PUBLISHERS as usize * EACH as usize - due);
}
