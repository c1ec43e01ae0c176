//! `orderly serve`: the standalone profile in one process.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use orderly_api::routes::CatalogBody;
use orderly_api::{ApiState, TokenAuth};
use orderly_app::registry::{Member, Registry, Role};
use orderly_app::workers::{self, Step};
use orderly_domain::CatalogEntry;
use orderly_ledger::{PaymentLedger, SimulatedAcquirer};

use crate::config::{self, Config};
use crate::registry::Opened;

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let opened = crate::standalone::open(&config).await?;
    if let Some(path) = &config.catalog_file {
        load_catalog_file(&opened.orderly, path).await?;
    }
    let member = crate::registry::member(Role::Api);
    run_roles(&config, opened, member, Roles { http: true, workers: true }, "standalone").await
}

/// What one process does: answer HTTP, run the workers, or both.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    pub http: bool,
    pub workers: bool,
}

/// `GET /metrics` of a process that serves no API (a worker, the payment service) on `address`, in a
/// task of its own for the life of the process. Where it listens.
async fn serve_metrics(
    address: std::net::SocketAddr,
    orderly: Option<orderly_app::Orderly>,
) -> anyhow::Result<std::net::SocketAddr> {
    let handle = orderly_api::observe::install().context("installing the metrics recorder")?;
    let listener =
        tokio::net::TcpListener::bind(address).await.with_context(|| format!("binding metrics on {address}"))?;
    let address = listener.local_addr()?;
    let app = orderly_api::observe::router(handle, orderly);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the metrics server stopped");
        }
    });
    tracing::info!(%address, "metrics served");
    Ok(address)
}

/// Runs `roles` on `opened` until SIGTERM or Ctrl-C — a process serving HTTP registered as `member` with
/// the address it listens on (opening a cluster profile registered it already) — applying the registry's settings as they change: in-flight requests finish, the
/// registration is withdrawn, then the workers stop (what they leave unacked is delivered again, to this
/// process or another).
pub async fn run_roles(
    config: &Config,
    opened: Opened,
    member: Member,
    roles: Roles,
    profile: &str,
) -> anyhow::Result<()> {
    let Opened { orderly, registry, shared_rates } = opened;
    let base = crate::registry::base(config);
    // The configuration's own values pass the same checks as a setting, or the process does not start.
    base.with(&orderly_app::Settings::new()).context("the configuration")?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for step in Step::ALL.into_iter().filter(|_| roles.workers) {
        let idle_ms = if step == Step::CreateOrders { config.workers.create_idle_ms } else { config.workers.idle_ms };
        tasks.push(tokio::spawn(workers::run(orderly.clone(), step, idle_ms, shutdown_rx.clone())));
    }

    if !roles.http {
        let metrics = match config.metrics_addr {
            Some(address) => Some(serve_metrics(address, Some(orderly.clone())).await?),
            None => None,
        };
        crate::registry::apply_settings(&*registry, base, orderly.clone(), None);
        tracing::info!(profile, "orderly worker running");
        match metrics {
            Some(address) => println!("worker running; metrics on {address}"),
            None => println!("worker running"),
        }
        shutdown_signal().await;
        tracing::info!("shutting down: stopping the workers");
        withdraw(&*registry).await;
        let _ = shutdown_tx.send(true);
        stop_workers(tasks, config.shutdown_grace_ms).await;
        return Ok(());
    }
    let secrets = config::secrets(config)?;
    let auth = TokenAuth::new(secrets.token_secret.into_bytes(), secrets.admin_token);
    let mut state = ApiState::new(orderly.clone(), auth, &config.rate_limit)
        .with_naive_baseline(config.naive_baseline)
        .with_registry(Arc::clone(&registry), base.clone());
    if let Some(rates) = shared_rates {
        state = state.with_shared_rates(rates);
    }
    // One recorder per process; a second server in the same process (tests) goes without.
    let state = match orderly_api::observe::install() {
        Ok(handle) => state.with_metrics(handle),
        Err(error) => {
            tracing::warn!(%error, "no /metrics in this process");
            state
        }
    };
    crate::registry::apply_settings(&*registry, base, orderly.clone(), Some(state.clone()));
    let app = orderly_api::router(state);
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding {}", config.http_addr))?;
    let address = listener.local_addr()?;
    // No Nagle: small answers must not wait for the client's delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    registry.register(Member { address: format!("http://{address}"), ..member }).await.context("registering")?;
    tracing::info!(%address, profile, workers = roles.workers, "orderly serving");
    // Scripts and tests read this line to find the port.
    println!("listening on {address}");

    let mut stop = shutdown_rx.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = stop.changed() => {}
        }
        tracing::info!("shutting down: finishing in-flight requests");
    });
    let result = server.await;
    withdraw(&*registry).await;
    // Stop workers after the last request: whatever they leave unacked is redelivered at the next start.
    let _ = shutdown_tx.send(true);
    stop_workers(tasks, config.shutdown_grace_ms).await;
    result.context("HTTP server failed")
}

