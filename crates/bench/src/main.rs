//! `orderly-bench`: the instruments that show how fast orderly is and that it kept its word, in a binary
//! of their own (the server does not link the HTTP client, the charts or the histograms).
//!
//! # Layout
//! - [`orders`]: `orderly-bench orders`, the flash-sale load generator: a fresh server (or `--url`), a
//!   scenario, the healthz and naive baselines, the buyer's-word checks and the audit's verdict.
//! - [`workload`]: the catalog and the carts (seeded).
//! - [`ceilings`]: the engines' own rates in the same run (Redis reserve, confirmed publish).
//! - [`cpu`]: the CPU each process of a run spent, grouped by role (from `/proc`).
//! - [`engines`]: the calls each engine of a cluster served (`--engine-calls`), as it counts them.
//! - [`waits`]: where a cart waits at the entry, from the APIs' own timings (`GET /metrics`).
//! - [`load`]: closed-loop and fixed-rate drivers, the recorder, buyers' follow-ups.
//! - [`report`]: figures, ratios and targets; JSON, Markdown and charts.
//! - [`payment`]: `orderly-bench payment`, the payment service's latency over gRPC.

mod ceilings;
mod cpu;
mod engines;
mod load;
mod orders;
mod payment;
mod report;
mod waits;
mod workload;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use orderly::config::Config;

/// The allocator of `orderly` (its `main.rs` says why): the bench's own server (`run-serve`) is this
/// binary, and measures what `orderly serve` runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "orderly-bench", version, about = "Load generator and verdicts for orderly")]
struct Cli {
    /// TOML configuration file (also `ORDERLY_CONFIG`): a `--url` server's data directory and timers.
    #[arg(long, global = true, env = "ORDERLY_CONFIG")]
    config: Option<PathBuf>,
    /// The `orderly` binary whose `serve` / `payment` a bench starts (given by `orderly bench`); by
    /// default this binary's own copy of them.
    #[arg(long, global = true, hide = true)]
    server_exe: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load generator: a fresh server (or `--url`), a scenario, a report, the audit's verdict; exits 1
    /// when a correctness check fails.
    Orders(orders::BenchArgs),
    /// Charge latency and throughput of the payment service over gRPC (starts its own payment service).
    Payment(payment::PaymentBenchArgs),
    /// The standalone server a bench starts (`orderly serve`).
    #[command(hide = true)]
    RunServe,
    /// The payment service a bench starts (`orderly payment`).
    #[command(hide = true)]
    RunPayment,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    if let Some(server) = cli.server_exe {
        let _ = orders::SERVER_EXE.set(server);
    }
    let _telemetry = orderly::init_logging(None, "orderly-bench")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let passed = match cli.command {
        Command::RunServe => return runtime.block_on(orderly::serve::serve(config)),
        Command::RunPayment => return runtime.block_on(orderly::serve::payment_service(config)),
        Command::Orders(args) => runtime.block_on(orders::bench(args, config))?,
        Command::Payment(args) => runtime.block_on(payment::bench(args))?,
    };
    if !passed {
        eprintln!("orderly-bench: a correctness check failed (see the report)");
        std::process::exit(1);
    }
    Ok(())
}
