//! Configuration: defaults, then an optional TOML file, then `ORDERLY_*` environment variables
//! (`__` separates nesting: `ORDERLY_FLOW__UNPAID_TIMEOUT_MS=60000`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use orderly_api::RateLimitConfig;
use orderly_app::FlowConfig;
use orderly_local::LocalConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `ORDERLY_HTTP_ADDR`.
    pub http_addr: SocketAddr,
    /// `ORDERLY_DATA_DIR`: the embedded store, the bus and the generated secrets live here.
    pub data_dir: PathBuf,
    /// A catalog file (the admin endpoint's JSON) loaded at start; commodities already known are skipped,
    /// so restarts do not add stock again.
    pub catalog_file: Option<PathBuf>,
    pub flow: FlowConfig,
    pub local: LocalConfig,
    pub rate_limit: RateLimitConfig,
    pub auth: AuthConfig,
    pub workers: WorkerConfig,
    /// Where `serve` and `audit` find the payment service: no endpoints = in process.
    pub payments: orderly_payment::ClientConfig,
    /// `orderly payment`: the payment service as its own process.
    pub payment_service: PaymentServiceConfig,
    /// `orderly api` and `orderly worker`: the cluster profile's servers.
    pub cluster: crate::cluster::ClusterConfig,
    /// Graceful shutdown waits this long for in-flight requests.
    pub shutdown_grace_ms: u64,
    /// `ORDERLY_NAIVE_BASELINE`: also serve `POST /api/baseline/orders`, the naive design `orderly bench
    /// --naive-baseline` compares against (one synchronous store transaction per cart; bypasses the cache).
    pub naive_baseline: bool,
    /// `ORDERLY_METRICS_ADDR`: where a worker process serves `GET /metrics` (an API serves it on
    /// `http_addr`). None: the worker serves none.
    pub metrics_addr: Option<SocketAddr>,
    /// `ORDERLY_OTLP_ENDPOINT` (e.g. `http://127.0.0.1:4317`): export the order path's spans over OTLP
    /// gRPC to a collector (Jaeger, Tempo, the OpenTelemetry Collector). None (the default): logs only.
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentServiceConfig {
    /// `ORDERLY_PAYMENT_SERVICE__LISTEN_ADDR`.
    pub listen_addr: SocketAddr,
    /// Its own ledger (and the simulated acquirer's records) in the embedded store, when no
    /// `postgres_url` is set; never the order store's directory.
    pub data_dir: PathBuf,
    /// `ORDERLY_PAYMENT_SERVICE__POSTGRES_URL`: the ledger in PostgreSQL instead, shared by every payment
    /// instance pointed at it (the cluster profile), in schema `postgres_schema` (created and migrated
    /// at start; never the order store's tables).
    pub postgres_url: Option<String>,
    pub postgres_schema: String,
    pub postgres_connections_max: u32,
    /// `ORDERLY_PAYMENT_SERVICE__REGISTER`: register in the cluster's etcd (`cluster.etcd_endpoints`) so
    /// the APIs and workers find this instance (the cluster profile); off, clients are pointed at it by
    /// `payments.endpoints`.
    pub register: bool,
}

impl Default for PaymentServiceConfig {
    fn default() -> Self {
        PaymentServiceConfig {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 50_051)),
            data_dir: PathBuf::from("./data-payment"),
            postgres_url: None,
            postgres_schema: "payment".to_owned(),
            postgres_connections_max: 8,
            register: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HMAC secret of bearer tokens. Unset: generated once and kept in `<data_dir>/secrets.json`.
    pub secret: Option<String>,
    /// Admin token. Unset: generated once and kept in `<data_dir>/secrets.json`.
    pub admin_token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Pause of the create-order worker when its queue is empty (bounds the pending → to_pay delay).
    pub create_idle_ms: u64,
    /// Pause of the other workers when idle (bounds timer lateness).
    pub idle_ms: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig { create_idle_ms: 2, idle_ms: 50 }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            catalog_file: None,
            flow: FlowConfig::default(),
            local: LocalConfig::default(),
            rate_limit: RateLimitConfig::default(),
            auth: AuthConfig::default(),
            workers: WorkerConfig::default(),
            payments: orderly_payment::ClientConfig::default(),
            payment_service: PaymentServiceConfig::default(),
            cluster: crate::cluster::ClusterConfig::default(),
            shutdown_grace_ms: 10_000,
            naive_baseline: false,
            metrics_addr: None,
            otlp_endpoint: None,
        }
    }
}

impl Config {
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            anyhow::ensure!(file.exists(), "config file {} does not exist", file.display());
            figment = figment.merge(Toml::file(file));
        }
        // ORDERLY_LOG and ORDERLY_CONFIG steer the binary itself, not the configuration.
        let env = Env::prefixed("ORDERLY_").filter(|key| !(key == "log" || key == "config")).split("__");
        figment = figment.merge(env);
        let config: Config = figment.extract().context("invalid configuration")?;
        // A snowflake worker id must fit its bits; a wrong one is a configuration error, not a panic.
        for (key, worker_id) in [
            ("local.worker_id", config.local.worker_id),
            ("cluster.worker_id", config.cluster.worker_id.unwrap_or_default()),
        ] {
            anyhow::ensure!(
                worker_id <= orderly_domain::snowflake::WORKER_ID_MAX,
                "invalid configuration: {key} = {worker_id} must be at most {}",
                orderly_domain::snowflake::WORKER_ID_MAX
            );
        }
        Ok(config)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Secrets {
    pub token_secret: String,
    pub admin_token: String,
}

/// The configured secrets, or the ones generated once under the data directory.
pub fn secrets(config: &Config) -> anyhow::Result<Secrets> {
    let path = config.data_dir.join("secrets.json");
    let stored: Option<Secrets> = match std::fs::read(&path) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let stored = match stored {
        Some(stored) => stored,
        None => {
            let generated = Secrets { token_secret: random_text(), admin_token: random_text() };
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("creating {}", config.data_dir.display()))?;
            write_private(&path, &serde_json::to_vec_pretty(&generated)?)?;
            generated
        }
    };
    Ok(Secrets {
        token_secret: config.auth.secret.clone().unwrap_or(stored.token_secret),
        admin_token: config.auth.admin_token.clone().unwrap_or(stored.admin_token),
    })
}

fn random_text() -> String {
    use base64::Engine;
    use rand::TryRngCore;
    let mut bytes = [0u8; 24];
    // The OS generator does not fail on Linux; a failure here is worth stopping for.
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).unwrap_or_else(|e| panic!("no OS randomness: {e}"));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes).with_context(|| format!("writing {}", path.display()))
}
