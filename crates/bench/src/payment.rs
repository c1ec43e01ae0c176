//! `orderly-bench payment`: charge latency and throughput of the payment service over gRPC on loopback.
//!
//! Starts `orderly payment` on a fresh ledger — embedded, or with `--postgres-url` a fresh schema in
//! PostgreSQL (the cluster profile's ledger), dropped afterwards — with the acquirer's latency zero unless
//! set, then measures in the
//! same run a read-only baseline (`Query` of an order it never saw: the gRPC round trip plus one ledger
//! read) and `Charge` of fresh orders (three writes each: the entry and the acquirer's record durable,
//! the answer not waited for — it copies that record). Checks that every charge
//! answered `succeeded` is in the ledger exactly once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use orderly_app::Clock;
use orderly_app::ports::{ChargeOutcome, ChargeRequest, Payments};
use orderly_domain::{Money, OrderNo, SnowflakeId, Uid};
use orderly_payment::{ClientConfig, GrpcPayments};
use serde::Serialize;

use crate::orders::{lock, spawn};
use crate::report::Latency;

#[derive(Debug, clap::Args)]
pub struct PaymentBenchArgs {
    /// Concurrent callers.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Length of each phase.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Latency of the simulated acquirer.
    #[arg(long, default_value_t = 0)]
    acquirer_latency_ms: u64,
    /// Keep the ledger in PostgreSQL (a fresh schema of this database, dropped afterwards) instead of the
    /// embedded store.
    #[arg(long)]
    postgres_url: Option<String>,
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
}

#[derive(Debug, Serialize)]
struct Phase {
    name: &'static str,
    calls: u64,
    calls_per_s: f64,
    outcomes: BTreeMap<String, u64>,
    latency: Latency,
}

#[derive(Debug, Serialize)]
struct PaymentReport {
    command: String,
    connections: usize,
    acquirer_latency_ms: u64,
    ledger: String,
    phases: Vec<Phase>,
    charged_in_ledger: usize,
    charges_answered_succeeded: u64,
    p99_target_ms: f64,
    p99_target_met: bool,
    passed: bool,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|e| unreachable!("constant bounds: {e}"))
}

async fn phase(
    name: &'static str,
    payments: &GrpcPayments,
    connections: usize,
    duration: Duration,
    charge: bool,
) -> anyhow::Result<Phase> {
    let latency = Arc::new(Mutex::new(histogram()));
    let outcomes = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let start = Instant::now();
    let deadline = start + duration;
    let clock = orderly_clock::SystemClock;
    let mut tasks = Vec::new();
    for connection in 0..connections as u64 {
        let (payments, latency, outcomes) = (payments.clone(), Arc::clone(&latency), Arc::clone(&outcomes));
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                // Distinct orders per caller and call; the query phase asks about orders never charged.
                let order_no =
                    OrderNo::new(SnowflakeId((connection << 40) | n | if charge { 0 } else { 1 << 39 }), Uid(1));
                let began = Instant::now();
                let outcome = if charge {
                    let request = ChargeRequest {
                        order_no,
                        amount: Money::from_cents(2999),
                        idempotency_key: format!("{order_no}-1"),
                        deadline_ms: clock.now_ms() + 60_000,
                        trace: None,
                    };
                    match payments.charge(request).await {
                        Ok(ChargeOutcome::Succeeded { .. }) => "succeeded",
                        Ok(ChargeOutcome::Declined { .. }) => "declined",
                        Err(_) => "unknown_outcome",
                    }
                } else {
                    match payments.query(order_no).await {
                        Ok(_) => "answered",
                        Err(_) => "error",
                    }
                };
                let micros = (began.elapsed().as_micros() as u64).max(1);
                lock(&latency).saturating_record(micros);
                *lock(&outcomes).entry(outcome.to_owned()).or_insert(0) += 1;
            }
        }));
    }
    for task in tasks {
        task.await.context("caller task")?;
    }
    let elapsed = start.elapsed().as_secs_f64().max(0.001);
    let latency = lock(&latency).clone();
    let outcomes = lock(&outcomes).clone();
    let calls = latency.len();
    eprintln!("{name:>8}: {calls} calls in {elapsed:.1} s ({:.0}/s)", calls as f64 / elapsed);
    Ok(Phase { name, calls, calls_per_s: calls as f64 / elapsed, outcomes, latency: Latency::of(&latency) })
}

