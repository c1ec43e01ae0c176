//! [`RabbitBus`]: the `Bus` port on RabbitMQ, the seed's way.
//!
//! - One durable **quorum queue** per topic (`<ns>.<topic>`), fed through the default exchange.
//! - **Publisher confirms**: `publish` returns once the broker confirmed every message (the API answers
//!   only after that).
//! - **Group publishing** ([`orderly_app::group`]): concurrent `publish` calls share one confirm window,
//!   and their messages for the same queue travel as one broker message (an envelope of up to
//!   `envelope_max`): the broker's cost is per message it stores and confirms, so under load it pays once
//!   for many carts. Each call is answered by the confirms of the envelopes its messages are in.
//! - **Envelopes apart on receipt**: each message of an envelope is a delivery of its own, with its own
//!   receipt; the broker message is acked once every one of them is acked, retried or dead-lettered
//!   (a retry or a dead letter is published alone). A consumer that dies before that gets the whole
//!   envelope again: consumers are idempotent per message. `depth` counts broker messages, so an
//!   envelope counts once.
//! - **Manual acks**: a delivery stays unacked (and invisible to others) until the consumer acks,
//!   retries or dead-letters it; if the consumer's connection dies, the broker delivers it again and
//!   the quorum queue counts the redelivery (`x-delivery-count`), which becomes the attempt number.
//! - **Delays without a plugin**: Debian's RabbitMQ has no delayed-message plugin, and a per-message TTL
//!   only expires at the head of a queue, so delays use fixed-TTL tier queues
//!   (`<ns>.<topic>.delay.<ms>`) that dead-letter into the topic's queue. A message carries its due
//!   time; one that arrives early goes round the largest tier that fits again (so it is never
//!   delivered early, and late by at most the smallest tier).
//! - **Dead letters** go to `<ns>.dead` with their topic and reason, for an operator.
//! - **Reconnects**: a call that finds the connection or a channel closed (the broker restarted, the
//!   network dropped) opens a new connection, channels and queue declarations first. Deliveries taken
//!   on the old connection are the broker's again (it requeues unacked messages of a dead connection);
//!   their receipts carry the connection's epoch, so a late ack or retry of one is skipped, never sent
//!   on a channel that does not know its tag (which would close that channel). Opening a connection
//!   is bounded (5 s) and so is a batch's wait for its confirms (10 s): a broker that accepts a
//!   connection but never answers (still starting) fails the call instead of holding it, and every
//!   publish grouped behind it, for ever; a link that stopped confirming is dropped for a new one.
//!
//! `receive` takes from a consumer per topic (`basic.consume` with a bounded prefetch, so the broker
//! streams deliveries instead of answering one `basic.get` per message) what has arrived, up to `max`;
//! when nothing has, it waits for the first delivery up to `receive_wait_ms` (a long poll: an idle worker
//! costs the broker nothing). Deliveries prefetched but not yet taken are not in `depth` (neither are
//! taken ones not yet acked): the broker counts only what it still holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use orderly_app::group::Group;
use orderly_app::model::{DeadLetter, Delivery, Message, Outgoing, Topic};
use orderly_app::ports::{Bus, BusDepth, PortResult};
use orderly_app::{Clock, PortError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone)]
pub struct RabbitBusConfig {
    /// `amqp://user:pass@host:port/vhost`.
    pub url: String,
    /// Prefix of every queue: several systems or test runs can share one broker.
    pub namespace: String,
    /// TTLs of the delay queues, ascending. The smallest bounds how late a delayed message may be.
    pub delay_tiers_ms: Vec<u64>,
    /// Idle queues are deleted after this long (tests); `None` in production.
    pub queue_expires_ms: Option<u64>,
    /// Unacked deliveries the broker sends ahead to a topic's consumer.
    pub prefetch: u16,
    /// How long `receive` waits for a first delivery when none has arrived.
    pub receive_wait_ms: u64,
    /// Messages one envelope carries at most (1: one broker message per message).
    pub envelope_max: usize,
}

