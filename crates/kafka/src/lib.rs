//! [`KafkaBus`]: the `Bus` port on Kafka, the seed's choice for a highly available, high-throughput
//! queue (any broker that speaks the Kafka protocol: Apache Kafka, Redpanda, tansu; librdkafka's mock
//! cluster in the tests).
//!
//! - **Topics**: one per flow topic (`<ns>.<topic>`), a delay topic per flow topic and tier
//!   (`<ns>.<topic>.delay.<ms>`, `delay_partitions` partitions), and `<ns>.dead`, created at connect
//!   (replication `replication`, `min.insync.replicas` up to 2) unless `create_topics` is off.
//! - **Durable publish**: an idempotent producer with `acks=all`; `publish` returns once the broker
//!   acknowledged every record (the API answers only after that). Concurrent publishes batch in the
//!   producer (`linger.ms`, `batch.num.messages`): the broker's cost is per batch, not per record.
//! - **Keys**: a record is keyed by its shop where the message names one (creates, reservation checks),
//!   else by its order: one shop's (one order's) messages land on one partition and keep their order.
//! - **At-least-once consumption**: one consumer group per flow topic (`<ns>.<topic>`); offsets are
//!   committed only after handling — the committed offset of a partition is its lowest delivery not yet
//!   acked, retried or dead-lettered, so a consumer that dies (or loses the partition in a rebalance)
//!   has its unsettled deliveries, and those after them, delivered again to whoever takes the partition.
//!   The flow makes every redelivery a no-op.
//! - **Redeliveries counted**: with each commit a consumer notes in the offset's metadata the highest
//!   offset it has handed out; a consumer that takes the partition over counts a delivery at or below
//!   that note as a second attempt. (Best effort: a note that had not reached the broker when its
//!   consumer died is not counted.)
//! - **Delays by tier topics**: a message due later goes to the delay topic of the largest tier that
//!   fits, with the time it may leave (`now + tier`, or its due time if sooner). A mover (consumer group
//!   `<ns>.delay`, in every process with `move_delayed`) holds each delay partition's head until it may
//!   leave — pausing that partition, never the others — then publishes it to where it is due next (its
//!   topic, or a smaller tier) and commits. (The cluster runs it in the processes that consume: workers.) A message is never delivered early; one that reaches its
//!   topic early after a clock step goes round again.
//! - **Retries and dead letters**: a retry publishes a copy with its retry count through the delay
//!   tiers, then settles the delivery; a dead letter goes to `<ns>.dead` with its topic and reason.
//! - **Depth** per flow topic: records not yet committed by its group, in its topic and its delay
//!   topics (due or not, handed out or not); dead letters are every record of `<ns>.dead`.
//! - **Failures**: librdkafka reconnects, follows partition leaders to other brokers, and retries the
//!   idempotent producer's sends without duplicates; a publish not acknowledged within
//!   `delivery_timeout_ms` fails (the caller answers an error). A receipt of a partition this process
//!   lost in a rebalance is skipped: the new owner delivers the message again.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use orderly_app::model::{DeadLetter, Delivery, Message, Outgoing, Topic};
use orderly_app::ports::{Bus, BusDepth, PortResult};
use orderly_app::{Clock, PortError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone)]
pub struct KafkaBusConfig {
    /// `host:port,host:port`: the bootstrap brokers.
    pub brokers: String,
    /// Prefix of every topic and consumer group: several systems or test runs can share the brokers.
    pub namespace: String,
    /// Partitions of every flow topic (and of `<ns>.dead`): the most consumers of one topic that work at
    /// once.
    pub partitions: i32,
    /// Partitions of every delay topic: the most processes that move one tier's records at once (the
    /// move is cheap; each partition costs the brokers a fetch per `fetch.wait.max.ms` even when idle).
    pub delay_partitions: i32,
    /// Replicas of every topic (3 on a cluster of three brokers; 1 on a single broker).
    pub replication: i32,
    /// Whether `connect` creates the topics (a broker without the admin API: create them beforehand).
    pub create_topics: bool,
    /// Delay tiers, ascending. A delayed message waits in tiers no longer than what is left of its delay.
    pub delay_tiers_ms: Vec<u64>,
    /// How long `receive` waits for a first delivery when none has arrived.
    pub receive_wait_ms: u64,
    /// The producer waits this long for more records to batch with (`linger.ms`).
    pub linger_ms: u64,
    /// Records one produce request carries at most (`batch.num.messages`).
    pub batch_max: usize,
    /// A publish not acknowledged by then fails (`message.timeout.ms`).
    pub delivery_timeout_ms: u64,
    /// Whether this process moves delayed records on (joins the mover's group). Off in processes that
    /// only publish (the APIs): every member joining or leaving a group makes the group rebalance.
    pub move_delayed: bool,
    /// A consumer silent this long leaves its group and its partitions go to the others
    /// (`session.timeout.ms`).
    pub session_timeout_ms: u64,
}

impl KafkaBusConfig {
    pub fn new(brokers: impl Into<String>, namespace: impl Into<String>) -> KafkaBusConfig {
        KafkaBusConfig {
            brokers: brokers.into(),
            namespace: namespace.into(),
            partitions: 6,
            delay_partitions: 1,
            replication: 3,
            create_topics: true,
            delay_tiers_ms: vec![100, 1_000, 10_000, 60_000, 600_000],
            receive_wait_ms: 50,
            linger_ms: 2,
            batch_max: 10_000,
            delivery_timeout_ms: 10_000,
            session_timeout_ms: 10_000,
            move_delayed: true,
        }
    }

    fn work_topic(&self, topic: Topic) -> String {
        format!("{}.{}", self.namespace, topic.as_str())
    }

    fn delay_topic(&self, topic: Topic, tier_ms: u64) -> String {
        format!("{}.{}.delay.{tier_ms}", self.namespace, topic.as_str())
    }

    fn dead_topic(&self) -> String {
        format!("{}.dead", self.namespace)
    }

    fn delay_group(&self) -> String {
        format!("{}.delay", self.namespace)
    }

    /// Every topic the bus uses, with its partitions.
    pub fn topics(&self) -> Vec<(String, i32)> {
        let mut topics = vec![(self.dead_topic(), self.partitions)];
        for topic in Topic::ALL {
            topics.push((self.work_topic(topic), self.partitions));
            topics
                .extend(self.delay_tiers_ms.iter().map(|&tier| (self.delay_topic(topic, tier), self.delay_partitions)));
        }
        topics
    }

