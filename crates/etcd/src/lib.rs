//! [`EtcdRegistry`]: the `Registry` port on etcd (the `etcd-client` crate), for the cluster profile.
//!
//! Keys, under `/<namespace>/`:
//! - `members/<role>/<instance>`: a [`Member`] as JSON, attached to the process's lease;
//! - `worker-ids/<id>`: the instance holding snowflake worker id `<id>`, attached to the same lease,
//!   created only if absent (a transaction on the key's create revision), so two live processes never
//!   hold one id;
//! - `leaders/<role>`: the instance leading a role that runs once in the system, created only if absent
//!   under its lease; the key's create revision is the leader's fence;
//! - `settings/<key>`: a setting's value (no lease: settings outlive processes).
//!
//! One lease per process, kept alive by a task at a third of its TTL. A lease that expired while etcd
//! was out of reach is replaced and the keys are written again; a worker id taken meanwhile by another
//! process ends this one (see [`EtcdRegistry::claim_worker_id`]). Members and settings are followed by a
//! get-then-watch from the get's revision, done again from scratch whenever a watch breaks: while etcd
//! is down the last snapshot stays in force, and the first watch after it catches up.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use orderly_app::PortError;
use orderly_app::ports::PortResult;
use orderly_app::registry::{Lead, Member, Registry, RegistryStatus, ServerStatus, Settings};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `http://host:port` of the cluster's members (any subset: the client finds the others' answers
    /// through them).
    pub endpoints: Vec<String>,
    /// Key prefix: several systems (or tests) can share one etcd.
    pub namespace: String,
    /// A process's registration lives this long after its last keep-alive.
    pub lease_ttl_s: i64,
    /// Deadline of one call to etcd.
    pub call_timeout_ms: u64,
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>, namespace: impl Into<String>) -> EtcdConfig {
        EtcdConfig { endpoints, namespace: namespace.into(), lease_ttl_s: 5, call_timeout_ms: 2_000 }
    }
}

/// What can go wrong talking to etcd: everything is "try again later" but a call etcd refused as
/// malformed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("{0}")]
    Client(#[from] etcd_client::Error),
    #[error("no answer within {0} ms")]
    Timeout(u64),
    #[error("unreadable entry {key}: {reason}")]
    Unreadable { key: String, reason: String },
    #[error("cannot encode an entry: {0}")]
    Unencodable(String),
}

impl From<EtcdError> for PortError {
    fn from(error: EtcdError) -> PortError {
        match error {
            EtcdError::Client(etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_))
            | EtcdError::Unencodable(_) => PortError::failed("etcd", error),
            EtcdError::Unreadable { .. } => PortError::corrupt("etcd", error),
            error => PortError::unavailable("etcd", error),
        }
    }
}

/// This process's registration.
#[derive(Debug, Default)]
struct Mine {
    member: Option<Member>,
    lease: Option<i64>,
    worker_id: Option<u16>,
}

pub struct EtcdRegistry {
    client: Client,
    keys: Keys,
    config: EtcdConfig,
    mine: Arc<Mutex<Mine>>,
    /// The keep-alive task, once registered (outside `mine`: a drop must reach it even while `mine` is
    /// locked).
    keeper: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
    members: watch::Receiver<Vec<Member>>,
    settings: watch::Receiver<Settings>,
    followers: Vec<JoinHandle<()>>,
    /// Followers started later ([`EtcdRegistry::patroni_primary`]).
    more_followers: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry").field("config", &self.config).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct Keys {
    root: String,
}

impl Keys {
    fn members(&self) -> String {
        format!("{}members/", self.root)
    }
    fn member(&self, member: &Member) -> String {
        format!("{}{}/{}", self.members(), member.role, member.instance)
    }
    fn worker_ids(&self) -> String {
        format!("{}worker-ids/", self.root)
    }
    fn worker_id(&self, id: u16) -> String {
        format!("{}{id}", self.worker_ids())
    }
    fn settings(&self) -> String {
        format!("{}settings/", self.root)
    }
    fn leaders(&self) -> String {
        format!("{}leaders/", self.root)
    }
}