impl RabbitBusConfig {
    pub fn new(url: impl Into<String>, namespace: impl Into<String>) -> RabbitBusConfig {
        RabbitBusConfig {
            url: url.into(),
            namespace: namespace.into(),
            delay_tiers_ms: vec![100, 1_000, 10_000, 60_000, 600_000],
            queue_expires_ms: None,
            prefetch: 256,
            receive_wait_ms: 50,
            envelope_max: 128,
        }
    }
}

/// The body of every broker message: the flow's messages for one queue and what the bus needs to know
/// about them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Envelope {
    messages: Vec<Message>,
    /// Deliveries that ended in a retry.
    retries: u32,
    /// The latest due time of its messages: none is delivered early.
    due_ms: u64,
}

/// A broker message taken and not yet acked: its messages still to be settled (`None` once acked,
/// retried or dead-lettered), to ack it when none is left.
struct Taken {
    topic: Topic,
    retries: u32,
    parts: Vec<Option<Message>>,
    open: usize,
}

/// One `publish` call's messages, with their queue and due time.
type Publication = Vec<(String, Message, u64)>;

/// One connection and its channels.
struct Link {
    connection: Connection,
    /// Publisher-confirm channel.
    publisher: Channel,
    /// The channel deliveries are taken and acked on (a delivery tag belongs to its channel).
    consumer: Channel,
    /// Counts the connections this process opened: a receipt names the one its tag belongs to.
    epoch: u64,
    /// Unacked broker messages taken on this connection, by tag, to ack, retry or dead-letter their parts.
    pending: Mutex<HashMap<u64, Taken>>,
    /// Deliveries taken from the broker but not handed out yet (beyond a `receive`'s `max`), per topic.
    ready: Mutex<HashMap<Topic, std::collections::VecDeque<Delivery>>>,
    /// One consumer per topic on `consumer`, started by the first `receive` of that topic.
    consumers: tokio::sync::Mutex<HashMap<Topic, Consumer>>,
}

impl Link {
    fn usable(&self) -> bool {
        self.connection.status().connected()
            && self.publisher.status().connected()
            && self.consumer.status().connected()
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<u64, Taken>> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ready(&self) -> MutexGuard<'_, HashMap<Topic, std::collections::VecDeque<Delivery>>> {
        self.ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One part of a taken broker message is done; acks the broker message when it was the last.
    async fn settle(&self, tag: u64) -> PortResult<()> {
        let last = {
            let mut pending = self.pending();
            match pending.get_mut(&tag) {
                Some(taken) => {
                    taken.open = taken.open.saturating_sub(1);
                    taken.open == 0 && pending.remove(&tag).is_some()
                }
                None => false,
            }
        };
        if last { self.ack_tag(tag).await } else { Ok(()) }
    }

    async fn ack_tag(&self, tag: u64) -> PortResult<()> {
        self.consumer.basic_ack(tag, BasicAckOptions::default()).await.map_err(unavailable)
    }
}

/// One part of a taken broker message, taken out of its link's `pending`, to ack, retry or dead-letter.
struct Held {
    link: Arc<Link>,
    tag: u64,
    topic: Topic,
    retries: u32,
    message: Message,
}

pub struct RabbitBus {
    core: Arc<Core>,
}

/// What the bus and its batch-sending tasks share.
struct Core {
    link: Mutex<Option<Arc<Link>>>,
    /// One reconnect at a time; the others wait for it and use its link.
    reconnect: tokio::sync::Mutex<()>,
    /// Connections opened so far: the next one's epoch is one more (never reused, even after a link
    /// was dropped without closing).
    epochs: std::sync::atomic::AtomicU64,
    clock: Arc<dyn Clock>,
    config: RabbitBusConfig,
    /// Concurrent publish calls, sent together.
    publishing: Group<Publication>,
}

impl std::fmt::Debug for RabbitBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBus").field("namespace", &self.core.config.namespace).finish_non_exhaustive()
    }
}

