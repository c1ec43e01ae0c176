//! The wiring of orderly's two profiles and the roles a process runs, shared by the `orderly` binary and
//! the bench (which starts the same server).
//!
//! # Layout
//! - [`config`]: defaults, TOML file, `ORDERLY_*` environment; the token secrets kept in the data directory.
//! - [`standalone`]: the standalone profile — every adapter on one embedded database.
//! - [`cluster`]: the cluster profile — PostgreSQL, Redis, RabbitMQ and the payment service over gRPC.
//! - [`registry`]: a process in its registry — registration, settings applied without a restart.
//! - [`serve`]: the roles — HTTP API, workers, the payment service — run until a shutdown signal.

pub mod cluster;
pub mod config;
pub mod registry;
pub mod serve;
pub mod standalone;

/// Our own events at info; the storage engine's recovery chatter only when it warns.
const DEFAULT_LOG_FILTER: &str = "info,fjall=warn,lsm_tree=warn";

/// Logs to stderr, filtered by `ORDERLY_LOG` (default: our own events at info).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ORDERLY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .with_writer(std::io::stderr)
        .init();
}