impl EtcdRegistry {
    /// Connects and reads the members and settings once (so a process starts with what is in force);
    /// fails if no endpoint answers within the call timeout.
    pub async fn connect(config: EtcdConfig) -> PortResult<EtcdRegistry> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(config.call_timeout_ms))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
            .with_keep_alive_while_idle(true)
            // A member cut off from the quorum ends its watches instead of going quiet.
            .with_require_leader(true);
        let client = Client::connect(&config.endpoints, Some(options)).await.map_err(EtcdError::from)?;
        let keys = Keys { root: format!("/{}/", config.namespace.trim_matches('/')) };
        let timeout_ms = config.call_timeout_ms;

        let first_settings = read_prefix(&client, &keys.settings(), timeout_ms).await?;
        let first_members = read_prefix(&client, &keys.members(), timeout_ms).await?;
        let (settings_tx, settings) = watch::channel(first_settings.0);
        let (members_tx, members) = watch::channel(parse_members(&first_members.0));
        let (raw_members_tx, raw_members) = watch::channel(first_members.0);
        let followers = vec![
            tokio::spawn(follow(client.clone(), keys.settings(), settings_tx, timeout_ms)),
            tokio::spawn(follow(client.clone(), keys.members(), raw_members_tx, timeout_ms)),
            tokio::spawn(parse_followed(raw_members, members_tx)),
        ];
        Ok(EtcdRegistry {
            client,
            keys,
            config,
            mine: Arc::default(),
            keeper: std::sync::Mutex::default(),
            members,
            settings,
            followers,
            more_followers: std::sync::Mutex::default(),
        })
    }

    /// Follows the primary of the PostgreSQL cluster that Patroni runs as `scope` with this etcd as its
    /// store (Patroni's own keys: `/service/<scope>/leader` names the leading member, whose
    /// `/service/<scope>/members/<name>` entry holds its `conn_url`): its host and port, `None` while no
    /// member leads (a failover under way) or the entry does not read.
    pub fn patroni_primary(&self, scope: &str) -> watch::Receiver<Option<(String, u16)>> {
        let prefix = format!("/service/{}/", scope.trim_matches('/'));
        let (raw_tx, mut raw) = watch::channel(Settings::new());
        let (tx, primary) = watch::channel(None);
        let follower = tokio::spawn(follow(self.client.clone(), prefix, raw_tx, self.timeout_ms()));
        let parser = tokio::spawn(async move {
            while raw.changed().await.is_ok() {
                let next = patroni_leader(&raw.borrow_and_update());
                tx.send_if_modified(|current| {
                    let changed = *current != next;
                    *current = next.clone();
                    changed
                });
            }
        });
        self.more_followers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend([follower, parser]);
        primary
    }

    fn timeout_ms(&self) -> u64 {
        self.config.call_timeout_ms
    }
}

impl Drop for EtcdRegistry {
    /// The process (or this handle) is gone without a word: keep-alives stop and etcd drops the
    /// registration when the lease runs out.
    fn drop(&mut self) {
        for task in &self.followers {
            task.abort();
        }
        for task in self.more_followers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
            task.abort();
        }
        if let Some(keeper) = self.keeper.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            keeper.abort();
        }
    }
}

/// Bounds one call.
async fn within<T>(
    timeout_ms: u64,
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(Duration::from_millis(timeout_ms), call).await {
        Ok(result) => result.map_err(EtcdError::from),
        Err(_) => Err(EtcdError::Timeout(timeout_ms)),
    }
}

/// The keys under `prefix` (without it) and their values, and the revision they were read at.
async fn read_prefix(client: &Client, prefix: &str, timeout_ms: u64) -> Result<(Settings, i64), EtcdError> {
    let response = within(timeout_ms, client.clone().get(prefix, Some(GetOptions::new().with_prefix()))).await?;
    let revision = response.header().map_or(0, etcd_client::ResponseHeader::revision);
    let mut values = Settings::new();
    for kv in response.kvs() {
        let (key, value) = text_entry(prefix, kv.key(), kv.value())?;
        values.insert(key, value);
    }
    Ok((values, revision))
}

fn text_entry(prefix: &str, key: &[u8], value: &[u8]) -> Result<(String, String), EtcdError> {
    let key = String::from_utf8_lossy(key);
    let value = String::from_utf8(value.to_vec())
        .map_err(|e| EtcdError::Unreadable { key: key.to_string(), reason: e.to_string() })?;
    Ok((key.strip_prefix(prefix).unwrap_or(&key).to_owned(), value))
}