/// What can go wrong with RabbitMQ. Everything the broker or the connection answers is retryable: the
/// link is reopened and the call made again; only our own message that cannot be encoded is not.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("{0}")]
    Broker(#[from] lapin::Error),
    #[error("publish not confirmed: {0}")]
    NotConfirmed(String),
    #[error("the consumer was cancelled")]
    ConsumerCancelled,
    #[error("no answer from the broker within {0:?} ({1})")]
    TimedOut(std::time::Duration, &'static str),
    #[error("unencodable message: {0}")]
    Unencodable(serde_json::Error),
}

impl BusError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, BusError::Unencodable(_))
    }
}

impl From<BusError> for PortError {
    fn from(error: BusError) -> PortError {
        if error.is_retryable() {
            PortError::unavailable("rabbitmq", error)
        } else {
            PortError::failed("rabbitmq", error)
        }
    }
}

fn unavailable(error: lapin::Error) -> PortError {
    BusError::Broker(error).into()
}

/// How long opening a connection (channels and declarations included) may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a batch's publishes may wait for their confirms.
const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A delivery's receipt: the epoch of the connection it was taken on, its broker message's tag, and its
/// place in that message's envelope.
fn receipt_of(epoch: u64, tag: u64, part: u32) -> Vec<u8> {
    let mut receipt = epoch.to_be_bytes().to_vec();
    receipt.extend_from_slice(&tag.to_be_bytes());
    receipt.extend_from_slice(&part.to_be_bytes());
    receipt
}

fn tag_of(receipt: &[u8]) -> Option<(u64, u64, usize)> {
    let (epoch, rest) = receipt.split_at_checked(8)?;
    let (tag, part) = rest.split_at_checked(8)?;
    Some((
        u64::from_be_bytes(epoch.try_into().ok()?),
        u64::from_be_bytes(tag.try_into().ok()?),
        usize::try_from(u32::from_be_bytes(part.try_into().ok()?)).ok()?,
    ))
}

