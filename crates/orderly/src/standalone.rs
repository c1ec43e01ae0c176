//! The standalone profile: every adapter on one embedded database under `data_dir` (the payment service
//! in process, or over gRPC when endpoints are configured), wired to the flow.

use std::sync::Arc;

use anyhow::Context;
use orderly_app::Orderly;
use orderly_app::ports::Payments;

use crate::config::Config;
use crate::registry::Opened;

/// Opens (or recovers) the standalone profile on `config.data_dir`, with its in-process registry.
pub async fn open(config: &Config) -> anyhow::Result<Opened> {
    let clock = Arc::new(orderly_clock::SystemClock);
    let payments: Option<Arc<dyn Payments>> = if config.payments.endpoints.is_empty() {
        None
    } else {
        tracing::info!(endpoints = ?config.payments.endpoints, "payment service over gRPC");
        Some(Arc::new(orderly_payment::GrpcPayments::new(config.payments.clone())?))
    };
    let (ports, registry) =
        orderly_local::open_with_registry(&config.data_dir, clock, &config.local, payments).await.with_context(
            || format!("opening the store in {} (is a server still running on it?)", config.data_dir.display()),
        )?;
    Ok(Opened { orderly: Orderly::new(ports, config.flow.clone()), registry: Arc::new(registry), shared_rates: None })
}