    fn partitions_of(&self, name: &str) -> i32 {
        if name.contains(".delay.") { self.delay_partitions } else { self.partitions }
    }

    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers).set("client.id", format!("orderly-{}", self.namespace));
        config
    }

    /// An idempotent producer that waits for every in-sync replica.
    fn producer(&self) -> PortResult<FutureProducer> {
        self.client()
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", self.linger_ms.to_string())
            .set("batch.num.messages", self.batch_max.to_string())
            .set("message.timeout.ms", self.delivery_timeout_ms.to_string())
            .create()
            .map_err(unavailable)
    }

    /// A consumer of `group` whose fetches wait up to `fetch_wait_ms` for records (a broker answers as
    /// soon as it has some; an idle partition costs a fetch that often).
    fn consumer(&self, group: &str, fetch_wait_ms: u64) -> ClientConfig {
        let mut config = self.client();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", (self.session_timeout_ms / 3).max(100).to_string())
            .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
            // No transactions are written, so both levels read the same; tansu 0.6 on PostgreSQL 15
            // answers a read-committed offset query with an SQL error (it needs PostgreSQL 16).
            .set("isolation.level", "read_uncommitted");
        config
    }
}

/// A producer is replaced at most this often ([`Core::renew_producer`]).
const PRODUCER_RENEW_MIN_MS: u64 = 1_000;

/// The producer in use, and which one it is.
struct Producer {
    current: FutureProducer,
    generation: u64,
    /// When it was made.
    since_ms: u64,
}

/// Whether a publish's error means the producer will not publish again. librdkafka's idempotent
/// producer bumps its epoch on its own after a record timed out (KIP-360); tansu 0.6 does not take the
/// bump (it has no row for the new epoch) and answers every later produce with UNKNOWN_SERVER_ERROR, and
/// librdkafka bumps again: a broker fault left the APIs answering every cart `503` for good in a chaos
/// run. A fatal error (checked apart) leaves a producer unusable on any broker.
fn wedges_the_producer(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Unknown
                | RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
        )
    )
}

/// How often a consumer commits what was settled and handed out since its last commit.
const COMMIT_EVERY_MS: u64 = 100;

/// How long a flow topic's consumer's fetch waits for records.
const WORK_FETCH_WAIT_MS: u64 = 100;
/// How long the mover's fetch waits for delayed records: a record is late by at most this much more than
/// its tier's hold (the smallest tier is 100 ms).
const MOVER_FETCH_WAIT_MS: u64 = 200;

/// At most this many delay records taken from the consumer's queue between two moves.
const MOVE_BATCH_MAX: usize = 1_000;

/// The body of every record: a flow message and what the bus needs to know about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    message: Message,
    /// Deliveries that ended in a retry.
    retries: u32,
    /// Not delivered before this time.
    due_ms: u64,
    /// In a delay topic: when it may leave for where it is due next.
    #[serde(default)]
    leave_ms: u64,
}

/// What can go wrong with Kafka. Everything the brokers answer is retryable (librdkafka reconnects and
/// follows leaders); only our own message that cannot be encoded is not.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("{0}")]
    Kafka(#[from] KafkaError),
    #[error("unencodable message: {0}")]
    Unencodable(serde_json::Error),
    #[error("{0}")]
    Setup(String),
}

impl From<BusError> for PortError {
    fn from(error: BusError) -> PortError {
        match error {
            BusError::Unencodable(_) => PortError::failed("kafka", error),
            _ => PortError::unavailable("kafka", error),
        }
    }
}

fn unavailable(error: KafkaError) -> PortError {
    BusError::Kafka(error).into()
}

fn encode<T: Serialize>(value: &T) -> PortResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| BusError::Unencodable(e).into())
}

/// The partition key: the shop where the message names one, else the order.
fn key_of(message: &Message) -> String {
    match message {
        Message::CreateOrder(order) => format!("s{}", order.shop_id.0),
        Message::ReservationCheck { token } => format!("s{}", token.shop_id.0),
        Message::UnpaidTimeout { order_no } | Message::Charge { order_no } => format!("o{order_no}"),
    }
}

/// A delivery's receipt: its flow topic, partition, offset and the partition's assignment epoch.
fn receipt_of(topic: Topic, partition: i32, offset: i64, epoch: u64) -> Vec<u8> {
    let index = Topic::ALL.iter().position(|t| *t == topic).unwrap_or(0);
    let mut receipt = vec![u8::try_from(index).unwrap_or(0)];
    receipt.extend_from_slice(&partition.to_be_bytes());
    receipt.extend_from_slice(&offset.to_be_bytes());
    receipt.extend_from_slice(&epoch.to_be_bytes());
    receipt
}

fn parse_receipt(receipt: &[u8]) -> Option<(Topic, i32, i64, u64)> {
    let (&index, rest) = receipt.split_first()?;
    let (partition, rest) = rest.split_at_checked(4)?;
    let (offset, epoch) = rest.split_at_checked(8)?;
    Some((
        *Topic::ALL.get(usize::from(index))?,
        i32::from_be_bytes(partition.try_into().ok()?),
        i64::from_be_bytes(offset.try_into().ok()?),
        u64::from_be_bytes(epoch.try_into().ok()?),
    ))
}

/// What a consumer knows of one partition it was assigned.
#[derive(Debug)]
struct Part {
    /// Which assignment of the partition this is: receipts of an earlier one are stale.
    epoch: u64,
    /// Offsets taken from the broker and not settled yet, with their message and retries while they are
    /// this process's to hand out, ack, retry or dead-letter (`None` while a retry or a dead letter of it
    /// is being published).
    open: BTreeMap<i64, Option<Held>>,
    /// The offset after the highest one seen.
    next: i64,
    /// The highest offset a previous owner noted it had handed out: at or below it, a redelivery.
    noted_before: i64,
    /// What was last committed: (offset, note).
    committed: Option<(i64, i64)>,
}

impl Part {
    /// The offset to commit: the first not settled.
    fn committable(&self) -> Option<i64> {
        self.open.first_key_value().map(|(offset, _)| *offset).or((self.next >= 0).then_some(self.next))
    }
}

/// A delivery this process holds: what it needs to move it on, or to hand it out again.
#[derive(Debug, Clone)]
struct Held {
    message: Message,
    retries: u32,
    attempt: u32,
    due_ms: u64,
}

type Parts = Arc<Mutex<HashMap<i32, Part>>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A flow topic's consumer context: follows the partitions assigned to this process.
struct Tracker {
    name: String,
    parts: Parts,
    epochs: Arc<AtomicU64>,
}

impl ClientContext for Tracker {}

