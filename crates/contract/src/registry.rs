//! The `Registry` contract: members under leases seen by every participant, a participant gone without
//! a word leaves within the TTL, worker ids unique among live participants, settings reach everyone.
//! Each case takes a fresh registry; a participant stands for a process.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orderly_app::registry::{Member, Registry, Role, Settings};
use tokio::sync::watch;

#[async_trait]
pub trait RegistryFixture: Send + Sync {
    /// A new participant on this fixture's registry.
    async fn participant(&self) -> Arc<dyn Registry>;
    /// How long a participant that stopped without deregistering may stay listed.
    fn ttl_ms(&self) -> u64;
}

/// The settings and membership a change must reach within.
const REACH: Duration = Duration::from_secs(1);

fn member(role: Role, instance: &str) -> Member {
    Member {
        role,
        instance: instance.to_owned(),
        address: format!("http://127.0.0.1/{instance}"),
        version: "test".to_owned(),
        started_ms: 1_000,
    }
}

/// Waits until the watched value passes `test`; panics naming `what` after `within`.
async fn until<T: Clone + std::fmt::Debug>(
    mut watched: watch::Receiver<T>,
    within: Duration,
    what: &str,
    test: impl Fn(&T) -> bool,
) {
    let waited = tokio::time::timeout(within, watched.wait_for(|value| test(value))).await.map(|r| r.is_ok());
    match waited {
        Ok(true) => {}
        Ok(false) => panic!("{what}: the watch ended"),
        Err(_) => panic!("{what}: not within {within:?}; last seen {:?}", *watched.borrow()),
    }
}

fn instances(members: &[Member]) -> Vec<&str> {
    let mut names: Vec<&str> = members.iter().map(|m| m.instance.as_str()).collect();
    names.sort_unstable();
    names
}

pub async fn a_registered_member_is_seen_by_every_participant(fixture: Arc<dyn RegistryFixture>) {
    let (a, b) = (fixture.participant().await, fixture.participant().await);
    a.register(member(Role::Payment, "pay-a")).await.expect("register a");
    b.register(member(Role::Api, "api-b")).await.expect("register b");
    for (name, seen_by) in [("a", &a), ("b", &b)] {
        until(seen_by.members(), REACH, &format!("{name} sees both"), |m| instances(m) == ["api-b", "pay-a"]).await;
    }
    let listed = a.members().borrow().clone();
    let pay = listed.iter().find(|m| m.instance == "pay-a").expect("listed");
    assert_eq!(pay, &member(Role::Payment, "pay-a"), "a member is listed as registered");
    // Registering again replaces the registration: one entry per process.
    a.register(Member { address: "http://127.0.0.1/moved".to_owned(), ..member(Role::Payment, "pay-a") })
        .await
        .expect("register again");
    until(b.members(), REACH, "the new address", |m| {
        m.iter().filter(|m| m.instance == "pay-a").map(|m| m.address.as_str()).eq(["http://127.0.0.1/moved"])
    })
    .await;
}

pub async fn a_deregistered_member_leaves_at_once(fixture: Arc<dyn RegistryFixture>) {
    let (a, b) = (fixture.participant().await, fixture.participant().await);
    a.register(member(Role::Worker, "worker-a")).await.expect("register");
    until(b.members(), REACH, "registered", |m| instances(m) == ["worker-a"]).await;
    a.deregister().await.expect("deregister");
    until(b.members(), REACH, "gone", |m| m.is_empty()).await;
}

pub async fn a_participant_gone_without_a_word_leaves_within_the_ttl(fixture: Arc<dyn RegistryFixture>) {
    let (a, b) = (fixture.participant().await, fixture.participant().await);
    a.register(member(Role::Payment, "pay-a")).await.expect("register");
    b.register(member(Role::Payment, "pay-b")).await.expect("register");
    until(b.members(), REACH, "registered", |m| instances(m) == ["pay-a", "pay-b"]).await;
    drop(a);
    let within = Duration::from_millis(fixture.ttl_ms()) + REACH * 2;
    until(b.members(), within, "a gone, b stays", |m| instances(m) == ["pay-b"]).await;
}

