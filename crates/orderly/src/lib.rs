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

/// What [`init_logging`] started that must be flushed before the process ends: the OTLP exporter's
/// spans still in its batch. Dropped at the end of `main`.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("orderly: spans not all exported at exit: {error}");
        }
    }
}

/// Logs to stderr, filtered by `ORDERLY_LOG` (default: our own events at info); with `otlp_endpoint`,
/// the order path's spans (`orderly::trace`, whatever the log filter says) are also exported over OTLP
/// gRPC as `service` — an order's spans in every process share its trace id (`orderly_app::trace`).
/// Call inside the tokio runtime (the exporter's client runs on it).
pub fn init_logging(otlp_endpoint: Option<&str>, service: &str) -> anyhow::Result<Telemetry> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_env("ORDERLY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log file keeps plain text (and greppable trace ids).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let mut telemetry = Telemetry::default();
    let export = match otlp_endpoint.filter(|endpoint| !endpoint.is_empty()) {
        None => None,
        Some(endpoint) => {
            use opentelemetry::trace::TracerProvider as _;
            use opentelemetry_otlp::WithExportConfig as _;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|error| anyhow::anyhow!("OTLP exporter to {endpoint}: {error}"))?;
            let resource = opentelemetry_sdk::Resource::builder().with_service_name(service.to_owned()).build();
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build();
            let tracer = provider.tracer("orderly");
            telemetry.provider = Some(provider);
            // The order path's spans only, whatever ORDERLY_LOG says (not the exporter's own gRPC calls).
            let only_orders = tracing_subscriber::filter::Targets::new()
                .with_target(orderly_app::trace::TARGET, tracing::Level::DEBUG);
            Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(only_orders))
        }
    };
    tracing_subscriber::registry().with(log.with_filter(filter)).with(export).init();
    Ok(telemetry)
}