impl ConsumerContext for Tracker {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            // What was settled is committed before another takes the partitions, so it does not redo it.
            let list = commit_list(&self.name, &mut lock(&self.parts), partitions_in(revoked, &self.name));
            if list.count() > 0
                && let Err(error) = consumer.commit(&list, CommitMode::Sync)
            {
                tracing::debug!(%error, topic = %self.name, "commit before a rebalance");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => {
                let partitions = partitions_in(assigned, &self.name);
                let notes = previous_notes(consumer, &self.name, &partitions);
                let mut parts = lock(&self.parts);
                for partition in partitions {
                    let epoch = self.epochs.fetch_add(1, Ordering::SeqCst) + 1;
                    let noted_before = notes.get(&partition).copied().unwrap_or(-1);
                    parts.insert(
                        partition,
                        Part { epoch, open: BTreeMap::new(), next: -1, noted_before, committed: None },
                    );
                }
            }
            Rebalance::Revoke(revoked) => {
                let mut parts = lock(&self.parts);
                for partition in partitions_in(revoked, &self.name) {
                    parts.remove(&partition);
                }
            }
            Rebalance::Error(error) => tracing::warn!(%error, topic = %self.name, "Kafka rebalance failed"),
        }
    }
}

fn partitions_in(list: &TopicPartitionList, name: &str) -> Vec<i32> {
    list.elements_for_topic(name).iter().map(|e| e.partition()).collect()
}

/// The notes (highest offset handed out) the partitions' previous owners committed.
fn previous_notes<C: ConsumerContext>(consumer: &BaseConsumer<C>, name: &str, partitions: &[i32]) -> HashMap<i32, i64> {
    let mut list = TopicPartitionList::new();
    for &partition in partitions {
        list.add_partition(name, partition);
    }
    match consumer.committed_offsets(list, Duration::from_secs(5)) {
        Ok(committed) => committed
            .elements_for_topic(name)
            .iter()
            .filter_map(|e| Some((e.partition(), e.metadata().parse::<i64>().ok()?)))
            .collect(),
        Err(error) => {
            tracing::warn!(%error, topic = name, "reading the previous owners' notes; redeliveries not counted");
            HashMap::new()
        }
    }
}

/// The offsets to commit for `partitions`, each with its note, where they changed since the last commit.
fn commit_list(
    name: &str,
    parts: &mut HashMap<i32, Part>,
    partitions: impl IntoIterator<Item = i32>,
) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for partition in partitions {
        let Some(part) = parts.get_mut(&partition) else { continue };
        let Some(offset) = part.committable() else { continue };
        let note = part.next - 1;
        if part.committed == Some((offset, note)) {
            continue;
        }
        if list.add_partition_offset(name, partition, Offset::Offset(offset)).is_err() {
            continue;
        }
        if let Some(mut element) = list.find_partition(name, partition) {
            element.set_metadata(note.to_string());
        }
        part.committed = Some((offset, note));
    }
    list
}

/// A partition of a topic, by name.
type PartitionKey = (String, i32);

/// Where the consumer's group stands on each partition of `list`: its committed offset (the low watermark
/// when it has none, or one below it) and the high watermark. Blocking: broker round trips.
fn positions<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    list: TopicPartitionList,
) -> KafkaResult<Vec<(PartitionKey, i64, i64)>> {
    let timeout = Duration::from_secs(5);
    let committed = consumer.committed_offsets(list, timeout)?;
    let mut positions = Vec::new();
    for element in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(element.topic(), element.partition(), timeout)?;
        let at = match element.offset() {
            Offset::Offset(offset) => offset.max(low),
            _ => low,
        };
        positions.push(((element.topic().to_owned(), element.partition()), at, high));
    }
    Ok(positions)
}

/// Watches a group's partitions that another member holds: one whose committed offset has stayed put
/// with records behind it for longer than it may (`patience_ms` plus how long its head may be held) is
/// owned by nobody working — a broker whose coordinator kept an assignment to a member it had already
/// dropped (seen with tansu 0.6 when a member expired while the group was forming). The consumer then
/// leaves and joins again, which makes the group rebalance among the members alive. On a healthy broker it
/// never fires: a member that stops working loses its partitions at its session timeout.
#[derive(Debug, Default)]
struct Watch {
    /// Per partition not ours: its committed offset when last seen to change, and when.
    seen: HashMap<(String, i32), (i64, u64)>,
}

/// How often a consumer looks at the partitions others hold.
const WATCH_EVERY_MS: u64 = 5_000;
/// How long a partition with records may keep its committed offset before it is taken as stranded.
const STRANDED_AFTER_MS: u64 = 20_000;

impl Watch {
    /// Whether a partition of `topics` (name, partitions, longest hold of its head in ms) held by another
    /// member looks stranded at `now_ms`. Blocking: broker round trips.
    fn stranded<C: ConsumerContext, K: Consumer<C>>(
        &mut self,
        consumer: &K,
        topics: &[(String, i32, u64)],
        now_ms: u64,
    ) -> KafkaResult<bool> {
        let mine: HashSet<(String, i32)> =
            consumer.assignment()?.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
        let mut list = TopicPartitionList::new();
        for (name, partitions, _) in topics {
            for partition in 0..*partitions {
                if !mine.contains(&(name.clone(), partition)) {
                    list.add_partition(name, partition);
                }
            }
        }
        if list.count() == 0 {
            self.seen.clear();
            return Ok(false);
        }
        let mut stranded = false;
        let mut seen = HashMap::new();
        for (key, at, high) in positions(consumer, list)? {
            let since_ms = match self.seen.get(&key) {
                Some(&(before, since_ms)) if before == at => since_ms,
                _ => now_ms,
            };
            let hold_ms = topics.iter().find(|(name, _, _)| *name == key.0).map_or(0, |(_, _, hold)| *hold);
            if at < high && now_ms.saturating_sub(since_ms) > STRANDED_AFTER_MS + hold_ms {
                tracing::warn!(topic = %key.0, partition = key.1, committed = at, high, "a partition's committed offset has not moved with records behind it; rejoining the group so it rebalances");
                stranded = true;
            }
            seen.insert(key, (at, since_ms));
        }
        self.seen = if stranded { HashMap::new() } else { seen };
        Ok(stranded)
    }
}

/// Leaves the group and joins it again: the group rebalances among the members alive.
fn rejoin<C: ConsumerContext, K: Consumer<C>>(consumer: &K, topics: &[&str]) {
    consumer.unsubscribe();
    if let Err(error) = consumer.subscribe(topics) {
        tracing::warn!(%error, "joining the group again");
    }
}