/// A graceful stop leaves the registry at once (a killed process leaves when its lease runs out).
async fn withdraw(registry: &dyn Registry) {
    if let Err(error) = registry.deregister().await {
        tracing::warn!(%error, "could not deregister; the registration ends with its lease");
    }
}

async fn stop_workers(tasks: Vec<tokio::task::JoinHandle<()>>, grace_ms: u64) {
    let grace = Duration::from_millis(grace_ms);
    for task in tasks {
        if tokio::time::timeout(grace, task).await.is_err() {
            tracing::warn!("a worker did not stop in time");
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

/// `orderly payment`: the payment service as its own process, its ledger under its own directory or, when
/// `payment_service.postgres_url` is set, in PostgreSQL (shared with the other instances).
pub async fn payment_service(config: Config) -> anyhow::Result<()> {
    let service = &config.payment_service;
    let clock = Arc::new(orderly_clock::SystemClock);
    // etcd, once, for the registration and for following a Patroni primary.
    let etcd = match service.register || config.cluster.patroni_scope.is_some() {
        true => Some(crate::cluster::connect_registry(&config).await?),
        false => None,
    };
    let (ledger, home) = match &service.postgres_url {
        None => {
            let ledger = orderly_local::open_payment_ledger(&service.data_dir, clock, &config.local)
                .with_context(|| format!("opening the payment ledger in {}", service.data_dir.display()))?;
            (ledger, service.data_dir.display().to_string())
        }
        Some(url) => {
            let options = sqlx::postgres::PgConnectOptions::from_str(url).context("payment_service.postgres_url")?;
            let primary = orderly_postgres::Primary::new();
            // On a Patroni cluster, the ledger follows its primary (found in etcd).
            let options = match &etcd {
                Some(registry) => crate::cluster::follow_primary(&config, registry, options, &primary).await?,
                None => options,
            };
            let (book, captures) = orderly_postgres::payments::connect_payment_ledger(
                options,
                &service.postgres_schema,
                service.postgres_connections_max,
                &primary,
            )
            .await
            .context("connecting to the payment ledger in PostgreSQL")?;
            let acquirer = SimulatedAcquirer::new(captures, config.local.acquirer.clone(), clock.clone());
            let ledger = PaymentLedger::new(book, acquirer, clock, config.local.ledger.clone());
            (ledger, format!("postgres schema {}", service.postgres_schema))
        }
    };
    let listener = tokio::net::TcpListener::bind(service.listen_addr)
        .await
        .with_context(|| format!("binding {}", service.listen_addr))?;
    let address = listener.local_addr()?;
    // In the cluster, the APIs and workers find this instance in the registry.
    let registry = match etcd.filter(|_| service.register) {
        None => None,
        Some(registry) => {
            let member = Member { address: format!("http://{address}"), ..crate::registry::member(Role::Payment) };
            registry.register(member).await.context("registering in etcd")?;
            Some(registry)
        }
    };
    // Logged, not printed: scripts and tests read the first line for the gRPC port.
    if let Some(address) = config.metrics_addr {
        serve_metrics(address, None).await?;
        orderly_payment::server::describe_metrics();
    }
    tracing::info!(%address, ledger = %home, registered = registry.is_some(), "payment service serving (gRPC)");
    // Scripts and tests read this line to find the port.
    println!("listening on {address}");
    let result = orderly_payment::serve(listener, Arc::new(ledger), async {
        shutdown_signal().await;
        tracing::info!("payment service shutting down: finishing in-flight calls");
    })
    .await
    .context("payment service failed");
    if let Some(registry) = registry {
        withdraw(&*registry).await;
    }
    result
}

/// Loads commodities the store does not know yet, with their stock. Known ones are skipped, so a restart
/// with the same file adds nothing.
pub async fn load_catalog_file(orderly: &orderly_app::Orderly, path: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let catalog: CatalogBody = serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    let commodities: Vec<(CatalogEntry, u32)> = catalog
        .commodities
        .into_iter()
        .map(|item| {
            (
                CatalogEntry { commodity_id: item.commodity_id, shop_id: item.shop_id, unit_price: item.price },
                item.add_stock,
            )
        })
        .collect();
    let new_commodities = orderly.load_new_commodities(&commodities).await?;
    tracing::info!(file = %path.display(), new_commodities, "catalog file loaded");
    Ok(())
}
