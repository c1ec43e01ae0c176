//! [`LocalBus`]: a durable queue with delayed delivery, in the same fjall database as the store.
//!
//! Key: topic (1 byte) · due time (8 bytes, ms) · sequence (8 bytes). A message stays in the keyspace
//! until acked, so after `kill -9` every unacked message is delivered again. Handed-out messages are
//! hidden for a lease (in memory) so two consumers never hold the same one; an expired lease (a
//! consumer that died without answering) makes it visible again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use orderly_app::model::{Delivery, Message, Outgoing, Topic};
use orderly_app::ports::{Bus, BusDepth, PortResult};
use orderly_app::{Clock, PortError};
use serde::{Deserialize, Serialize};

use crate::db::{LocalDb, last_sequence, u64_key};
use crate::{decode, encode, storage_error};

#[derive(Debug)]
pub struct LocalBus {
    db: LocalDb,
    clock: Arc<dyn Clock>,
    sequence: AtomicU64,
    /// Receipt → time its lease ends.
    leases: Mutex<HashMap<Vec<u8>, u64>>,
    lease_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    message: Message,
    /// Deliveries that ended in a retry.
    retries: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct DeadLetter {
    topic: Topic,
    message: Message,
    reason: String,
    at_ms: u64,
}

fn topic_byte(topic: Topic) -> u8 {
    match topic {
        Topic::CreateOrder => 1,
        Topic::ReservationCheck => 2,
        Topic::UnpaidTimeout => 3,
        Topic::Charge => 4,
    }
}

fn message_key(topic: Topic, due_ms: u64, sequence: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    key.push(topic_byte(topic));
    key.extend_from_slice(&due_ms.to_be_bytes());
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

impl LocalBus {
    pub fn new(db: LocalDb, clock: Arc<dyn Clock>, lease_ms: u64) -> Result<LocalBus, PortError> {
        // Keys end in the sequence, but sort by topic and due time first: scan for the largest.
        let mut sequence = last_sequence(&db.bus)?.max(last_sequence(&db.dead_letters)?);
        for guard in db.bus.iter() {
            let (key, _) = guard.into_inner().map_err(storage_error)?;
            sequence = sequence.max(crate::db::key_u64(&key[9..]).unwrap_or(0));
        }
        Ok(LocalBus { db, clock, sequence: AtomicU64::new(sequence), leases: Mutex::new(HashMap::new()), lease_ms })
    }

    fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn leases(&self) -> PortResult<std::sync::MutexGuard<'_, HashMap<Vec<u8>, u64>>> {
        self.leases.lock().map_err(|_| PortError::corrupt("local bus", "lease lock poisoned"))
    }

    fn read(&self, receipt: &[u8]) -> PortResult<Option<Stored>> {
        self.db.bus.get(receipt).map_err(storage_error)?.map(|bytes| decode(&bytes)).transpose()
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, messages: Vec<Outgoing>) -> PortResult<()> {
        let mut batch = self.db.batch();
        for outgoing in messages {
            let key = message_key(outgoing.message.topic(), outgoing.deliver_at_ms, self.next_sequence());
            batch.insert(&self.db.bus, key, encode(&Stored { message: outgoing.message, retries: 0 })?);
        }
        batch.commit().map_err(storage_error)?;
        self.db.sync().await
    }

    async fn receive(&self, topic: Topic, max: usize) -> PortResult<Vec<Delivery>> {
        let now_ms = self.clock.now_ms();
        let mut leases = self.leases()?;
        let mut deliveries = Vec::new();
        let start = vec![topic_byte(topic)];
        let end = message_key(topic, now_ms.saturating_add(1), 0);
        for guard in self.db.bus.range(start..end) {
            if deliveries.len() >= max {
                break;
            }
            let (key, value) = guard.into_inner().map_err(storage_error)?;
            let key = key.to_vec();
            if leases.get(&key).is_some_and(|until_ms| *until_ms > now_ms) {
                continue;
            }
            let stored: Stored = decode(&value)?;
            leases.insert(key.clone(), now_ms + self.lease_ms);
            deliveries.push(Delivery { receipt: key, message: stored.message, attempt: stored.retries + 1 });
        }
        Ok(deliveries)
    }

    async fn ack(&self, receipts: &[Vec<u8>]) -> PortResult<()> {
        let mut batch = self.db.batch();
        for receipt in receipts {
            batch.remove(&self.db.bus, receipt.clone());
        }
        // Not synced: a lost ack only means a redelivery, which every consumer handles.
        batch.commit().map_err(storage_error)?;
        let mut leases = self.leases()?;
        for receipt in receipts {
            leases.remove(receipt);
        }
        Ok(())
    }

    async fn retry(&self, receipt: &[u8], at_ms: u64) -> PortResult<()> {
        let Some(mut stored) = self.read(receipt)? else { return Ok(()) };
        stored.retries += 1;
        let topic = stored.message.topic();
        let mut batch = self.db.batch();
        batch.remove(&self.db.bus, receipt.to_vec());
        batch.insert(&self.db.bus, message_key(topic, at_ms, self.next_sequence()), encode(&stored)?);
        batch.commit().map_err(storage_error)?;
        self.leases()?.remove(receipt);
        Ok(())
    }

    async fn dead_letter(&self, receipt: &[u8], reason: &str) -> PortResult<()> {
        let Some(stored) = self.read(receipt)? else { return Ok(()) };
        let dead = DeadLetter {
            topic: stored.message.topic(),
            message: stored.message,
            reason: reason.to_owned(),
            at_ms: self.clock.now_ms(),
        };
        let mut batch = self.db.batch();
        batch.remove(&self.db.bus, receipt.to_vec());
        batch.insert(&self.db.dead_letters, u64_key(self.next_sequence()), encode(&dead)?);
        batch.commit().map_err(storage_error)?;
        self.leases()?.remove(receipt);
        self.db.sync().await
    }

    async fn depth(&self) -> PortResult<BusDepth> {
        let mut queued = Vec::new();
        for topic in Topic::ALL {
            queued.push((topic, self.db.bus.prefix([topic_byte(topic)]).count()));
        }
        Ok(BusDepth { queued, dead_letters: self.db.dead_letters.len().map_err(storage_error)? })
    }
}