fn delivery_count(properties: &BasicProperties) -> u32 {
    let Some(headers) = properties.headers() else { return 0 };
    match headers.inner().get("x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::ShortInt(n)) => u32::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

impl RabbitBus {
    /// Connects, opens the channels, and declares every queue (idempotent).
    pub async fn connect(config: RabbitBusConfig, clock: Arc<dyn Clock>) -> PortResult<RabbitBus> {
        assert!(!config.delay_tiers_ms.is_empty(), "at least one delay tier");
        assert!(config.envelope_max > 0, "an envelope carries at least one message");
        let core = Core {
            link: Mutex::new(None),
            reconnect: tokio::sync::Mutex::new(()),
            epochs: std::sync::atomic::AtomicU64::new(0),
            clock,
            config,
            publishing: Group::new("rabbitmq"),
        };
        core.link().await?;
        Ok(RabbitBus { core: Arc::new(core) })
    }

    /// Closes the connection: deliveries this process holds go back to their queues at once. The next
    /// call opens a new one.
    pub async fn close(&self) -> PortResult<()> {
        if let Some(link) = self.core.current()? {
            link.connection.close(200, "closing".into()).await.map_err(unavailable)?;
        }
        Ok(())
    }
}

impl Core {
    fn current(&self) -> PortResult<Option<Arc<Link>>> {
        Ok(self.link.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }

    /// The open connection, or a new one if it (or a channel) closed.
    async fn link(&self) -> PortResult<Arc<Link>> {
        if let Some(link) = self.current()?.filter(|l| l.usable()) {
            return Ok(link);
        }
        let _one_at_a_time = self.reconnect.lock().await;
        let previous = self.current()?;
        if let Some(link) = previous.as_ref().filter(|l| l.usable()) {
            return Ok(Arc::clone(link));
        }
        let epoch = self.epochs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        // A broker still starting can accept the connection and never finish the handshake: bounded, so
        // the next call tries again instead of every call waiting behind this one for ever.
        let link = tokio::time::timeout(CONNECT_TIMEOUT, self.open(epoch))
            .await
            .map_err(|_| PortError::from(BusError::TimedOut(CONNECT_TIMEOUT, "opening the connection")))??;
        if epoch > 1 {
            tracing::warn!(epoch, "RabbitMQ connection reopened; deliveries held on the old one go back to the broker");
        }
        *self.link.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(&link));
        Ok(link)
    }

    /// A new connection, its channels and the queue declarations.
    async fn open(&self, epoch: u64) -> PortResult<Arc<Link>> {
        let connection =
            Connection::connect(&self.config.url, ConnectionProperties::default()).await.map_err(unavailable)?;
        let publisher = connection.create_channel().await.map_err(unavailable)?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await.map_err(unavailable)?;
        let consumer = connection.create_channel().await.map_err(unavailable)?;
        // Per consumer (not global): each topic's consumer gets this much ahead.
        consumer.basic_qos(self.config.prefetch, BasicQosOptions { global: false }).await.map_err(unavailable)?;
        let link = Arc::new(Link {
            connection,
            publisher,
            consumer,
            epoch,
            pending: Mutex::new(HashMap::new()),
            ready: Mutex::new(HashMap::new()),
            consumers: tokio::sync::Mutex::new(HashMap::new()),
        });
        self.declare(&link.consumer).await?;
        Ok(link)
    }

    /// Drops `link` as the current one (if it still is), so the next call opens a new connection, and
    /// closes it (bounded, in the background): the broker then takes back the deliveries held on it.
    fn forget(&self, link: &Arc<Link>) {
        let mut current = self.link.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
            *current = None;
        }
        let link = Arc::clone(link);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, link.connection.close(320, "not answering".into())).await;
        });
    }

    fn work_queue(&self, topic: Topic) -> String {
        format!("{}.{}", self.config.namespace, topic.as_str())
    }

    fn delay_queue(&self, topic: Topic, tier_ms: u64) -> String {
        format!("{}.{}.delay.{tier_ms}", self.config.namespace, topic.as_str())
    }

    fn dead_queue(&self) -> String {
        format!("{}.dead", self.config.namespace)
    }

    fn arguments(&self, quorum: bool) -> FieldTable {
        let mut arguments = FieldTable::default();
        if quorum {
            arguments.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
        }
        if let Some(expires_ms) = self.config.queue_expires_ms {
            arguments.insert("x-expires".into(), AMQPValue::LongLongInt(i64::try_from(expires_ms).unwrap_or(i64::MAX)));
        }
        arguments
    }

    async fn declare(&self, channel: &Channel) -> PortResult<()> {
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        for topic in Topic::ALL {
            let work = self.work_queue(topic);
            channel.queue_declare(work.as_str().into(), durable, self.arguments(true)).await.map_err(unavailable)?;
            for &tier_ms in &self.config.delay_tiers_ms {
                let mut arguments = self.arguments(false);
                arguments
                    .insert("x-message-ttl".into(), AMQPValue::LongLongInt(i64::try_from(tier_ms).unwrap_or(i64::MAX)));
                arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(LongString::from("")));
                arguments
                    .insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(LongString::from(work.as_str())));
                let queue = self.delay_queue(topic, tier_ms);
                channel.queue_declare(queue.as_str().into(), durable, arguments).await.map_err(unavailable)?;
            }
        }
        let dead = self.dead_queue();
        channel.queue_declare(dead.as_str().into(), durable, self.arguments(true)).await.map_err(unavailable)?;
        Ok(())
    }

    /// Where a message due at `due_ms` goes now: its topic's queue, or the largest delay tier that does
    /// not overshoot (the smallest, when even that does).
    fn route(&self, topic: Topic, due_ms: u64) -> String {
        let now_ms = self.clock.now_ms();
        if due_ms <= now_ms {
            return self.work_queue(topic);
        }
        let remaining_ms = due_ms - now_ms;
        let tiers = &self.config.delay_tiers_ms;
        let tier = tiers.iter().rev().find(|tier| **tier <= remaining_ms).or(tiers.first()).copied().unwrap_or(0);
        self.delay_queue(topic, tier)
    }

    /// Publishes and waits for every confirm: the first failure, if any.
    async fn send(&self, items: Vec<(String, Vec<u8>)>) -> PortResult<()> {
        self.send_each(items).await.into_iter().collect()
    }

    /// Publishes every body and waits for each confirm: one result per body. Bounded: a connection that
    /// stopped answering without closing would otherwise hold this batch, and every publish queued behind
    /// it, for ever; it is dropped, and the next call opens a new one.
    async fn send_each(&self, items: Vec<(String, Vec<u8>)>) -> Vec<PortResult<()>> {
        let link = match self.link().await {
            Ok(link) => link,
            Err(error) => return items.iter().map(|_| Err(error.clone())).collect(),
        };
        let count = items.len();
        match tokio::time::timeout(CONFIRM_TIMEOUT, Self::publish_confirmed(&link, items)).await {
            Ok(results) => results,
            Err(_) => {
                tracing::warn!(epoch = link.epoch, "RabbitMQ did not confirm in time; the connection will be reopened");
                self.forget(&link);
                let error = PortError::from(BusError::TimedOut(CONFIRM_TIMEOUT, "confirming a publish"));
                (0..count).map(|_| Err(error.clone())).collect()
            }
        }
    }

    async fn publish_confirmed(link: &Link, items: Vec<(String, Vec<u8>)>) -> Vec<PortResult<()>> {
        let properties =
            BasicProperties::default().with_delivery_mode(2).with_content_type(ShortString::from("application/json"));
        let mut confirms = Vec::with_capacity(items.len());
        for (queue, body) in items {
            let published = link
                .publisher
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties.clone(),
                )
                .await;
            confirms.push(published.map_err(unavailable));
        }
        let mut results = Vec::with_capacity(confirms.len());
        for confirm in confirms {
            results.push(match confirm {
                Ok(confirm) => match confirm.await.map_err(unavailable) {
                    Ok(Confirmation::Ack(_)) => Ok(()),
                    Ok(other) => Err(BusError::NotConfirmed(format!("{other:?}")).into()),
                    Err(error) => Err(error),
                },
                Err(error) => Err(error),
            });
        }
        results
    }

    /// Sends one batch of publications: their messages grouped into envelopes per queue, every envelope
    /// published, then each publication answered by the confirms of the envelopes it has messages in.
    async fn send_batch(&self, publications: Vec<Publication>) -> Vec<PortResult<()>> {
        let mut by_queue: std::collections::BTreeMap<String, Vec<(usize, Message, u64)>> = Default::default();
        let mut answers: Vec<PortResult<()>> = Vec::with_capacity(publications.len());
        for (index, publication) in publications.into_iter().enumerate() {
            for (queue, message, due_ms) in publication {
                by_queue.entry(queue).or_default().push((index, message, due_ms));
            }
            answers.push(Ok(()));
        }
        let mut bodies = Vec::new();
        let mut senders: Vec<Vec<usize>> = Vec::new();
        for (queue, parts) in by_queue {
            let mut parts = parts.into_iter().peekable();
            while parts.peek().is_some() {
                let chunk: Vec<(usize, Message, u64)> = parts.by_ref().take(self.config.envelope_max).collect();
                let due_ms = chunk.iter().map(|(_, _, due_ms)| *due_ms).max().unwrap_or(0);
                let mut from: Vec<usize> = chunk.iter().map(|(index, _, _)| *index).collect();
                from.dedup();
                let envelope = Envelope {
                    messages: chunk.into_iter().map(|(_, message, _)| message).collect(),
                    retries: 0,
                    due_ms,
                };
                match Core::envelope_bytes(&envelope) {
                    Ok(body) => {
                        bodies.push((queue.clone(), body));
                        senders.push(from);
                    }
                    Err(error) => from.iter().for_each(|&i| answers[i] = Err(error.clone())),
                }
            }
        }
        for (result, from) in self.send_each(bodies).await.into_iter().zip(senders) {
            if let Err(error) = result {
                from.iter().for_each(|&i| answers[i] = Err(error.clone()));
            }
        }
        answers
    }

    fn envelope_bytes(envelope: &Envelope) -> PortResult<Vec<u8>> {
        serde_json::to_vec(envelope).map_err(|e| BusError::Unencodable(e).into())
    }

    /// Moves a held delivery on: publishes its next form (`to`, `body`), then acks it. If either step
    /// fails, the connection is closed: the broker takes back every delivery it handed this connection,
    /// this one included, rather than leaving it unacked and invisible for as long as the process lives.
    async fn move_on(&self, link: &Link, tag: u64, to: String, body: Vec<u8>) -> PortResult<()> {
        let moved = match self.send(vec![(to, body)]).await {
            Ok(()) => link.ack_tag(tag).await,
            Err(error) => Err(error),
        };
        if moved.is_err() {
            let _ = link.connection.close(200, "giving deliveries back".into()).await;
        }
        moved
    }

    /// A delivery this process holds on the current connection, taken out of its broker message's
    /// parts (so it is settled once). `None`: not ours, settled already, or taken on a connection since
    /// closed (the broker has it again).
    fn take_pending(&self, receipt: &[u8]) -> PortResult<Option<Held>> {
        let Some((epoch, tag, part)) = tag_of(receipt) else { return Ok(None) };
        let Some(link) = self.current()?.filter(|l| l.epoch == epoch && l.usable()) else { return Ok(None) };
        let held = link.pending().get_mut(&tag).and_then(|taken| {
            let message = taken.parts.get_mut(part)?.take()?;
            Some((taken.topic, taken.retries, message))
        });
        Ok(held.map(|(topic, retries, message)| Held { link, tag, topic, retries, message }))
    }

    /// Moves one part of a held broker message on: publishes it alone as `to`, `body`, then settles it.
    /// If either step fails, the connection is closed (see [`Core::move_on`]).
    async fn move_part_on(&self, held: &Held, to: String, body: Vec<u8>) -> PortResult<()> {
        let moved = match self.send(vec![(to, body)]).await {
            Ok(()) => held.link.settle(held.tag).await,
            Err(error) => Err(error),
        };
        if moved.is_err() {
            let _ = held.link.connection.close(200, "giving deliveries back".into()).await;
        }
        moved
    }
}

