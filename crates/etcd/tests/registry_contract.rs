//! The Registry contract on etcd (`TEST_ETCD_ENDPOINTS`, default `http://127.0.0.1:2379`; `.ci/run`
//! starts one). Each case has a namespace of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use orderly_app::registry::Registry;
use orderly_contract::RegistryFixture;
use orderly_etcd::{EtcdConfig, EtcdRegistry};

const TTL_S: i64 = 2;

fn endpoints() -> Vec<String> {
    std::env::var("TEST_ETCD_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect()
}

struct OnEtcd {
    namespace: String,
}

#[async_trait]
impl RegistryFixture for OnEtcd {
    async fn participant(&self) -> Arc<dyn Registry> {
        let config = EtcdConfig { lease_ttl_s: TTL_S, ..EtcdConfig::new(endpoints(), self.namespace.clone()) };
        Arc::new(EtcdRegistry::connect(config).await.expect("etcd reachable (TEST_ETCD_ENDPOINTS)"))
    }
    fn ttl_ms(&self) -> u64 {
        TTL_S as u64 * 1000
    }
}

fn namespace() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("orderly-test-{}-{nanos}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

orderly_contract::registry_contract!(|| async {
    Arc::new(OnEtcd { namespace: namespace() }) as Arc<dyn RegistryFixture>
});

/// A lease lost behind the process's back (as after etcd was out of reach longer than the TTL): the
/// keep-alive finds it gone and registers again, with the same worker id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_replaced_and_the_registration_written_again() {
    use orderly_app::registry::{Member, Role};
    let fixture = OnEtcd { namespace: namespace() };
    let process = fixture.participant().await;
    let member = Member {
        role: Role::Worker,
        instance: "w1".to_owned(),
        address: String::new(),
        version: "test".to_owned(),
        started_ms: 1,
    };
    process.register(member.clone()).await.expect("register");
    let id = process.claim_worker_id(1023).await.expect("claim");

    let mut etcd = etcd_client::Client::connect(endpoints(), None).await.expect("connect");
    let key = format!("/{}/members/worker/w1", fixture.namespace);
    let lease = |response: etcd_client::GetResponse| response.kvs().first().map(etcd_client::KeyValue::lease);
    let old = lease(etcd.get(key.as_str(), None).await.expect("get")).expect("registered under a lease");
    etcd.lease_revoke(old).await.expect("revoke");

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(TTL_S as u64 + 2);
    loop {
        let now = lease(etcd.get(key.as_str(), None).await.expect("get"));
        if now.is_some_and(|lease| lease != old) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not registered again within the TTL");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let status = process.status().await.expect("status");
    assert_eq!(status.worker_ids.get(&id).map(String::as_str), Some("w1"), "the worker id is held again");
    assert_eq!(process.claim_worker_id(1023).await.expect("claim"), id, "and it is the same one");
}
