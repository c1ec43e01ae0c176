//! `orderly`: one binary, roles as subcommands (the wiring is the `orderly` library beside it).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use orderly::config::{self, Config};
use orderly::{cluster, registry, serve, standalone};
use orderly_app::registry::Role;
use orderly_domain::Uid;

/// mimalloc instead of glibc's malloc: under load glibc's arenas took a sixth of the standalone server's
/// CPU (`_int_malloc`, `malloc_consolidate`, `unlink_chunk`, their locks; docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "orderly", version, about = "A high-concurrency order system")]
struct Cli {
    /// TOML configuration file (also `ORDERLY_CONFIG`).
    #[arg(long, global = true, env = "ORDERLY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the standalone profile: HTTP API and all workers, data under `data_dir`.
    Serve {
        /// Catalog file to load at start (commodities already known are skipped).
        #[arg(long)]
        catalog: Option<PathBuf>,
    },
    /// Cluster profile: the HTTP API only, on PostgreSQL, Redis and RabbitMQ (see `cluster` in the config).
    Api {
        /// Catalog file to load at start (commodities already known are skipped).
        #[arg(long)]
        catalog: Option<PathBuf>,
    },
    /// Cluster profile: the workers only (create orders, checks, timeouts, charges, outbox, reconciler).
    Worker,
    /// Runs the payment service (gRPC) as its own process, its ledger under `payment_service.data_dir`
    /// or, with `payment_service.postgres_url`, in PostgreSQL (shared by every instance pointed at it).
    Payment,
    /// Prints a bearer token for a buyer (development), or the admin token.
    Token {
        #[arg(long, required_unless_present = "admin")]
        uid: Option<u64>,
        /// Lifetime of the token.
        #[arg(long, default_value_t = 24 * 3600)]
        ttl_s: u64,
        /// Print the admin token instead.
        #[arg(long)]
        admin: bool,
    },
    /// Runs `orderly-bench orders ARGS`: the load generator is a binary of its own, built beside this
    /// one (`cargo build --release -p orderly-bench`; `orderly-bench orders --help` lists its options).
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Runs `orderly-bench payment ARGS`: the payment service's latency over gRPC.
    #[command(disable_help_flag = true)]
    BenchPayment {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Settings changed at run time, through a running API's admin endpoint (`/api/admin/config`): every
    /// process of the system applies a change within a second.
    Config {
        /// The API to ask (default: `http_addr` of the configuration).
        #[arg(long)]
        url: Option<String>,
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// The cluster as its registry (etcd, `cluster.etcd_endpoints`) sees it.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Checks invariants I1–I5 on a stopped standalone data directory (or, with `--cluster`, on the
    /// cluster profile's PostgreSQL, Redis and payment service); exits 1 on any violation.
    Audit {
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// How long an order may take to become definite.
        #[arg(long, default_value_t = 60_000)]
        deadline_ms: u64,
        /// Audit the cluster (configured by `cluster.*` and `payments.endpoints`) as it is; its own
        /// workers keep running, so say `--quiet` only when nothing is in flight (no load, queues empty):
        /// then leaked stock and cache = store are checked too.
        #[arg(long)]
        cluster: bool,
        #[arg(long, requires = "cluster")]
        quiet: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Every setting in force (`*`: changed at run time).
    List,
    /// One setting's value in force.
    Get { key: String },
    /// Sets a setting for every process (VALUE is JSON: `250`, `"text"`); checked first.
    Set { key: String, value: String },
    /// Back to each process's own configuration.
    Unset { key: String },
}

#[derive(Debug, Subcommand)]
enum ClusterAction {
    /// etcd's members (health, leader), the processes registered (role, address, version, age), the
    /// snowflake worker ids they hold and the roles they lead.
    Status,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let service = match &cli.command {
        Command::Api { .. } => "orderly-api",
        Command::Worker => "orderly-worker",
        Command::Payment => "orderly-payment",
        _ => "orderly",
    };
    let _telemetry = {
        let _inside = runtime.enter();
        orderly::init_logging(config.otlp_endpoint.as_deref(), service)?
    };
    match cli.command {
        Command::Serve { catalog } => {
            if catalog.is_some() {
                config.catalog_file = catalog;
            }
            runtime.block_on(serve::serve(config))
        }
        Command::Token { uid, ttl_s, admin } => {
            let secrets = config::secrets(&config)?;
            if admin {
                println!("{}", secrets.admin_token);
            } else {
                let auth = orderly_api::TokenAuth::new(secrets.token_secret.into_bytes(), secrets.admin_token);
                let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
                println!("{}", auth.mint(Uid(uid.unwrap_or_default()), now_s + ttl_s));
            }
            Ok(())
        }
        Command::Audit { json, deadline_ms, cluster, quiet } => {
            runtime.block_on(audit(config, json, deadline_ms, cluster.then_some(quiet)))
        }
        Command::Payment => runtime.block_on(serve::payment_service(config)),
        Command::Api { catalog } => runtime.block_on(async {
            let member = registry::member(Role::Api);
            let opened = cluster::open(&config, Some(member.clone())).await?;
            if let Some(path) = catalog {
                serve::load_catalog_file(&opened.orderly, &path).await?;
            }
            serve::run_roles(&config, opened, member, serve::Roles { http: true, workers: false }, "cluster").await
        }),
        Command::Worker => runtime.block_on(async {
            let member = registry::member(Role::Worker);
            let opened = cluster::open(&config, Some(member.clone())).await?;
            serve::run_roles(&config, opened, member, serve::Roles { http: false, workers: true }, "cluster").await
        }),
        Command::Config { url, action } => runtime.block_on(admin_config(&config, url, action)),
        Command::Cluster { action: ClusterAction::Status } => runtime.block_on(cluster_status(&config)),
        Command::Bench { args } => run_bench("orders", &args, cli.config.as_deref()),
        Command::BenchPayment { args } => run_bench("payment", &args, cli.config.as_deref()),
    }
}

/// `orderly config …`: through an API's admin endpoint, with the admin token of the data directory.
async fn admin_config(config: &Config, url: Option<String>, action: ConfigAction) -> anyhow::Result<()> {
    let base = url.unwrap_or_else(|| format!("http://{}", config.http_addr));
    let admin = config::secrets(config)?.admin_token;
    let http = reqwest::Client::new();
    let endpoint = |key: &str| format!("{base}/api/admin/config/{key}");
    let request = match &action {
        ConfigAction::List | ConfigAction::Get { .. } => http.get(format!("{base}/api/admin/config")),
        ConfigAction::Set { key, value } => http.put(endpoint(key)).body(value.clone()),
        ConfigAction::Unset { key } => http.delete(endpoint(key)),
    };
    let answer = request.bearer_auth(admin).send().await.with_context(|| format!("asking {base}"))?;
    let answer: serde_json::Value = answer.json().await.with_context(|| format!("reading the answer of {base}"))?;
    if answer["status"] != 200 {
        // A refusal is an answer, not a failure of this command: said plainly, exit status 1.
        eprintln!("{}: {}", answer["code"].as_str().unwrap_or("error"), answer["message"].as_str().unwrap_or(""));
        std::process::exit(1);
    }
    let data = &answer["data"];
    match action {
        ConfigAction::List => {
            let changed = data["settings"].as_object().cloned().unwrap_or_default();
            for (key, value) in data["effective"].as_object().into_iter().flatten() {
                let mark = if changed.contains_key(key) { "*" } else { " " };
                println!("{mark} {key} = {}", value.as_str().unwrap_or_default());
            }
        }
        ConfigAction::Get { key } => match data["effective"].get(&key).and_then(serde_json::Value::as_str) {
            Some(value) => println!("{value}"),
            None => anyhow::bail!("no such setting: {key}"),
        },
        ConfigAction::Set { key, .. } => println!("{key} = {}", data["value"].as_str().unwrap_or_default()),
        ConfigAction::Unset { key } => println!("{key}: back to each process's configuration"),
    }
    Ok(())
}

/// `orderly cluster status`: straight from etcd, so it works with every API down.
async fn cluster_status(config: &Config) -> anyhow::Result<()> {
    use orderly_app::registry::Registry;
    let registry = cluster::connect_registry(config).await?;
    let status = registry.status().await.context("reading the registry")?;
    println!("etcd:");
    for server in &status.servers {
        let health = if server.healthy { "healthy" } else { "not answering" };
        let leader = if server.leader { ", leader" } else { "" };
        println!("  {:<6} {:<26} {health}{leader}", server.name, server.endpoint);
    }
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    let ids: std::collections::BTreeMap<&str, u16> =
        status.worker_ids.iter().map(|(id, holder)| (holder.as_str(), *id)).collect();
    println!("members:");
    for member in &status.members {
        let age_s = now_ms.saturating_sub(member.started_ms) / 1000;
        let id = ids.get(member.instance.as_str()).map_or("-".to_owned(), |id| id.to_string());
        println!(
            "  {:<8} {:<32} {:<24} worker id {:<5} v{} up {age_s} s",
            member.role, member.instance, member.address, id, member.version
        );
    }
    println!("leaders:");
    for (role, instance) in &status.leaders {
        println!("  {role:<12} {instance}");
    }
    Ok(())
}

/// `orderly bench …` as `orderly-bench <command> …`, the bench binary built beside this one, with this
/// binary as the server it starts (`--server-exe`) and this configuration; exits with its status.
fn run_bench(command: &str, args: &[String], config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let this = std::env::current_exe().context("finding this binary")?;
    let exe = this.with_file_name("orderly-bench");
    if !exe.exists() {
        anyhow::bail!(
            "the bench is a binary of its own: build it with `cargo build --release -p orderly -p orderly-bench`, \
             or run `cargo run --release -p orderly-bench -- {command} …` ({} not found)",
            exe.display()
        );
    }
    let mut bench = std::process::Command::new(&exe);
    bench.arg(command).args(args).arg("--server-exe").arg(&this);
    if let Some(config) = config {
        bench.env("ORDERLY_CONFIG", config);
    }
    let status = bench.status().with_context(|| format!("running {}", exe.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

/// `cluster`: `Some(quiet)` audits the cluster profile as it is; `None` the standalone data directory.
async fn audit(config: Config, json: Option<PathBuf>, deadline_ms: u64, cluster: Option<bool>) -> anyhow::Result<()> {
    let report = match cluster {
        Some(quiet) => {
            let orderly = cluster::open(&config, None).await?.orderly;
            orderly.audit(quiet, deadline_ms).await.context("auditing")?
        }
        None => {
            let orderly = standalone::open(&config).await?.orderly;
            // Opening rebuilt the cache from the store; draining finishes what was in flight, so the
            // store is quiet.
            orderly.drain().await.context("finishing in-flight work")?;
            orderly.audit(true, deadline_ms).await.context("auditing")?
        }
    };
    println!("{:<14} {:>10} {:>10} {:>10} {:>10}", "commodity", "initial", "available", "sold", "cache");
    for row in &report.stock {
        let cache = row.cache.map_or("-".to_owned(), |c| c.to_string());
        println!("{:<14} {:>10} {:>10} {:>10} {:>10}", row.commodity_id.0, row.initial, row.available, row.sold, cache);
    }
    println!("orders: {:?}", report.orders_by_state);
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if report.violations.is_empty() {
        println!("audit: no violations");
        Ok(())
    } else {
        for violation in &report.violations {
            println!("violation: {}", serde_json::to_string(violation)?);
        }
        println!("audit: {} violations", report.violations.len());
        std::process::exit(1);
    }
}
