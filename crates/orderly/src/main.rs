//! `orderly`: one binary, roles as subcommands (the wiring is the `orderly` library beside it).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use orderly::config::{self, Config};
use orderly::{cluster, serve, standalone};
use orderly_domain::Uid;

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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref())?;
    orderly::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
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
            let orderly = cluster::open(&config).await?;
            if let Some(path) = catalog {
                serve::load_catalog_file(&orderly, &path).await?;
            }
            serve::run_roles(&config, orderly, serve::Roles { http: true, workers: false }, "cluster").await
        }),
        Command::Worker => runtime.block_on(async {
            let orderly = cluster::open(&config).await?;
            serve::run_roles(&config, orderly, serve::Roles { http: false, workers: true }, "cluster").await
        }),
        Command::Bench { args } => run_bench("orders", &args, cli.config.as_deref()),
        Command::BenchPayment { args } => run_bench("payment", &args, cli.config.as_deref()),
    }
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
            let orderly = cluster::open(&config).await?;
            orderly.audit(quiet, deadline_ms).await.context("auditing")?
        }
        None => {
            let orderly = standalone::open(&config).await?;
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