pub async fn bench(args: PaymentBenchArgs) -> anyhow::Result<bool> {
    let out = args.out.join("payment");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let ledger = tempfile::Builder::new().prefix("orderly-bench-payment-").tempdir().context("temp dir")?;
    let mut envs = vec![
        ("ORDERLY_PAYMENT_SERVICE__DATA_DIR", ledger.path().display().to_string()),
        ("ORDERLY_PAYMENT_SERVICE__LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("ORDERLY_LOCAL__ACQUIRER__LATENCY_MS", args.acquirer_latency_ms.to_string()),
    ];
    let schema = format!("orderly_bench_payment_{}", std::process::id());
    let ledger_kind = match &args.postgres_url {
        Some(url) => {
            envs.push(("ORDERLY_PAYMENT_SERVICE__POSTGRES_URL", url.clone()));
            envs.push(("ORDERLY_PAYMENT_SERVICE__POSTGRES_SCHEMA", schema.clone()));
            envs.push(("ORDERLY_PAYMENT_SERVICE__POSTGRES_CONNECTIONS_MAX", args.connections.to_string()));
            format!("PostgreSQL (schema {schema}; entry and acquirer record committed synchronously)")
        }
        None => "embedded (entry and acquirer record fsynced)".to_owned(),
    };
    let (service, address) = spawn("payment", &envs, ledger, &out.join("payment.log"))?;
    let payments = GrpcPayments::new(ClientConfig {
        endpoints: vec![format!("http://{address}")],
        call_timeout_ms: 5_000,
        attempts_max: 1,
        ..ClientConfig::default()
    })?;

    let duration = Duration::from_secs(args.duration_s);
    let query = phase("query", &payments, args.connections, duration, false).await?;
    let charge = phase("charge", &payments, args.connections, duration, true).await?;
    let charged_in_ledger = payments.succeeded().await?.len();
    drop(service);
    if let Some(url) = &args.postgres_url {
        let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(url).await.context("dropping the schema")?;
        // A name of our own: a fixed prefix and the process id.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")))
            .execute(&mut db)
            .await
            .context("dropping the schema")?;
    }

    let answered = charge.outcomes.get("succeeded").copied().unwrap_or(0);
    let unknown = charge.outcomes.get("unknown_outcome").copied().unwrap_or(0);
    let p99_target_ms = 5.0;
    let report = PaymentReport {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        connections: args.connections,
        acquirer_latency_ms: args.acquirer_latency_ms,
        ledger: ledger_kind,
        p99_target_met: charge.latency.p99_ms <= p99_target_ms,
        phases: vec![query, charge],
        // Every success answered is in the ledger once; a charge without an answer may be there too.
        passed: (answered..=answered + unknown).contains(&(charged_in_ledger as u64)),
        charged_in_ledger,
        charges_answered_succeeded: answered,
        p99_target_ms,
    };
    let mut md = format!(
        "## orderly-bench payment\n\n`{}`; {} callers, acquirer latency {} ms, ledger {}.\n\n\
         | phase | calls/s | p50 / p95 / p99 / max (ms) | outcomes |\n|---|---|---|---|\n",
        report.command, report.connections, report.acquirer_latency_ms, report.ledger
    );
    for p in &report.phases {
        let l = &p.latency;
        md.push_str(&format!(
            "| {} | {:.0} | {:.2} / {:.2} / {:.2} / {:.1} | {:?} |\n",
            p.name, p.calls_per_s, l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms, p.outcomes
        ));
    }
    md.push_str(&format!(
        "\nCharge p99 target ≤ {p99_target_ms} ms: {}. Ledger holds {} successful charges for {} answered `succeeded`: {}.\n",
        if report.p99_target_met { "met" } else { "not met" },
        report.charged_in_ledger,
        report.charges_answered_succeeded,
        if report.passed { "pass" } else { "FAIL" }
    ));
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(out.join("report.md"), &md)?;
    println!("{md}");
    Ok(report.passed)
}