/// One flow topic's consumer, in its group.
struct Work {
    topic: Topic,
    name: String,
    consumer: StreamConsumer<Tracker>,
    parts: Parts,
    /// Deliveries taken from the consumer but not handed out yet (beyond a `receive`'s `max`); the lock
    /// also makes one `receive` at a time take from the consumer.
    ready: tokio::sync::Mutex<VecDeque<(Delivery, i32, u64)>>,
    /// Records taken whose move aside (dead letter, another round) failed, to try again.
    aside: Mutex<Vec<(i32, i64, u64, Aside)>>,
    /// Partitions whose committable offset or note may have changed since the last commit.
    dirty: Mutex<HashSet<i32>>,
    /// The partitions other members hold (see [`Watch`]).
    watch: Mutex<Watch>,
    partitions: i32,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Work {
    /// Settles offsets of partitions; what became committable is committed by the next flush.
    fn settle(&self, settled: &[(i32, i64, u64)]) {
        let mut touched = Vec::new();
        {
            let mut parts = lock(&self.parts);
            for &(partition, offset, epoch) in settled {
                if let Some(part) = parts.get_mut(&partition).filter(|p| p.epoch == epoch)
                    && part.open.remove(&offset).is_some()
                {
                    touched.push(partition);
                }
            }
        }
        lock(&self.dirty).extend(touched);
    }

    /// Commits what changed since the last flush (asynchronously: a commit lost means redeliveries,
    /// which the flow makes no-ops). Run every [`COMMIT_EVERY_MS`]: one commit for every settle and
    /// receive in between, instead of one each — a commit is a write on the broker.
    fn flush(&self) {
        let dirty = std::mem::take(&mut *lock(&self.dirty));
        if dirty.is_empty() {
            return;
        }
        let list = commit_list(&self.name, &mut lock(&self.parts), dirty);
        if list.count() == 0 {
            return;
        }
        if let Err(error) = self.consumer.commit(&list, CommitMode::Async) {
            tracing::debug!(%error, topic = %self.name, "commit (the partitions may have moved)");
        }
    }

    /// Flushes every [`COMMIT_EVERY_MS`], and watches the partitions others hold every
    /// [`WATCH_EVERY_MS`], for as long as the consumer exists.
    fn flush_every(work: &Arc<Work>, clock: Arc<dyn Clock>) {
        let work = Arc::downgrade(work);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(COMMIT_EVERY_MS));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_watch_ms = clock.now_ms();
            loop {
                every.tick().await;
                let Some(work) = work.upgrade() else { return };
                work.flush();
                let now_ms = clock.now_ms();
                if now_ms.saturating_sub(last_watch_ms) >= WATCH_EVERY_MS {
                    last_watch_ms = now_ms;
                    let watched = Arc::clone(&work);
                    let _ = tokio::task::spawn_blocking(move || watched.watch(now_ms)).await;
                }
            }
        });
    }

    /// Rejoins the group when a partition another member holds looks stranded.
    fn watch(&self, now_ms: u64) {
        let topics = [(self.name.clone(), self.partitions, 0)];
        match lock(&self.watch).stranded(&self.consumer, &topics, now_ms) {
            Ok(true) => rejoin(&self.consumer, &[&self.name]),
            Ok(false) => {}
            Err(error) => tracing::debug!(%error, topic = %self.name, "watching the group's partitions"),
        }
    }

    /// Takes a delivery this process holds out of its partition's open offsets to move it on (retry,
    /// dead letter): `None` if it is settled already, being moved, or of a partition this process lost.
    fn take(&self, partition: i32, offset: i64, epoch: u64) -> Option<Held> {
        let mut parts = lock(&self.parts);
        let part = parts.get_mut(&partition).filter(|p| p.epoch == epoch)?;
        part.open.get_mut(&offset)?.take()
    }

    /// A delivery whose move failed is this process's again, handed out by the next `receive`.
    async fn give_back(&self, partition: i32, offset: i64, epoch: u64, held: Held) {
        let mut ready = self.ready.lock().await;
        let mut parts = lock(&self.parts);
        let Some(slot) = parts.get_mut(&partition).filter(|p| p.epoch == epoch).and_then(|p| p.open.get_mut(&offset))
        else {
            return;
        };
        let receipt = receipt_of(self.topic, partition, offset, epoch);
        ready.push_front((
            Delivery { receipt, message: held.message.clone(), attempt: held.attempt, due_ms: held.due_ms },
            partition,
            epoch,
        ));
        *slot = Some(held);
    }
}

pub struct KafkaBus {
    core: Arc<Core>,
    mover: Option<tokio::task::AbortHandle>,
}

struct Core {
    config: KafkaBusConfig,
    clock: Arc<dyn Clock>,
    producer: Mutex<Producer>,
    /// One consumer per flow topic, started by the first `receive` of that topic.
    work: tokio::sync::Mutex<HashMap<Topic, Arc<Work>>>,
    /// Assignment epochs, across topics: a receipt names the assignment it was taken under.
    epochs: Arc<AtomicU64>,
    /// Clients that read the groups' committed offsets for `depth`, one per group, made at first use.
    lookups: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    /// Whether this process's mover of delayed messages has partitions.
    mover_assigned: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus").field("namespace", &self.core.config.namespace).finish_non_exhaustive()
    }
}

impl Drop for KafkaBus {
    fn drop(&mut self) {
        if let Some(mover) = &self.mover {
            mover.abort();
        }
    }
}

impl KafkaBus {
    /// Creates the topics (unless configured not to), the producer, and starts this process's mover of
    /// delayed messages (when `move_delayed`).
    pub async fn connect(config: KafkaBusConfig, clock: Arc<dyn Clock>) -> PortResult<KafkaBus> {
        assert!(!config.delay_tiers_ms.is_empty(), "at least one delay tier");
        let producer = config.producer()?;
        if config.create_topics {
            create_topics(&config).await?;
        }
        wait_for_topics(&producer, &config).await?;
        let since_ms = clock.now_ms();
        let core = Arc::new(Core {
            config,
            clock,
            producer: Mutex::new(Producer { current: producer, generation: 0, since_ms }),
            work: tokio::sync::Mutex::new(HashMap::new()),
            epochs: Arc::new(AtomicU64::new(0)),
            lookups: Mutex::new(HashMap::new()),
            mover_assigned: Arc::default(),
        });
        let mover = if core.config.move_delayed { Some(Mover::start(Arc::clone(&core))?) } else { None };
        Ok(KafkaBus { core, mover })
    }
}

/// Creates every topic the bus uses; those that exist are left as they are.
async fn create_topics(config: &KafkaBusConfig) -> PortResult<()> {
    let admin: AdminClient<DefaultClientContext> = config.client().create().map_err(unavailable)?;
    let names = config.topics();
    let min_insync = config.replication.clamp(1, 2).to_string();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(config.replication))
                .set("min.insync.replicas", &min_insync)
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &options).await.map_err(unavailable)? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(BusError::Setup(format!("creating topic {name}: {code}")).into()),
        }
    }
    Ok(())
}

