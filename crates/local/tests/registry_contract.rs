//! The Registry contract on the in-process registry (the standalone profile's).

use std::sync::Arc;

use async_trait::async_trait;
use orderly_app::registry::Registry;
use orderly_contract::RegistryFixture;
use orderly_local::LocalRegistry;

struct InProcess(LocalRegistry);

#[async_trait]
impl RegistryFixture for InProcess {
    async fn participant(&self) -> Arc<dyn Registry> {
        Arc::new(self.0.participant())
    }
    fn ttl_ms(&self) -> u64 {
        0
    }
}

orderly_contract::registry_contract!(|| async {
    Arc::new(InProcess(LocalRegistry::open(None).expect("in memory"))) as Arc<dyn RegistryFixture>
});

/// Each "process" on a runtime of its own: its end (the runtime dropped) releases the database.
#[test]
fn settings_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || {
        let db = orderly_local::LocalDb::open(dir.path(), orderly_local::Durability::Fsync).expect("open");
        LocalRegistry::open(Some(db)).expect("registry")
    };
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime().block_on(async {
        let registry = open();
        registry.set_setting("flow.unpaid_timeout_ms", Some("60000")).await.expect("set");
        registry.set_setting("rate_limit.burst", Some("10")).await.expect("set");
        registry.set_setting("rate_limit.burst", None).await.expect("remove");
    });
    let settings = runtime().block_on(async { open().settings().borrow().clone() });
    assert_eq!(settings, orderly_app::Settings::from([("flow.unpaid_timeout_ms".to_owned(), "60000".to_owned())]));
}
