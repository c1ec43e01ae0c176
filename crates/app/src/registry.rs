//! The registry port: who is running (membership under leases), snowflake worker ids, and the settings
//! that change without a restart.
//!
//! Everything read from a registry is a *snapshot* kept by the adapter and followed by a watch
//! ([`tokio::sync::watch`]): a reader never waits on the registry, and when the registry is down the
//! last snapshot stays in force (degraded, not down) until the adapter catches up.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::ports::PortResult;

/// What a process of orderly does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The HTTP API (`orderly api`; `orderly serve` is every role in one process).
    Api,
    /// The workers (`orderly worker`).
    Worker,
    /// The payment service (`orderly payment`).
    Payment,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Api, Role::Worker, Role::Payment];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Worker => "worker",
            Role::Payment => "payment",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A registered process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub role: Role,
    /// Unique per process (several processes of a role may share a host).
    pub instance: String,
    /// Where it serves (`http://127.0.0.1:50051`); empty for a process that serves nothing.
    pub address: String,
    pub version: String,
    /// Unix ms.
    pub started_ms: u64,
}

/// The settings changed at run time: dotted keys (`rate_limit.orders_per_second`) to JSON values as
/// text. The registry only keeps them; what a key means and which values are valid is decided by the
/// processes that apply them (and checked before a value is written).
pub type Settings = BTreeMap<String, String>;

/// This process's leadership of a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lead {
    /// The registry's incarnation (etcd's cluster id): fences of a registry created afresh start
    /// again, and are compared only among themselves.
    pub era: u64,
    pub fence: u64,
}

/// A registry's answer to "who holds what", for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryStatus {
    /// The registry's own servers and whether each answered.
    pub servers: Vec<ServerStatus>,
    pub members: Vec<Member>,
    /// Snowflake worker ids and the instance holding each.
    pub worker_ids: BTreeMap<u16, String>,
    /// Roles that run once in the system (the outbox relay, the reconciler) and the instance leading each.
    pub leaders: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub name: String,
    pub endpoint: String,
    pub healthy: bool,
    pub leader: bool,
}

#[async_trait]
pub trait Registry: Send + Sync + std::fmt::Debug {
    /// Registers this process under a lease the adapter keeps alive, and registers it again if the
    /// lease was lost (the registry was down longer than its TTL), until [`Registry::deregister`] or the
    /// process ends (then the member is gone within the TTL).
    async fn register(&self, member: Member) -> PortResult<()>;

    /// Removes this process's registration now (a graceful stop).
    async fn deregister(&self) -> PortResult<()>;

    /// Every registered member, followed: a new member appears, a dead one (lease expired) or a
    /// deregistered one disappears.
    fn members(&self) -> watch::Receiver<Vec<Member>>;

    /// A snowflake worker id (0..=`max`) held by this process under its lease: no other live process
    /// holds the same one. Needs [`Registry::register`] first.
    async fn claim_worker_id(&self, max: u16) -> PortResult<u16>;

    /// Leads `role` if no live process does: `Some` while this process leads it, `None` while another
    /// does. The fence is larger for every new leader of the same era, so a store that keeps the
    /// largest it saw refuses an older leader ([`crate::Store::fence`]). Leadership lasts as long as the
    /// registration; needs [`Registry::register`] first.
    async fn lead(&self, role: &str) -> PortResult<Option<Lead>>;

    /// The settings, followed.
    fn settings(&self) -> watch::Receiver<Settings>;

    /// Sets (`Some`) or removes (`None`, back to the process's own configuration) one setting. Every
    /// process sees the change on its [`Registry::settings`] watch.
    async fn set_setting(&self, key: &str, value: Option<&str>) -> PortResult<()>;

    /// The registry's servers, members and worker ids, read now.
    async fn status(&self) -> PortResult<RegistryStatus>;
}