/// Waits (10 s at most) until the brokers' metadata lists every topic with its partitions.
async fn wait_for_topics(producer: &FutureProducer, config: &KafkaBusConfig) -> PortResult<()> {
    let names: HashSet<String> = config.topics().into_iter().map(|(name, _)| name).collect();
    let client = producer.client();
    let mut missing = names.len();
    for _ in 0..100 {
        let metadata =
            tokio::task::block_in_place(|| client.fetch_metadata(None, Duration::from_secs(5))).map_err(unavailable)?;
        missing = names
            .iter()
            .filter(|name| !metadata.topics().iter().any(|t| t.name() == name.as_str() && !t.partitions().is_empty()))
            .count();
        if missing == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(BusError::Setup(format!("{missing} of the bus's topics do not exist on the brokers")).into())
}

impl Core {
    /// Where a message due at `due_ms` goes now: its topic when due, else the delay topic of the largest
    /// tier that fits (the smallest when none does), and when it may leave that tier.
    fn route(&self, topic: Topic, due_ms: u64) -> (String, u64) {
        let now_ms = self.clock.now_ms();
        if due_ms <= now_ms {
            return (self.config.work_topic(topic), 0);
        }
        let remaining_ms = due_ms - now_ms;
        let tiers = &self.config.delay_tiers_ms;
        let tier = tiers.iter().rev().find(|tier| **tier <= remaining_ms).or(tiers.first()).copied().unwrap_or(0);
        (self.config.delay_topic(topic, tier), due_ms.min(now_ms + tier))
    }

    /// Sends records and waits for each acknowledgement: one result per record.
    async fn send_each(&self, records: Vec<(String, String, Vec<u8>)>) -> Vec<PortResult<()>> {
        let (producer, generation) = {
            let slot = lock(&self.producer);
            (slot.current.clone(), slot.generation)
        };
        let sends = records.iter().map(|(topic, key, payload)| {
            let record = FutureRecord::to(topic).key(key).payload(payload);
            producer.send(record, Duration::from_millis(self.config.delivery_timeout_ms))
        });
        let sent = futures_util::future::join_all(sends).await;
        let mut results = Vec::with_capacity(sent.len());
        let mut wedged = producer.client().fatal_error().is_some();
        for result in sent {
            results.push(result.map(|_| ()).map_err(|(error, _)| {
                wedged |= wedges_the_producer(&error);
                unavailable(error)
            }));
        }
        if wedged {
            self.renew_producer(generation);
        }
        results
    }

    /// Replaces the producer of `generation` (unless it was replaced already, or less than a second
    /// ago) by a new one, which starts with a new producer id. The old one is dropped off the runtime
    /// once the sends still on it have had their time.
    fn renew_producer(&self, generation: u64) {
        let now_ms = self.clock.now_ms();
        let mut slot = lock(&self.producer);
        if slot.generation != generation || now_ms.saturating_sub(slot.since_ms) < PRODUCER_RENEW_MIN_MS {
            return;
        }
        let fresh = match self.config.producer() {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::warn!(%error, "a new Kafka producer could not be made; keeping the old one");
                return;
            }
        };
        let old = std::mem::replace(&mut slot.current, fresh);
        slot.generation += 1;
        slot.since_ms = now_ms;
        tracing::warn!(generation = slot.generation, "Kafka producer replaced: it could no longer publish");
        let linger = Duration::from_millis(self.config.delivery_timeout_ms + 1_000);
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(linger);
            drop(old);
        });
    }

    /// Publishes `record` where it is due next.
    async fn forward(&self, topic: Topic, mut record: Record) -> PortResult<()> {
        let (to, leave_ms) = self.route(topic, record.due_ms);
        record.leave_ms = leave_ms;
        let key = key_of(&record.message);
        let payload = encode(&record)?;
        self.send_each(vec![(to, key, payload)]).await.into_iter().collect()
    }

    async fn dead(&self, topic: Topic, message: Option<Message>, reason: String) -> PortResult<()> {
        let key = message.as_ref().map_or_else(|| "undecodable".to_owned(), key_of);
        let payload = encode(&DeadLetter { topic, message, reason, at_ms: self.clock.now_ms() })?;
        self.send_each(vec![(self.config.dead_topic(), key, payload)]).await.into_iter().collect()
    }

    /// The consumer of `topic`, joined to its group at first use.
    async fn work(&self, topic: Topic) -> PortResult<Arc<Work>> {
        let mut work = self.work.lock().await;
        if let Some(existing) = work.get(&topic) {
            return Ok(Arc::clone(existing));
        }
        let name = self.config.work_topic(topic);
        let parts: Parts = Arc::default();
        let tracker = Tracker { name: name.clone(), parts: Arc::clone(&parts), epochs: Arc::clone(&self.epochs) };
        let consumer: StreamConsumer<Tracker> =
            self.config.consumer(&name, WORK_FETCH_WAIT_MS).create_with_context(tracker).map_err(unavailable)?;
        consumer.subscribe(&[&name]).map_err(unavailable)?;
        let created = Arc::new(Work {
            topic,
            name,
            consumer,
            parts,
            ready: tokio::sync::Mutex::new(VecDeque::new()),
            aside: Mutex::new(Vec::new()),
            dirty: Mutex::new(HashSet::new()),
            watch: Mutex::new(Watch::default()),
            partitions: self.config.partitions,
        });
        Work::flush_every(&created, Arc::clone(&self.clock));
        work.insert(topic, Arc::clone(&created));
        Ok(created)
    }

    async fn existing_work(&self, topic: Topic) -> Option<Arc<Work>> {
        self.work.lock().await.get(&topic).cloned()
    }

    /// A client reading `group`'s committed offsets.
    fn lookup(&self, group: &str) -> PortResult<Arc<BaseConsumer>> {
        let mut lookups = lock(&self.lookups);
        if let Some(existing) = lookups.get(group) {
            return Ok(Arc::clone(existing));
        }
        let consumer: BaseConsumer = self.config.consumer(group, WORK_FETCH_WAIT_MS).create().map_err(unavailable)?;
        let consumer = Arc::new(consumer);
        lookups.insert(group.to_owned(), Arc::clone(&consumer));
        Ok(consumer)
    }

    /// Records of `topics` not yet committed by `group`.
    fn lag(&self, group: &str, topics: &[String]) -> PortResult<usize> {
        let lookup = self.lookup(group)?;
        let mut list = TopicPartitionList::new();
        for topic in topics {
            for partition in 0..self.config.partitions_of(topic) {
                list.add_partition(topic, partition);
            }
        }
        let lag: i64 = positions(lookup.as_ref(), list)
            .map_err(unavailable)?
            .into_iter()
            .map(|(_, at, high)| (high - at).max(0))
            .sum();
        Ok(usize::try_from(lag).unwrap_or(0))
    }

    fn count_all(&self, topic: &str) -> PortResult<usize> {
        let lookup = self.lookup(&self.config.delay_group())?;
        let mut total = 0i64;
        for partition in 0..self.config.partitions_of(topic) {
            let (low, high) = lookup.fetch_watermarks(topic, partition, Duration::from_secs(5)).map_err(unavailable)?;
            total += (high - low).max(0);
        }
        Ok(usize::try_from(total).unwrap_or(0))
    }
}