/// Follows the keys under `prefix` into `tx` for as long as the task lives: a read, then a watch from
/// the read's revision; any break starts over (after a short pause) and replaces the snapshot whole.
async fn follow(client: Client, prefix: String, tx: watch::Sender<Settings>, timeout_ms: u64) {
    let mut failures = 0u32;
    loop {
        if let Err(error) = follow_once(&client, &prefix, &tx, timeout_ms, &mut failures).await {
            failures += 1;
            // Once per outage, not once per retry.
            if failures == 1 {
                tracing::warn!(%prefix, %error, "etcd watch broken; keeping the last snapshot and retrying");
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn follow_once(
    client: &Client,
    prefix: &str,
    tx: &watch::Sender<Settings>,
    timeout_ms: u64,
    failures: &mut u32,
) -> Result<(), EtcdError> {
    let (mut values, revision) = read_prefix(client, prefix, timeout_ms).await?;
    if *failures > 0 {
        tracing::info!(%prefix, "etcd read again; following it");
        *failures = 0;
    }
    tx.send_if_modified(|current| replace_if_changed(current, values.clone()));
    let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
    let mut stream = within(timeout_ms, client.clone().watch(prefix, Some(options))).await?;
    while let Some(response) = stream.message().await? {
        if response.canceled() {
            return Err(EtcdError::Client(etcd_client::Error::WatchError(format!(
                "watch cancelled: {}",
                response.cancel_reason()
            ))));
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => {
                    let (key, value) = text_entry(prefix, kv.key(), kv.value())?;
                    values.insert(key, value);
                }
                EventType::Delete => {
                    let (key, _) = text_entry(prefix, kv.key(), &[])?;
                    values.remove(&key);
                }
            }
        }
        tx.send_if_modified(|current| replace_if_changed(current, values.clone()));
    }
    Ok(())
}

fn replace_if_changed(current: &mut Settings, next: Settings) -> bool {
    if *current == next {
        return false;
    }
    *current = next;
    true
}

/// The leader's host and port from Patroni's keys (`leader` → name, `members/<name>` → `{"conn_url": …}`).
fn patroni_leader(keys: &Settings) -> Option<(String, u16)> {
    #[derive(serde::Deserialize)]
    struct PatroniMember {
        conn_url: String,
    }
    let name = keys.get("leader")?;
    let entry = keys.get(&format!("members/{name}"))?;
    let member: PatroniMember = match serde_json::from_str(entry) {
        Ok(member) => member,
        Err(error) => {
            tracing::warn!(%name, %error, "unreadable Patroni member entry in etcd");
            return None;
        }
    };
    // postgres://host:port/db
    let authority = member.conn_url.split_once("://")?.1.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, after)| after);
    let (host, port) = authority.rsplit_once(':').unwrap_or((authority, "5432"));
    Some((host.to_owned(), port.parse().ok()?))
}

/// Members from the raw `role/instance → JSON` map; an entry that does not read is left out (and said).
fn parse_members(raw: &Settings) -> Vec<Member> {
    raw.iter()
        .filter_map(|(key, json)| match serde_json::from_str::<Member>(json) {
            Ok(member) => Some(member),
            Err(error) => {
                tracing::warn!(%key, %error, "unreadable member entry in etcd; left out");
                None
            }
        })
        .collect()
}

async fn parse_followed(mut raw: watch::Receiver<Settings>, tx: watch::Sender<Vec<Member>>) {
    while raw.changed().await.is_ok() {
        let members = parse_members(&raw.borrow_and_update());
        tx.send_if_modified(|current| {
            if *current == members {
                return false;
            }
            *current = members;
            true
        });
    }
}

/// Writes this process's keys under a fresh lease: the member, and the worker id it held (if any).
/// `Ok(false)`: the worker id is held by another process now.
async fn attach(client: &Client, keys: &Keys, mine: &mut Mine, config: &EtcdConfig) -> Result<bool, EtcdError> {
    let Some(member) = mine.member.clone() else { return Ok(true) };
    let timeout_ms = config.call_timeout_ms;
    let lease = within(timeout_ms, client.clone().lease_grant(config.lease_ttl_s, None)).await?.id();
    put_member(client, keys, &member, lease, timeout_ms).await?;
    mine.lease = Some(lease);
    if let Some(id) = mine.worker_id {
        return take_worker_id(client, keys, &member.instance, lease, id, timeout_ms).await;
    }
    Ok(true)
}

/// Writes `member`'s entry under `lease`.
async fn put_member(
    client: &Client,
    keys: &Keys,
    member: &Member,
    lease: i64,
    timeout_ms: u64,
) -> Result<(), EtcdError> {
    let json = serde_json::to_string(member).map_err(|e| EtcdError::Unencodable(e.to_string()))?;
    within(timeout_ms, client.clone().put(keys.member(member), json, Some(PutOptions::new().with_lease(lease))))
        .await?;
    Ok(())
}

/// Takes worker id `id` under `lease` if no other process holds it: created if absent, or moved to
/// this lease if this instance already holds it.
async fn take_worker_id(
    client: &Client,
    keys: &Keys,
    instance: &str,
    lease: i64,
    id: u16,
    timeout_ms: u64,
) -> Result<bool, EtcdError> {
    let key = keys.worker_id(id);
    let put = TxnOp::put(key.clone(), instance, Some(PutOptions::new().with_lease(lease)));
    let absent = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([put.clone()]);
    if within(timeout_ms, client.clone().txn(absent)).await?.succeeded() {
        return Ok(true);
    }
    let ours = Txn::new().when([Compare::value(key, CompareOp::Equal, instance)]).and_then([put]);
    Ok(within(timeout_ms, client.clone().txn(ours)).await?.succeeded())
}

/// Keeps the lease alive at a third of its TTL. A lease found expired (etcd unreachable for longer
/// than the TTL) is replaced and the keys written again.
async fn keep_alive(client: Client, keys: Keys, mine: Arc<Mutex<Mine>>, config: EtcdConfig) {
    let period = Duration::from_millis((config.lease_ttl_s.max(1) as u64) * 1000 / 3);
    let mut failures = 0u32;
    loop {
        let lease = mine.lock().await.lease;
        let kept = match lease {
            Some(lease) => keep_once(&client, lease, &config).await,
            None => Ok(false),
        };
        match kept {
            Ok(true) => failures = 0,
            Ok(false) => {
                let mut mine = mine.lock().await;
                if mine.member.is_none() {
                    return; // deregistered
                }
                tracing::warn!(lease = ?mine.lease, "etcd lease expired; registering again");
                match attach(&client, &keys, &mut mine, &config).await {
                    Ok(true) => {}
                    Ok(false) => {
                        // Ids issued from here on could repeat the new holder's: this process stops, and
                        // its supervisor starts it again with an id of its own.
                        tracing::error!(
                            worker_id = ?mine.worker_id,
                            "snowflake worker id taken by another process while this one was cut off from etcd; stopping"
                        );
                        std::process::exit(70);
                    }
                    Err(error) => {
                        mine.lease = None;
                        tracing::warn!(%error, "registering again failed; retrying");
                    }
                }
            }
            Err(error) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(%error, "etcd keep-alive failed; the registration stands until its TTL, retrying");
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// One keep-alive: `Ok(false)` when etcd says the lease is gone. (Opening the keep-alive stream sends
/// the first keep-alive and reads its answer; the crate reports a lease etcd no longer has as an error,
/// which is told apart from a failed call by asking for the lease's time to live.)
async fn keep_once(client: &Client, lease: i64, config: &EtcdConfig) -> Result<bool, EtcdError> {
    let timeout_ms = config.call_timeout_ms;
    match within(timeout_ms, client.clone().lease_keep_alive(lease)).await {
        Ok(_) => Ok(true),
        Err(EtcdError::Client(etcd_client::Error::LeaseKeepAliveError(_))) => {
            let left = within(timeout_ms, client.clone().lease_time_to_live(lease, None)).await?;
            Ok(left.ttl() > 0)
        }
        Err(error) => Err(error),
    }
}

#[async_trait]
impl Registry for EtcdRegistry {
    async fn register(&self, member: Member) -> PortResult<()> {
        let mut mine = self.mine.lock().await;
        if let (Some(old), Some(lease)) = (&mine.member, mine.lease) {
            // Registering again replaces the registration (same lease).
            if old.role != member.role || old.instance != member.instance {
                within(self.timeout_ms(), self.client.clone().delete(self.keys.member(old), None)).await?;
            }
            put_member(&self.client, &self.keys, &member, lease, self.timeout_ms()).await?;
            mine.member = Some(member);
            return Ok(());
        }
        mine.member = Some(member);
        if let Err(error) = attach(&self.client, &self.keys, &mut mine, &self.config).await {
            mine.member = None;
            return Err(error.into());
        }
        let mut keeper = self.keeper.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if keeper.is_none() {
            let task = keep_alive(self.client.clone(), self.keys.clone(), Arc::clone(&self.mine), self.config.clone());
            *keeper = Some(tokio::spawn(task).abort_handle());
        }
        Ok(())
    }

    async fn deregister(&self) -> PortResult<()> {
        let mut mine = self.mine.lock().await;
        if let Some(keeper) = self.keeper.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            keeper.abort();
        }
        mine.member = None;
        mine.worker_id = None;
        if let Some(lease) = mine.lease.take() {
            // Revoking deletes every key attached to the lease: the member and its worker id.
            within(self.timeout_ms(), self.client.clone().lease_revoke(lease)).await?;
        }
        Ok(())
    }

    fn members(&self) -> watch::Receiver<Vec<Member>> {
        self.members.clone()
    }

    /// Worker ids are held under the process's lease. If etcd stays out of reach past the TTL and
    /// another process takes the id meanwhile, this process exits when it is back in reach (status
    /// 70): ids issued after that could repeat the other's.
    async fn claim_worker_id(&self, max: u16) -> PortResult<u16> {
        let mut mine = self.mine.lock().await;
        let (Some(member), Some(lease)) = (mine.member.clone(), mine.lease) else {
            return Err(PortError::failed("etcd", "a worker id is claimed after registering"));
        };
        if let Some(id) = mine.worker_id {
            return Ok(id);
        }
        let (held, _) = read_prefix(&self.client, &self.keys.worker_ids(), self.timeout_ms()).await?;
        for id in 0..=max {
            if held.contains_key(&id.to_string()) {
                continue;
            }
            if take_worker_id(&self.client, &self.keys, &member.instance, lease, id, self.timeout_ms()).await? {
                mine.worker_id = Some(id);
                return Ok(id);
            }
        }
        Err(PortError::unavailable("etcd", format!("all {} worker ids are held by live processes", u32::from(max) + 1)))
    }

    /// The role's key is created only if absent, under this process's lease; the fence is its create
    /// revision, which etcd makes larger for every key created after it, and the era etcd's cluster id.
    async fn lead(&self, role: &str) -> PortResult<Option<Lead>> {
        let (instance, lease) = {
            let mine = self.mine.lock().await;
            match (&mine.member, mine.lease) {
                (Some(member), Some(lease)) => (member.instance.clone(), lease),
                // The lease was lost and its replacement is being written: try again later.
                (Some(_), None) => return Err(PortError::unavailable("etcd", "registering again")),
                (None, _) => return Err(PortError::failed("etcd", "a role is led after registering")),
            }
        };
        let key = format!("{}{role}", self.keys.leaders());
        let put = TxnOp::put(key.clone(), instance.as_str(), Some(PutOptions::new().with_lease(lease)));
        let absent = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([put]);
        within(self.timeout_ms(), self.client.clone().txn(absent)).await?;
        let now = within(self.timeout_ms(), self.client.clone().get(key.as_str(), None)).await?;
        // An etcd created afresh (new cluster id) counts revisions from the start again.
        let era = now.header().map_or(0, etcd_client::ResponseHeader::cluster_id);
        Ok(now
            .kvs()
            .first()
            .filter(|kv| kv.value() == instance.as_bytes())
            .map(|kv| Lead { era, fence: u64::try_from(kv.create_revision()).unwrap_or(0) }))
    }

    fn settings(&self) -> watch::Receiver<Settings> {
        self.settings.clone()
    }

    async fn set_setting(&self, key: &str, value: Option<&str>) -> PortResult<()> {
        let stored = format!("{}{key}", self.keys.settings());
        match value {
            Some(value) => within(self.timeout_ms(), self.client.clone().put(stored, value, None)).await.map(drop),
            None => within(self.timeout_ms(), self.client.clone().delete(stored, None)).await.map(drop),
        }
        .map_err(PortError::from)
    }

    async fn status(&self) -> PortResult<RegistryStatus> {
        let timeout_ms = self.timeout_ms();
        let (members, _) = read_prefix(&self.client, &self.keys.members(), timeout_ms).await?;
        let (worker_ids, _) = read_prefix(&self.client, &self.keys.worker_ids(), timeout_ms).await?;
        let (leaders, _) = read_prefix(&self.client, &self.keys.leaders(), timeout_ms).await?;
        let list = within(timeout_ms, self.client.clone().member_list()).await?;
        let mut servers = Vec::new();
        for server in list.members() {
            let endpoint = server.client_urls().first().cloned().unwrap_or_default();
            let status = server_status(&endpoint, timeout_ms).await;
            servers.push(ServerStatus {
                name: server.name().to_owned(),
                endpoint,
                healthy: status.is_some(),
                leader: status.is_some_and(|(id, leader)| id == leader),
            });
        }
        Ok(RegistryStatus {
            servers,
            members: parse_members(&members),
            worker_ids: worker_ids.into_iter().filter_map(|(id, holder)| Some((id.parse().ok()?, holder))).collect(),
            leaders,
        })
    }
}

/// A server's own id and the leader it follows, if it answers.
async fn server_status(endpoint: &str, timeout_ms: u64) -> Option<(u64, u64)> {
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_millis(timeout_ms));
    let mut client = within(timeout_ms, Client::connect([endpoint], Some(options))).await.ok()?;
    let status = within(timeout_ms, client.status()).await.ok()?;
    Some((status.header().map_or(0, etcd_client::ResponseHeader::member_id), status.leader()))
}