pub async fn worker_ids_are_unique_among_live_participants(fixture: Arc<dyn RegistryFixture>) {
    let mut participants = Vec::new();
    for n in 0..4 {
        let participant = fixture.participant().await;
        participant.register(member(Role::Worker, &format!("w{n}"))).await.expect("register");
        participants.push(participant);
    }
    let claims = participants.iter().map(|p| p.claim_worker_id(3));
    let mut ids: Vec<u16> =
        futures_util::future::join_all(claims).await.into_iter().map(|id| id.expect("claim")).collect();
    let again = participants[0].claim_worker_id(3).await.expect("claim again");
    assert_eq!(again, ids[0], "a holder claiming again keeps its id");
    ids.sort_unstable();
    assert_eq!(ids, [0, 1, 2, 3], "racing claims each got their own id");

    let late = fixture.participant().await;
    late.register(member(Role::Worker, "late")).await.expect("register");
    late.claim_worker_id(3).await.expect_err("every id is held by a live participant");
    let status = late.status().await.expect("status");
    assert_eq!(status.worker_ids.len(), 4, "{status:?}");

    // A holder gone without a word frees its id within the TTL; nobody else's is taken.
    let freed = participants[0].claim_worker_id(3).await.expect("held");
    participants.remove(0);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(fixture.ttl_ms()) + REACH * 2;
    let taken = loop {
        match late.claim_worker_id(3).await {
            Ok(id) => break id,
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(error) => panic!("the freed id was not claimable within the TTL: {error}"),
        }
    };
    assert_eq!(taken, freed, "the only free id is the dead holder's");
}

pub async fn one_leader_per_role_and_a_newer_one_has_a_larger_fence(fixture: Arc<dyn RegistryFixture>) {
    let (a, b) = (fixture.participant().await, fixture.participant().await);
    a.register(member(Role::Worker, "w-a")).await.expect("register");
    b.register(member(Role::Worker, "w-b")).await.expect("register");
    let first = a.lead("reconciler").await.expect("lead").expect("a leads a free role");
    assert_eq!(a.lead("reconciler").await.expect("lead"), Some(first), "and keeps it, same fence");
    assert_eq!(b.lead("reconciler").await.expect("lead"), None, "one leader at a time");
    assert!(b.lead("outbox").await.expect("lead").is_some(), "roles are apart");
    let status = b.status().await.expect("status");
    assert_eq!(status.leaders.get("reconciler").map(String::as_str), Some("w-a"), "{status:?}");
    drop(a);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(fixture.ttl_ms()) + REACH * 2;
    let next = loop {
        if let Some(lead) = b.lead("reconciler").await.expect("lead") {
            break lead;
        }
        assert!(tokio::time::Instant::now() < deadline, "the role was not free within the TTL");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(next.era, first.era, "one registry, one era");
    assert!(next.fence > first.fence, "the new leader's fence {next:?} is larger than the old one's {first:?}");
}

pub async fn a_setting_reaches_every_participant(fixture: Arc<dyn RegistryFixture>) {
    let (a, b) = (fixture.participant().await, fixture.participant().await);
    let watched = b.settings();
    a.set_setting("rate_limit.orders_per_second", Some("250")).await.expect("set");
    let expected = Settings::from([("rate_limit.orders_per_second".to_owned(), "250".to_owned())]);
    until(watched.clone(), REACH, "set", |s| *s == expected).await;
    a.set_setting("flow.unpaid_timeout_ms", Some("60000")).await.expect("set");
    a.set_setting("rate_limit.orders_per_second", None).await.expect("remove");
    let expected = Settings::from([("flow.unpaid_timeout_ms".to_owned(), "60000".to_owned())]);
    until(watched, REACH, "removed and set", |s| *s == expected).await;
    // A participant that joins later reads what is in force.
    let c = fixture.participant().await;
    until(c.settings(), REACH, "a newcomer", |s| *s == expected).await;
}

pub async fn status_lists_servers_and_members(fixture: Arc<dyn RegistryFixture>) {
    let a = fixture.participant().await;
    a.register(member(Role::Api, "api-a")).await.expect("register");
    let id = a.claim_worker_id(1023).await.expect("claim");
    let status = a.status().await.expect("status");
    assert!(!status.servers.is_empty() && status.servers.iter().any(|s| s.healthy), "{status:?}");
    assert_eq!(instances(&status.members), ["api-a"]);
    assert_eq!(status.worker_ids.get(&id).map(String::as_str), Some("api-a"));
}
