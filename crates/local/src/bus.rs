//! [`LocalBus`]: a durable queue with delayed delivery, in the same fjall database as the store.
//!
//! Key: topic (1 byte) · due time (8 bytes, ms) · sequence (8 bytes). A message stays in the keyspace
//! until acked, so after `kill -9` every unacked message is delivered again. Handed-out messages are
//! hidden for a lease (in memory) so two consumers never hold the same one; an expired lease (a
//! consumer that died without answering) makes it visible again.
//!
//! An acked message leaves a tombstone that an LSM-tree keeps until compaction, and a scan walks over
//! every one of them: a queue that always scanned from the topic's first key would cost more with
//! every message it ever carried. So each topic keeps a *low water* key — no message sorts below it —
//! and scans start there.

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
    cursor: Mutex<Cursor>,
    lease_ms: u64,
}

#[derive(Debug)]
struct Cursor {
    /// Receipt → time its lease ends.
    leases: HashMap<Vec<u8>, u64>,
    /// Per topic (index [`topic_byte`]): no message key sorts below this one.
    low_water: [Vec<u8>; 5],
}

impl Cursor {
    /// A message was written at `key`: the low water must not be above it.
    fn lower_to(&mut self, key: &[u8]) {
        let low = &mut self.low_water[usize::from(key[0])];
        if key < low.as_slice() {
            *low = key.to_vec();
        }
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) message: Message,
    /// Deliveries that ended in a retry.
    pub(crate) retries: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DeadLetter {
    pub(crate) topic: Topic,
    pub(crate) message: Message,
    pub(crate) reason: String,
    pub(crate) at_ms: u64,
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
    fn write(&self, messages: Vec<Outgoing>) -> PortResult<()> {
        let mut batch = self.db.batch();
        let keys = self.stage(&mut batch, messages)?;
        batch.commit().map_err(storage_error)?;
        self.landed(&keys)
    }

    /// Puts `messages` into `batch` (the caller's atomic write: a store's change carries its messages in
    /// its own write, with no outbox to relay them) and gives their keys, for [`LocalBus::landed`] once
    /// the batch is committed.
    pub(crate) fn stage(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        messages: impl IntoIterator<Item = Outgoing>,
    ) -> PortResult<Vec<Vec<u8>>> {
        let mut keys = Vec::new();
        for outgoing in messages {
            let key = message_key(outgoing.message.topic(), outgoing.deliver_at_ms, self.next_sequence());
            batch.insert(&self.db.bus, key.clone(), encode(&Stored { message: outgoing.message, retries: 0 })?);
            keys.push(key);
        }
        Ok(keys)
    }

    /// Messages [`LocalBus::stage`]d were committed: after the commit, under the cursor lock, so a scan
    /// running now either saw these keys or will have its low water lowered to them when it is done.
    pub(crate) fn landed(&self, keys: &[Vec<u8>]) -> PortResult<()> {
        let mut cursor = self.cursor()?;
        for key in keys {
            cursor.lower_to(key);
        }
        Ok(())
    }

    pub fn new(db: LocalDb, clock: Arc<dyn Clock>, lease_ms: u64) -> Result<LocalBus, PortError> {
        // Keys end in the sequence, but sort by topic and due time first: scan for the largest.
        let mut sequence = last_sequence(&db.bus)?.max(last_sequence(&db.dead_letters)?);
        for guard in db.bus.iter() {
            let (key, _) = guard.into_inner().map_err(storage_error)?;
            sequence = sequence.max(crate::db::key_u64(&key[9..]).unwrap_or(0));
        }
        let cursor = Cursor { leases: HashMap::new(), low_water: [0u8, 1, 2, 3, 4].map(|topic| vec![topic]) };
        Ok(LocalBus { db, clock, sequence: AtomicU64::new(sequence), cursor: Mutex::new(cursor), lease_ms })
    }

    fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn cursor(&self) -> PortResult<std::sync::MutexGuard<'_, Cursor>> {
        Ok(self.cursor.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn read(&self, receipt: &[u8]) -> PortResult<Option<Stored>> {
        self.db.bus.get(receipt).map_err(storage_error)?.map(|bytes| decode(&bytes)).transpose()
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, messages: Vec<Outgoing>) -> PortResult<()> {
        self.write(messages)?;
        self.db.sync().await
    }

    /// The standalone cache lives in this process and is rebuilt from the store after a crash, so a
    /// reservation never outlives the process: its check needs no fsync (one less per order).
    async fn publish_guards(&self, messages: Vec<Outgoing>) -> PortResult<()> {
        self.write(messages)
    }

    async fn receive(&self, topic: Topic, max: usize) -> PortResult<Vec<Delivery>> {
        let now_ms = self.clock.now_ms();
        let mut cursor = self.cursor()?;
        let mut deliveries = Vec::new();
        let start = cursor.low_water[usize::from(topic_byte(topic))].clone();
        let end = message_key(topic, now_ms.saturating_add(1), 0);
        let mut first_seen: Option<Vec<u8>> = None;
        for guard in self.db.bus.range(start..end.clone()) {
            if deliveries.len() >= max {
                break;
            }
            let (key, value) = guard.into_inner().map_err(storage_error)?;
            let key = key.to_vec();
            first_seen.get_or_insert_with(|| key.clone());
            if cursor.leases.get(&key).is_some_and(|until_ms| *until_ms > now_ms) {
                continue;
            }
            let stored: Stored = decode(&value)?;
            cursor.leases.insert(key.clone(), now_ms + self.lease_ms);
            let due_ms = key.get(1..9).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
            deliveries.push(Delivery { receipt: key, message: stored.message, attempt: stored.retries + 1, due_ms });
        }
        // Nothing sorts below the first key seen (or below `end`, when none was): writers lower it
        // again after this lock is released.
        cursor.low_water[usize::from(topic_byte(topic))] = first_seen.unwrap_or(end);
        Ok(deliveries)
    }

    async fn ack(&self, receipts: &[Vec<u8>]) -> PortResult<()> {
        let mut batch = self.db.batch();
        for receipt in receipts {
            batch.remove(&self.db.bus, receipt.clone());
        }
        // Not synced: a lost ack only means a redelivery, which every consumer handles.
        batch.commit().map_err(storage_error)?;
        let mut cursor = self.cursor()?;
        for receipt in receipts {
            cursor.leases.remove(receipt);
        }
        Ok(())
    }

    async fn retry(&self, receipt: &[u8], at_ms: u64) -> PortResult<()> {
        let Some(mut stored) = self.read(receipt)? else { return Ok(()) };
        stored.retries += 1;
        let topic = stored.message.topic();
        let mut batch = self.db.batch();
        let key = message_key(topic, at_ms, self.next_sequence());
        batch.remove(&self.db.bus, receipt.to_vec());
        batch.insert(&self.db.bus, key.clone(), encode(&stored)?);
        batch.commit().map_err(storage_error)?;
        let mut cursor = self.cursor()?;
        cursor.leases.remove(receipt);
        cursor.lower_to(&key);
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
        self.cursor()?.leases.remove(receipt);
        self.db.sync().await
    }

    async fn depth(&self) -> PortResult<BusDepth> {
        let mut queued = Vec::new();
        for topic in Topic::ALL {
            let start = self.cursor()?.low_water[usize::from(topic_byte(topic))].clone();
            queued.push((topic, self.db.bus.range(start..vec![topic_byte(topic) + 1]).count()));
        }
        Ok(BusDepth { queued, dead_letters: self.db.dead_letters.len().map_err(storage_error)? })
    }
}