impl Core {
    /// Takes one record from `work`'s consumer, waiting up to `wait` when given: a delivery to hand out,
    /// or `None` when nothing came (or what came was moved on: undecodable, or early after a clock step).
    async fn take_one(&self, work: &Work, wait: Option<Duration>) -> PortResult<Option<(Delivery, i32, u64)>> {
        let next = match wait {
            None => match work.consumer.recv().now_or_never() {
                Some(next) => next,
                None => return Ok(None),
            },
            Some(wait) => match tokio::time::timeout(wait, work.consumer.recv()).await {
                Ok(next) => next,
                Err(_) => return Ok(None),
            },
        };
        let (partition, offset, payload) = match next {
            Ok(message) => (message.partition(), message.offset(), message.payload().map(<[u8]>::to_vec)),
            Err(error) => return Err(unavailable(error)),
        };
        let decoded: Option<Record> = payload.as_deref().and_then(|p| serde_json::from_slice(p).ok());
        let (epoch, redelivered) = {
            let mut parts = lock(&work.parts);
            let part = parts.entry(partition).or_insert_with(|| Part {
                epoch: self.epochs.fetch_add(1, Ordering::SeqCst) + 1,
                open: BTreeMap::new(),
                next: -1,
                noted_before: -1,
                committed: None,
            });
            part.next = part.next.max(offset + 1);
            let redelivered = offset <= part.noted_before;
            let held = decoded.as_ref().map(|record| Held {
                message: record.message.clone(),
                retries: record.retries,
                attempt: 1 + record.retries + u32::from(redelivered),
                due_ms: record.due_ms,
            });
            part.open.insert(offset, held);
            (part.epoch, redelivered)
        };
        let Some(record) = decoded else {
            self.move_aside(work, partition, offset, epoch, Aside::Dead("undecodable record".to_owned())).await;
            return Ok(None);
        };
        if record.due_ms > self.clock.now_ms() {
            // Early (a clock step): round again, then settle this copy.
            self.move_aside(work, partition, offset, epoch, Aside::Early(record)).await;
            return Ok(None);
        }
        let attempt = 1 + record.retries + u32::from(redelivered);
        let receipt = receipt_of(work.topic, partition, offset, epoch);
        let due_ms = record.due_ms;
        Ok(Some((Delivery { receipt, message: record.message, attempt, due_ms }, partition, epoch)))
    }
}

impl Core {
    /// Moves a record that is not to be handed out on (a dead letter, or round the tiers again), then
    /// settles it; if that fails, it is kept and tried again by the next `receive`.
    async fn move_aside(&self, work: &Work, partition: i32, offset: i64, epoch: u64, aside: Aside) {
        let moved = match &aside {
            Aside::Dead(reason) => self.dead(work.topic, None, reason.clone()).await,
            Aside::Early(record) => self.forward(work.topic, record.clone()).await,
        };
        match moved {
            Ok(()) => work.settle(&[(partition, offset, epoch)]),
            Err(error) => {
                tracing::warn!(%error, topic = %work.name, "moving a record aside; tried again later");
                lock(&work.aside).push((partition, offset, epoch, aside));
            }
        }
    }

    /// Tries again the records whose move aside failed.
    async fn retry_asides(&self, work: &Work) {
        let asides = std::mem::take(&mut *lock(&work.aside));
        for (partition, offset, epoch, aside) in asides {
            if lock(&work.parts).get(&partition).is_some_and(|p| p.epoch == epoch) {
                self.move_aside(work, partition, offset, epoch, aside).await;
            }
        }
    }
}

/// A record taken but not handed out, to move on.
#[derive(Debug)]
enum Aside {
    Dead(String),
    Early(Record),
}

