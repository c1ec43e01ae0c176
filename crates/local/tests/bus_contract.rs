//! The `Bus` contract suite against the embedded queue, on a manual clock.

use std::sync::Arc;

use async_trait::async_trait;
use orderly_app::time::ManualClock;
use orderly_app::{Bus, Clock};
use orderly_contract::BusFixture;
use orderly_local::{Durability, LocalBus, LocalDb};

struct Fixture {
    bus: Arc<LocalBus>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

#[async_trait]
impl BusFixture for Fixture {
    fn bus(&self) -> Arc<dyn Bus> {
        Arc::clone(&self.bus) as Arc<dyn Bus>
    }
    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
    async fn advance_ms(&self, ms: u64) {
        self.clock.advance_ms(ms);
    }
}

orderly_contract::bus_contract!(|| async {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let db = LocalDb::open(dir.path(), Durability::Os).expect("db");
    let bus = Arc::new(LocalBus::new(db, Arc::clone(&clock) as Arc<dyn Clock>, 30_000).expect("bus"));
    Arc::new(Fixture { bus, clock, _dir: dir }) as Arc<dyn BusFixture>
});