#[async_trait]
impl Bus for RabbitBus {
    async fn publish(&self, messages: Vec<Outgoing>) -> PortResult<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let parts = messages
            .into_iter()
            .map(|o| (self.core.route(o.message.topic(), o.deliver_at_ms), o.message, o.deliver_at_ms))
            .collect();
        let core = Arc::clone(&self.core);
        self.core.publishing.send(parts, |batch| async move { core.send_batch(batch).await }).await
    }

    async fn receive(&self, topic: Topic, max: usize) -> PortResult<Vec<Delivery>> {
        let link = self.core.link().await?;
        let mut consumers = link.consumers.lock().await;
        let mut deliveries = Vec::new();
        if let Some(ready) = link.ready().get_mut(&topic) {
            let take = ready.len().min(max);
            deliveries.extend(ready.drain(..take));
        }
        let consumer = match consumers.entry(topic) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let queue = self.core.work_queue(topic);
                let consumer = link
                    .consumer
                    .basic_consume(
                        queue.as_str().into(),
                        "".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(unavailable)?;
                entry.insert(consumer)
            }
        };
        let wait = std::time::Duration::from_millis(self.core.config.receive_wait_ms);
        let mut waited = false;
        while deliveries.len() < max {
            let next = match consumer.next().now_or_never() {
                Some(next) => next,
                None if deliveries.is_empty() && !waited => {
                    waited = true;
                    match tokio::time::timeout(wait, consumer.next()).await {
                        Ok(next) => next,
                        Err(_) => break,
                    }
                }
                None => break,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => return Err(unavailable(error)),
                None => return Err(BusError::ConsumerCancelled.into()),
            };
            let tag = delivery.delivery_tag;
            let envelope: Envelope = match serde_json::from_slice(&delivery.data) {
                Ok(envelope) => envelope,
                Err(error) => {
                    let dead = DeadLetter {
                        topic,
                        message: None,
                        reason: format!("undecodable: {error}"),
                        at_ms: self.core.clock.now_ms(),
                    };
                    let body = serde_json::to_vec(&dead).map_err(|e| PortError::from(BusError::Unencodable(e)))?;
                    self.core.move_on(&link, tag, self.core.dead_queue(), body).await?;
                    continue;
                }
            };
            if envelope.due_ms > self.core.clock.now_ms() {
                // Early (a tier shorter than the wait, or a clock step): round again, then drop this copy.
                self.core
                    .move_on(&link, tag, self.core.route(topic, envelope.due_ms), Core::envelope_bytes(&envelope)?)
                    .await?;
                continue;
            }
            if envelope.messages.is_empty() {
                link.ack_tag(tag).await?;
                continue;
            }
            let attempt = 1 + envelope.retries + delivery_count(&delivery.properties);
            let mut parts = Vec::with_capacity(envelope.messages.len());
            for (part, message) in (0u32..).zip(&envelope.messages) {
                parts.push(Delivery {
                    receipt: receipt_of(link.epoch, tag, part),
                    message: message.clone(),
                    attempt,
                    due_ms: envelope.due_ms,
                });
            }
            let taken = Taken {
                topic,
                retries: envelope.retries,
                open: envelope.messages.len(),
                parts: envelope.messages.into_iter().map(Some).collect(),
            };
            link.pending().insert(tag, taken);
            let room = max - deliveries.len();
            if parts.len() > room {
                link.ready().entry(topic).or_default().extend(parts.drain(room..));
            }
            deliveries.extend(parts);
        }
        Ok(deliveries)
    }

    async fn ack(&self, receipts: &[Vec<u8>]) -> PortResult<()> {
        for receipt in receipts {
            // Only tags this process holds: acking an unknown tag would close the channel.
            if let Some(held) = self.core.take_pending(receipt)? {
                held.link.settle(held.tag).await?;
            }
        }
        Ok(())
    }

    async fn retry(&self, receipt: &[u8], at_ms: u64) -> PortResult<()> {
        let Some(held) = self.core.take_pending(receipt)? else { return Ok(()) };
        let envelope = Envelope { messages: vec![held.message.clone()], retries: held.retries + 1, due_ms: at_ms };
        self.core.move_part_on(&held, self.core.route(held.topic, at_ms), Core::envelope_bytes(&envelope)?).await
    }

    async fn dead_letter(&self, receipt: &[u8], reason: &str) -> PortResult<()> {
        let Some(held) = self.core.take_pending(receipt)? else { return Ok(()) };
        let dead = DeadLetter {
            topic: held.topic,
            message: Some(held.message.clone()),
            reason: reason.to_owned(),
            at_ms: self.core.clock.now_ms(),
        };
        let body = serde_json::to_vec(&dead).map_err(|e| PortError::from(BusError::Unencodable(e)))?;
        self.core.move_part_on(&held, self.core.dead_queue(), body).await
    }

    async fn depth(&self) -> PortResult<BusDepth> {
        let passive = QueueDeclareOptions { passive: true, durable: true, ..QueueDeclareOptions::default() };
        let link = self.core.link().await?;
        let link = &link;
        let count = |queue: String| async move {
            link.consumer
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
                .map(|q| q.message_count() as usize)
                .map_err(unavailable)
        };
        let mut queued = Vec::new();
        for topic in Topic::ALL {
            let mut total = count(self.core.work_queue(topic)).await?;
            for &tier_ms in &self.core.config.delay_tiers_ms {
                total += count(self.core.delay_queue(topic, tier_ms)).await?;
            }
            queued.push((topic, total));
        }
        Ok(BusDepth { queued, dead_letters: count(self.core.dead_queue()).await? })
    }
}
