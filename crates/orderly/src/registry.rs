//! A process in its registry: its registration, and the settings it applies without a restart.

use std::sync::Arc;

use orderly_api::ApiState;
use orderly_app::Orderly;
use orderly_app::registry::{Member, Registry, Role};
use orderly_app::settings::Live;

use crate::config::Config;

/// A profile's adapters wired to the flow, and the registry the process belongs to.
#[derive(Debug)]
pub struct Opened {
    pub orderly: Orderly,
    pub registry: Arc<dyn Registry>,
    /// The buckets the APIs of a cluster share (none in the standalone profile: one process).
    pub shared_rates: Option<Arc<dyn orderly_app::SharedRates>>,
}

/// This process as a member of `role` (no address yet: it is set once the process listens).
pub fn member(role: Role) -> Member {
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Member {
        role,
        instance: format!("{role}-{}-{started_ms}", std::process::id()),
        address: String::new(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_ms,
    }
}

/// What can change at run time, as this process's configuration sets it.
pub fn base(config: &Config) -> Live {
    Live { flow: config.flow.clone(), rate_limit: config.rate_limit.clone() }
}

/// Applies the registry's settings now and after every change, for as long as the process lives: the
/// flow's settings to `orderly`, the rate limit to `api` (when the process serves HTTP). A change that
/// does not check (written behind the admin API's back) is refused whole, said in the log, and the last
/// good settings stay.
pub fn apply_settings(registry: &dyn Registry, base: Live, orderly: Orderly, api: Option<ApiState>) {
    let mut settings = registry.settings();
    let apply = move |settings: &orderly_app::Settings| match base.with(settings) {
        Ok(live) => {
            orderly.set_config(live.flow);
            if let Some(api) = &api {
                api.set_limits(&live.rate_limit);
            }
            tracing::info!(?settings, "settings in force");
        }
        Err(error) => tracing::error!(%error, "settings refused; the last good ones stay in force"),
    };
    apply(&settings.borrow_and_update());
    tokio::spawn(async move {
        while settings.changed().await.is_ok() {
            let now = settings.borrow_and_update().clone();
            apply(&now);
        }
    });
}