impl KafkaBus {
    /// Joins the consumer groups of `topics` (and waits for this process's mover of delayed messages to
    /// have its partitions): a first join waits for the broker's initial rebalance delay (3 s by
    /// default). Records that arrive meanwhile are kept for `receive`. Bounded by `within`.
    pub async fn join(&self, topics: &[Topic], within: Duration) -> PortResult<()> {
        let until = tokio::time::Instant::now() + within;
        let mut works = Vec::new();
        for &topic in topics {
            works.push(self.core.work(topic).await?);
        }
        // Every group joins at once: a consumer's assignment arrives while it is polled.
        let joins = works.iter().map(|work| async move {
            while !work.consumer.assignment().is_ok_and(|a| a.count() > 0) {
                if tokio::time::Instant::now() >= until {
                    return Err(BusError::Setup(format!("no partitions of {} assigned", work.name)).into());
                }
                let mut ready = work.ready.lock().await;
                if let Some(taken) = self.core.take_one(work, Some(Duration::from_millis(100))).await? {
                    ready.push_back(taken);
                }
            }
            PortResult::Ok(())
        });
        futures_util::future::try_join_all(joins).await?;
        while self.mover.is_some() && !self.core.mover_assigned.load(Ordering::SeqCst) {
            if tokio::time::Instant::now() >= until {
                return Err(BusError::Setup("the delay mover has no partitions".to_owned()).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

impl KafkaBus {
    /// Moves a delivery this process holds on — `send` publishes its next form — then settles it; if the
    /// publish fails, the delivery is this process's again (handed out by the next `receive`). A receipt
    /// of a delivery settled already, or of a partition this process lost, is skipped.
    async fn move_held<'a, F, Fut>(&'a self, receipt: &[u8], send: F) -> PortResult<()>
    where
        F: FnOnce(&'a Core, Topic, &Held) -> Fut,
        Fut: std::future::Future<Output = PortResult<()>> + 'a,
    {
        let Some((topic, partition, offset, epoch)) = parse_receipt(receipt) else { return Ok(()) };
        let Some(work) = self.core.existing_work(topic).await else { return Ok(()) };
        let Some(held) = work.take(partition, offset, epoch) else { return Ok(()) };
        match send(&self.core, topic, &held).await {
            Ok(()) => {
                work.settle(&[(partition, offset, epoch)]);
                Ok(())
            }
            Err(error) => {
                work.give_back(partition, offset, epoch, held).await;
                Err(error)
            }
        }
    }
}

#[async_trait]
impl Bus for KafkaBus {
    async fn publish(&self, messages: Vec<Outgoing>) -> PortResult<()> {
        let mut records = Vec::with_capacity(messages.len());
        for outgoing in messages {
            let (to, leave_ms) = self.core.route(outgoing.message.topic(), outgoing.deliver_at_ms);
            let key = key_of(&outgoing.message);
            let record = Record { message: outgoing.message, retries: 0, due_ms: outgoing.deliver_at_ms, leave_ms };
            records.push((to, key, encode(&record)?));
        }
        self.core.send_each(records).await.into_iter().collect()
    }

    async fn receive(&self, topic: Topic, max: usize) -> PortResult<Vec<Delivery>> {
        let work = self.core.work(topic).await?;
        let mut ready = work.ready.lock().await;
        self.core.retry_asides(&work).await;
        let mut deliveries = Vec::new();
        while deliveries.len() < max {
            let Some((delivery, partition, epoch)) = ready.pop_front() else { break };
            if lock(&work.parts).get(&partition).is_some_and(|p| p.epoch == epoch) {
                deliveries.push(delivery);
            }
        }
        let wait = Duration::from_millis(self.core.config.receive_wait_ms);
        let mut waited = false;
        let mut noted = HashSet::new();
        while deliveries.len() < max {
            let taken = match self.core.take_one(&work, None).await {
                Ok(Some(taken)) => Ok(Some(taken)),
                Ok(None) if deliveries.is_empty() && !waited => {
                    waited = true;
                    self.core.take_one(&work, Some(wait)).await
                }
                Ok(None) => break,
                Err(error) => Err(error),
            };
            // What was taken before an error is handed out (it is open already: dropped here, it would
            // hold its partition's commits back for as long as the process lives).
            let taken = match taken {
                Ok(taken) => taken,
                Err(error) if deliveries.is_empty() => return Err(error),
                Err(error) => {
                    tracing::debug!(%error, topic = %work.name, "receive ends early");
                    break;
                }
            };
            if let Some((delivery, partition, _)) = taken {
                noted.insert(partition);
                deliveries.push(delivery);
            }
        }
        drop(ready);
        // Notes what was handed out (with the next flush), so a consumer taking a partition over counts
        // its redeliveries.
        lock(&work.dirty).extend(noted);
        Ok(deliveries)
    }

    async fn ack(&self, receipts: &[Vec<u8>]) -> PortResult<()> {
        let mut by_topic: HashMap<Topic, Vec<(i32, i64, u64)>> = HashMap::new();
        for (topic, partition, offset, epoch) in receipts.iter().filter_map(|r| parse_receipt(r)) {
            by_topic.entry(topic).or_default().push((partition, offset, epoch));
        }
        for (topic, settled) in by_topic {
            if let Some(work) = self.core.existing_work(topic).await {
                work.settle(&settled);
            }
        }
        Ok(())
    }

    async fn retry(&self, receipt: &[u8], at_ms: u64) -> PortResult<()> {
        self.move_held(receipt, |core, topic, held| {
            let again = Record { message: held.message.clone(), retries: held.retries + 1, due_ms: at_ms, leave_ms: 0 };
            async move { core.forward(topic, again).await }
        })
        .await
    }

    async fn dead_letter(&self, receipt: &[u8], reason: &str) -> PortResult<()> {
        self.move_held(receipt, |core, topic, held| {
            let message = Some(held.message.clone());
            async move { core.dead(topic, message, reason.to_owned()).await }
        })
        .await
    }

    async fn depth(&self) -> PortResult<BusDepth> {
        let core = Arc::clone(&self.core);
        tokio::task::spawn_blocking(move || {
            let config = &core.config;
            let mut queued = Vec::new();
            for topic in Topic::ALL {
                let delays: Vec<String> =
                    config.delay_tiers_ms.iter().map(|&tier| config.delay_topic(topic, tier)).collect();
                let waiting = core.lag(&config.work_topic(topic), &[config.work_topic(topic)])?
                    + core.lag(&config.delay_group(), &delays)?;
                queued.push((topic, waiting));
            }
            Ok(BusDepth { queued, dead_letters: core.count_all(&config.dead_topic())? })
        })
        .await
        .map_err(|error| PortError::failed("kafka", BusError::Setup(format!("depth task: {error}"))))?
    }
}

/// The mover's consumer context: notes partitions taken away (their held records are dropped: the new
/// owner reads them again from the committed offset) and that it has partitions.
struct MoverContext {
    revoked: Arc<Mutex<Vec<(String, i32)>>>,
    assigned: Arc<std::sync::atomic::AtomicBool>,
}

impl ClientContext for MoverContext {}

impl ConsumerContext for MoverContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => {
                // A partition paused under an earlier assignment starts fetching again.
                if let Err(error) = consumer.resume(assigned) {
                    tracing::debug!(%error, "resuming delay partitions");
                }
                self.assigned.store(assigned.count() > 0, Ordering::SeqCst);
            }
            Rebalance::Revoke(revoked) => {
                lock(&self.revoked).extend(revoked.elements().iter().map(|e| (e.topic().to_owned(), e.partition())))
            }
            Rebalance::Error(error) => tracing::warn!(%error, "Kafka rebalance of the delay mover failed"),
        }
    }
}

/// A delay record held by the mover: its offset, its flow topic, and the record (or why it cannot be
/// read).
type Waiting = (i64, Topic, Result<Record, String>);

/// Moves delayed messages on: holds each delay partition's head until it may leave (pausing only that
/// partition), then publishes it where it is due next and commits.
struct Mover {
    core: Arc<Core>,
    consumer: Arc<StreamConsumer<MoverContext>>,
    watch: Arc<Mutex<Watch>>,
    last_watch_ms: u64,
    revoked: Arc<Mutex<Vec<(String, i32)>>>,
    topics: HashMap<String, Topic>,
    held: HashMap<(String, i32), VecDeque<Waiting>>,
    paused: HashSet<(String, i32)>,
}

impl Mover {
    fn start(core: Arc<Core>) -> PortResult<tokio::task::AbortHandle> {
        let revoked = Arc::default();
        let context = MoverContext { revoked: Arc::clone(&revoked), assigned: Arc::clone(&core.mover_assigned) };
        let consumer: StreamConsumer<MoverContext> = core
            .config
            .consumer(&core.config.delay_group(), MOVER_FETCH_WAIT_MS)
            .create_with_context(context)
            .map_err(unavailable)?;
        let mut topics = HashMap::new();
        for topic in Topic::ALL {
            for &tier in &core.config.delay_tiers_ms {
                topics.insert(core.config.delay_topic(topic, tier), topic);
            }
        }
        let names: Vec<&str> = topics.keys().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(unavailable)?;
        let last_watch_ms = core.clock.now_ms();
        let mover = Mover {
            core,
            consumer: Arc::new(consumer),
            watch: Arc::default(),
            last_watch_ms,
            revoked,
            topics,
            held: HashMap::new(),
            paused: HashSet::new(),
        };
        Ok(tokio::spawn(mover.run()).abort_handle())
    }

    async fn run(mut self) {
        loop {
            for key in lock(&self.revoked).drain(..) {
                self.held.remove(&key);
                self.paused.remove(&key);
            }
            let now_ms = self.core.clock.now_ms();
            if now_ms.saturating_sub(self.last_watch_ms) >= WATCH_EVERY_MS {
                self.last_watch_ms = now_ms;
                self.watch(now_ms).await;
            }
            if !self.move_on(now_ms).await {
                // A broker refused: what could not leave is held again; wait a little before the next try.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            self.pause_and_resume();
            let next_ms = self
                .held
                .values()
                .filter_map(|queue| queue.front())
                .map(|(_, _, record)| record.as_ref().map_or(0, |r| r.leave_ms))
                .min();
            let sleep_ms = next_ms.map_or(1_000, |at_ms| at_ms.saturating_sub(now_ms).clamp(1, 1_000));
            let consumer = Arc::clone(&self.consumer);
            tokio::select! {
                next = consumer.recv() => match next {
                    Ok(message) => {
                        self.hold(&message);
                        // And what else has arrived, so that a backlog moves on as one batch of
                        // publishes per round, not one record per acknowledgement.
                        for _ in 1..MOVE_BATCH_MAX {
                            match consumer.recv().now_or_never() {
                                Some(Ok(message)) => self.hold(&message),
                                Some(Err(_)) | None => break,
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the delay mover could not read from Kafka");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                () = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
            }
        }
    }

    /// A delay record fetched: held behind its partition's earlier ones until it may leave.
    fn hold(&mut self, message: &rdkafka::message::BorrowedMessage<'_>) {
        let name = message.topic();
        let Some(&topic) = self.topics.get(name) else { return };
        let record = message
            .payload()
            .ok_or_else(|| "empty record".to_owned())
            .and_then(|p| serde_json::from_slice::<Record>(p).map_err(|e| format!("undecodable: {e}")));
        let key = (name.to_owned(), message.partition());
        self.held.entry(key).or_default().push_back((message.offset(), topic, record));
    }

    /// Rejoins the mover's group when a delay partition another member holds looks stranded (a head may
    /// wait as long as its tier before it leaves).
    async fn watch(&self, now_ms: u64) {
        let topics: Vec<(String, i32, u64)> = self
            .topics
            .keys()
            .map(|name| {
                let tier_ms = name.rsplit('.').next().and_then(|t| t.parse().ok()).unwrap_or(0);
                (name.clone(), self.core.config.delay_partitions, tier_ms)
            })
            .collect();
        let (consumer, watch) = (Arc::clone(&self.consumer), Arc::clone(&self.watch));
        let watched = tokio::task::spawn_blocking(move || {
            let stranded = lock(&watch).stranded(consumer.as_ref(), &topics, now_ms);
            if let Ok(true) = stranded {
                let names: Vec<&str> = topics.iter().map(|(name, _, _)| name.as_str()).collect();
                rejoin(consumer.as_ref(), &names);
            }
            stranded
        })
        .await;
        if let Ok(Err(error)) = watched {
            tracing::debug!(%error, "watching the delay partitions");
        }
    }

    /// Publishes every held record that may leave, then commits each partition up to the first that
    /// could not; those are held again. Whether every one left.
    async fn move_on(&mut self, now_ms: u64) -> bool {
        let mut leaving: Vec<((String, i32), Waiting)> = Vec::new();
        for (key, queue) in &mut self.held {
            while queue.front().is_some_and(|(_, _, record)| record.as_ref().map_or(0, |r| r.leave_ms) <= now_ms) {
                if let Some(waiting) = queue.pop_front() {
                    leaving.push((key.clone(), waiting));
                }
            }
        }
        if leaving.is_empty() {
            return true;
        }
        let core = &self.core;
        let sends = leaving.iter().map(|(_, (_, topic, record))| async move {
            match record {
                Ok(record) => core.forward(*topic, record.clone()).await,
                Err(reason) => core.dead(*topic, None, reason.clone()).await,
            }
        });
        let results = futures_util::future::join_all(sends).await;
        let mut failed: HashSet<(String, i32)> = HashSet::new();
        let mut commit: HashMap<(String, i32), i64> = HashMap::new();
        let mut again: HashMap<(String, i32), Vec<Waiting>> = HashMap::new();
        for ((key, waiting), result) in leaving.into_iter().zip(results) {
            if failed.contains(&key) || result.is_err() {
                if let Err(error) = &result {
                    tracing::warn!(%error, "moving a delayed message on");
                }
                failed.insert(key.clone());
                again.entry(key).or_default().push(waiting);
            } else {
                commit.insert(key, waiting.0 + 1);
            }
        }
        for (key, waiting) in again {
            let queue = self.held.entry(key).or_default();
            for item in waiting.into_iter().rev() {
                queue.push_front(item);
            }
        }
        let mut list = TopicPartitionList::new();
        for ((name, partition), offset) in commit {
            let _ = list.add_partition_offset(&name, partition, Offset::Offset(offset));
        }
        if list.count() > 0
            && let Err(error) = self.consumer.commit(&list, CommitMode::Async)
        {
            tracing::debug!(%error, "committing moved delay records");
        }
        failed.is_empty()
    }

    /// Pauses every partition whose head must wait (records already fetched still arrive and are held
    /// behind it), resumes those with nothing held.
    fn pause_and_resume(&mut self) {
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        for (key, queue) in &self.held {
            if !queue.is_empty() && self.paused.insert(key.clone()) {
                pause.add_partition(&key.0, key.1);
            }
        }
        let held = &self.held;
        self.paused.retain(|key| {
            let keep = held.get(key).is_some_and(|q| !q.is_empty());
            if !keep {
                resume.add_partition(&key.0, key.1);
            }
            keep
        });
        self.held.retain(|_, queue| !queue.is_empty());
        if pause.count() > 0
            && let Err(error) = self.consumer.pause(&pause)
        {
            tracing::debug!(%error, "pausing delay partitions");
        }
        if resume.count() > 0
            && let Err(error) = self.consumer.resume(&resume)
        {
            tracing::debug!(%error, "resuming delay partitions");
        }
    }
}
