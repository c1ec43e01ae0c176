//! [`LocalRegistry`]: the registry of the standalone profile, in process. Its settings are kept in the
//! store's database (they survive a restart); members and worker ids live as long as the process,
//! and a handle dropped (a participant gone) leaves at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use orderly_app::PortError;
use orderly_app::ports::PortResult;
use orderly_app::registry::{Lead, Member, Registry, RegistryStatus, ServerStatus, Settings};
use tokio::sync::watch;

use crate::db::LocalDb;
use crate::storage_error;

const SETTING_PREFIX: &str = "setting:";

#[derive(Debug)]
struct Shared {
    members: watch::Sender<Vec<Member>>,
    settings: watch::Sender<Settings>,
    state: Mutex<State>,
    db: Option<LocalDb>,
}

#[derive(Debug, Default)]
struct State {
    /// By participant.
    members: BTreeMap<u64, Member>,
    /// Worker id → participant.
    worker_ids: BTreeMap<u16, u64>,
    /// Role → (participant leading it, its fence).
    leaders: BTreeMap<String, (u64, u64)>,
    /// The last fence handed out.
    fence: u64,
    next_participant: u64,
}

/// One participant's handle; [`LocalRegistry::participant`] gives another on the same registry.
#[derive(Debug)]
pub struct LocalRegistry {
    shared: Arc<Shared>,
    participant: u64,
}

impl LocalRegistry {
    /// A registry whose settings are kept in `db` (none: in memory only, for tests).
    pub fn open(db: Option<LocalDb>) -> PortResult<LocalRegistry> {
        let mut settings = Settings::new();
        if let Some(db) = &db {
            for guard in db.meta.prefix(SETTING_PREFIX) {
                let (key, value) = guard.into_inner().map_err(storage_error)?;
                let key = String::from_utf8_lossy(&key[SETTING_PREFIX.len()..]).into_owned();
                let value = String::from_utf8(value.to_vec())
                    .map_err(|e| PortError::corrupt("local registry", format!("setting {key}: {e}")))?;
                settings.insert(key, value);
            }
        }
        let shared = Shared {
            members: watch::Sender::new(Vec::new()),
            settings: watch::Sender::new(settings),
            state: Mutex::new(State { next_participant: 1, ..State::default() }),
            db,
        };
        Ok(LocalRegistry { shared: Arc::new(shared), participant: 0 })
    }

    /// Another participant (a "process") on the same registry.
    pub fn participant(&self) -> LocalRegistry {
        let mut state = self.state();
        let participant = state.next_participant;
        state.next_participant += 1;
        LocalRegistry { shared: Arc::clone(&self.shared), participant }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish_members(&self, state: &State) {
        self.shared.members.send_replace(state.members.values().cloned().collect());
    }

    fn leave(&self) {
        let mut state = self.state();
        state.members.remove(&self.participant);
        state.worker_ids.retain(|_, holder| *holder != self.participant);
        state.leaders.retain(|_, (leader, _)| *leader != self.participant);
        self.publish_members(&state);
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        self.leave();
    }
}

#[async_trait]
impl Registry for LocalRegistry {
    async fn register(&self, member: Member) -> PortResult<()> {
        let mut state = self.state();
        state.members.insert(self.participant, member);
        self.publish_members(&state);
        Ok(())
    }

    async fn deregister(&self) -> PortResult<()> {
        self.leave();
        Ok(())
    }

    fn members(&self) -> watch::Receiver<Vec<Member>> {
        self.shared.members.subscribe()
    }

    async fn claim_worker_id(&self, max: u16) -> PortResult<u16> {
        let mut state = self.state();
        if !state.members.contains_key(&self.participant) {
            return Err(PortError::failed("local registry", "a worker id is claimed after registering"));
        }
        if let Some((&id, _)) = state.worker_ids.iter().find(|(_, holder)| **holder == self.participant) {
            return Ok(id);
        }
        let id = (0..=max)
            .find(|id| !state.worker_ids.contains_key(id))
            .ok_or_else(|| PortError::unavailable("local registry", format!("all {} worker ids are held", max + 1)))?;
        state.worker_ids.insert(id, self.participant);
        Ok(id)
    }

    async fn lead(&self, role: &str) -> PortResult<Option<Lead>> {
        let mut state = self.state();
        if !state.members.contains_key(&self.participant) {
            return Err(PortError::failed("local registry", "a role is led after registering"));
        }
        if let Some(&(leader, fence)) = state.leaders.get(role) {
            return Ok((leader == self.participant).then_some(Lead { era: 0, fence }));
        }
        state.fence += 1;
        let fence = state.fence;
        state.leaders.insert(role.to_owned(), (self.participant, fence));
        Ok(Some(Lead { era: 0, fence }))
    }

    fn settings(&self) -> watch::Receiver<Settings> {
        self.shared.settings.subscribe()
    }

    async fn set_setting(&self, key: &str, value: Option<&str>) -> PortResult<()> {
        if let Some(db) = &self.shared.db {
            let stored = format!("{SETTING_PREFIX}{key}");
            match value {
                Some(value) => db.meta.insert(stored, value.as_bytes()).map_err(storage_error)?,
                None => db.meta.remove(stored).map_err(storage_error)?,
            }
            db.sync().await?;
        }
        self.shared.settings.send_modify(|settings| {
            match value {
                Some(value) => settings.insert(key.to_owned(), value.to_owned()),
                None => settings.remove(key),
            };
        });
        Ok(())
    }

    async fn status(&self) -> PortResult<RegistryStatus> {
        let state = self.state();
        let holder = |participant: &u64| {
            state.members.get(participant).map_or_else(|| format!("participant {participant}"), |m| m.instance.clone())
        };
        Ok(RegistryStatus {
            servers: vec![ServerStatus {
                name: "in process".to_owned(),
                endpoint: String::new(),
                healthy: true,
                leader: true,
            }],
            members: state.members.values().cloned().collect(),
            worker_ids: state.worker_ids.iter().map(|(&id, participant)| (id, holder(participant))).collect(),
            leaders: state.leaders.iter().map(|(role, (leader, _))| (role.clone(), holder(leader))).collect(),
        })
    }
}
