//! `orderly-bench orders`: a flash-sale load generator over HTTP, with its baseline in the same run and
//! the audit's verdict at the end.
//!
//! A run: start a fresh standalone server (or use `--url`), load a catalog, measure the same server's
//! trivial endpoint (the HTTP ceiling), run the scenario's phases, let buyers pay and cancel, wait until
//! everything accepted is persisted, check every accepted order number reached a definite state, wait
//! for quiet, run the audit (I1–I5), and write the report (JSON, Markdown, SVG charts).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use orderly_api::TokenAuth;
use orderly_domain::Uid;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde_json::Value;

use crate::load::{Kind, Live, Mode, PhaseSpec, Recorder};
use crate::report::{Checks, PhaseReport, Report};
pub use crate::workload::Scenario;
use crate::workload::Workload;
use crate::{load, report};
use orderly::config::{self, Config};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "mixed")]
    scenario: Scenario,
    /// Bench a running server at this URL instead of starting one; its data directory (`ORDERLY_DATA_DIR`
    /// or the config) must be readable here, for the token secrets. Repeat it for the API processes of
    /// a cluster: requests take them in turn (a dead one answers errors until it is back).
    #[arg(long)]
    url: Vec<String>,
    /// Bench every API process the cluster's registry lists (etcd at `cluster.etcd_endpoints` of the
    /// configuration, namespace `cluster.namespace`), as `--url` each.
    #[arg(long, conflicts_with = "url")]
    cluster: bool,
    /// Concurrent connections of closed-loop phases.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Length of each measured phase.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Stop each order phase after this many requests (flash default: twice the stock).
    #[arg(long)]
    requests: Option<u64>,
    /// Stock of the flash SKU.
    #[arg(long, default_value_t = 10_000)]
    flash_stock: u32,
    /// Skip the healthz baseline phase.
    #[arg(long)]
    no_baseline: bool,
    /// Also measure the naive design on the same server (`POST /api/baseline/orders`, served when it runs
    /// with `ORDERLY_NAIVE_BASELINE=true`; a server the bench starts does): one synchronous store
    /// transaction per cart, on commodities of its own, its buyers paying and cancelling as the scenario's
    /// do (the same work per cart). Reported as a ratio.
    #[arg(long)]
    naive_baseline: bool,
    /// Also measure the engines' own ceilings before the scenario, in the same run: one-line reserves/s
    /// on the cluster's Redis through the stock cache's script and client, and confirmed publishes/s on
    /// its broker through the bus adapter (`cluster.redis_url`, and `cluster.bus` with its URL, of the configuration;
    /// keys and queues of their own). Reported with accepted orders/s as a share of each.
    #[arg(long)]
    engine_ceilings: bool,
    /// Also count, around each phase, the calls each engine of the cluster served, as the engine counts
    /// them: PostgreSQL transactions of `cluster.postgres_url`'s database, Redis script calls and
    /// commands on `cluster.redis_url`. Reported per accepted order: the round trips an order costs it.
    #[arg(long)]
    engine_calls: bool,
    /// Where the report goes (`<out>/<scenario>/`).
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Unpaid timeout and reservation-check delay of a server the bench starts: short, so the run ends quiet.
    #[arg(long, default_value_t = 3_000)]
    timers_ms: u64,
    /// How long to wait for persistence and for quiet after the load.
    #[arg(long, default_value_t = 120)]
    settle_timeout_s: u64,
    /// `abuse`: leave the buyer's caps off (the rate rules only), to measure what the caps cost.
    #[arg(long)]
    no_caps: bool,
    /// `mixed`, `one-line`: after the 70 % phase, fixed-rate phases at these shares of the capacity too (each from
    /// quiet; each share above 0 and below 1, one phase per whole percent), e.g. `0.35,0.5`: latency
    /// against load, and how busy the machine was at each
    #[arg(long, value_delimiter = ',', value_parser = share_below_one)]
    also_at: Vec<f64>,
}

/// A share of the capacity for `--also-at`: above 0 and below 1 (more is the `overload` scenario's).
fn share_below_one(text: &str) -> Result<f64, String> {
    let share: f64 = text.trim().parse().map_err(|e| format!("{text:?} is not a number: {e}"))?;
    if share > 0.0 && share < 1.0 {
        Ok(share)
    } else {
        Err(format!("{share} is not a share of the capacity above 0 and below 1"))
    }
}

/// The server under test, and how to talk to it.
#[derive(Clone)]
pub struct Target {
    pub http: reqwest::Client,
    bases: Arc<Vec<String>>,
    turn: Arc<std::sync::atomic::AtomicUsize>,
    auth: Arc<TokenAuth>,
    admin_token: String,
    expires_s: u64,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("bases", &self.bases).finish_non_exhaustive()
    }
}

impl Target {
    /// The server for the next request: each in turn.
    pub fn base(&self) -> &str {
        self.next_base().1
    }

    /// The server for the next request, with its index among the bases.
    pub fn next_base(&self) -> (usize, &str) {
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let index = turn % self.bases.len();
        (index, &self.bases[index])
    }

    /// How many servers the bench drives.
    pub fn base_count(&self) -> usize {
        self.bases.len()
    }

    pub fn bases(&self) -> String {
        self.bases.join(" ")
    }

    pub fn buyer_token(&self, uid: u64) -> String {
        self.auth.mint(Uid(uid), self.expires_s)
    }

    /// Asks each server in turn until one answers (reads only: another server may answer for a dead one).
    async fn admin_get(&self, path: &str) -> anyhow::Result<Value> {
        let mut last = None;
        for _ in 0..self.bases.len() {
            let base = self.base();
            match self.http.get(format!("{base}{path}")).bearer_auth(&self.admin_token).send().await {
                Ok(answer) => {
                    let status = answer.status();
                    let body: Value = answer.json().await?;
                    anyhow::ensure!(status.is_success(), "GET {path}: {status} {body}");
                    return Ok(body["data"].clone());
                }
                Err(error) => last = Some(error),
            }
        }
        Err(last.map_or_else(|| anyhow::anyhow!("no server to ask"), anyhow::Error::from))
    }

    /// To the first server only: an admin write is not retried elsewhere.
    async fn admin_post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.admin_write(reqwest::Method::POST, path, Some(body.to_string())).await
    }

    /// An admin write to the first server (`body`: raw JSON text).
    async fn admin_write(&self, method: reqwest::Method, path: &str, body: Option<String>) -> anyhow::Result<Value> {
        let base = &self.bases[0];
        let mut request = self.http.request(method.clone(), format!("{base}{path}")).bearer_auth(&self.admin_token);
        if let Some(body) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        }
        let answer = request.send().await?;
        let status = answer.status();
        let body: Value = answer.json().await?;
        anyhow::ensure!(status.is_success(), "{method} {path}: {status} {body}");
        Ok(body["data"].clone())
    }

    /// Sets each `(key, JSON text)` through the admin API, in order (every process applies it).
    async fn set_settings(&self, settings: &[(String, String)]) -> anyhow::Result<()> {
        for (key, value) in settings {
            self.admin_write(reqwest::Method::PUT, &format!("/api/admin/config/{key}"), Some(value.clone())).await?;
        }
        Ok(())
    }

    /// Removes those settings: every process goes back to its own configuration.
    async fn unset_settings(&self, settings: &[(String, String)]) -> anyhow::Result<()> {
        for (key, _) in settings {
            self.admin_write(reqwest::Method::DELETE, &format!("/api/admin/config/{key}"), None).await?;
        }
        Ok(())
    }

    /// Where carts waited at every API so far ([`crate::waits`]), summed; an API that does not answer is
    /// left out.
    async fn entry_waits(&self) -> crate::waits::Waits {
        let mut readings = Vec::new();
        for base in self.bases.iter() {
            let Ok(answer) = self.http.get(format!("{base}/metrics")).send().await else { continue };
            let Ok(text) = answer.text().await else { continue };
            readings.push(crate::waits::parse(&text));
        }
        crate::waits::sum(readings)
    }

    /// Every API's concurrency limit and requests in flight now; an API that does not answer is skipped.
    async fn limits(&self, at_s: f64) -> Vec<load::LimitSample> {
        let mut samples = Vec::new();
        for (api, base) in self.bases.iter().enumerate() {
            let answer = self.http.get(format!("{base}/api/admin/limits")).bearer_auth(&self.admin_token).send().await;
            let Ok(answer) = answer else { continue };
            let Ok(body) = answer.json::<Value>().await else { continue };
            let concurrency = &body["data"]["concurrency"];
            let in_flight = concurrency["partitions"]
                .as_array()
                .map(|parts| parts.iter().filter_map(|p| p["in_flight"].as_u64()).sum())
                .unwrap_or(0);
            if let Some(limit) = concurrency["limit"].as_u64() {
                samples.push(load::LimitSample { at_s, api, limit, in_flight });
            }
        }
        samples
    }
}

/// What a phase measures besides the answers.
#[derive(Debug, Clone, Copy)]
struct Measure {
    /// CPU per process and engine calls: only meaningful for a phase that runs alone.
    cost: bool,
    /// The APIs' concurrency limits over the phase.
    limits: bool,
}

impl Measure {
    const ALL: Measure = Measure { cost: true, limits: true };
    /// A phase beside others (the abusers of `abuse`): its answers only.
    const ANSWERS: Measure = Measure { cost: false, limits: false };
}

/// A mutex whose holder panicked still holds plain counters: keep going with them.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A process of this binary the bench started, with the directory its data lives in; killed (and its
/// data removed) when dropped.
pub(crate) struct Spawned {
    child: Child,
    _data: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `orderly` binary to start servers from, when given (`--server-exe`, by `orderly bench`).
pub(crate) static SERVER_EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Starts `orderly <role>` with `envs` (logging to `log`), and waits for its `listening on ADDR` line.
pub(crate) fn spawn(
    role: &str,
    envs: &[(&str, String)],
    data: tempfile::TempDir,
    log: &Path,
) -> anyhow::Result<(Spawned, String)> {
    // `orderly bench` names itself as the server (`--server-exe`), so the server benched is the one the
    // user ran. Otherwise the roles are this binary's own hidden subcommands (`run-serve`,
    // `run-payment`): the same code as `orderly serve` / `orderly payment`, built with the bench.
    let (exe, subcommand) = match SERVER_EXE.get() {
        Some(server) => (server.clone(), role.to_owned()),
        None => (std::env::current_exe().context("finding the orderly-bench binary")?, format!("run-{role}")),
    };
    let log = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = Command::new(&exe);
    command.arg(subcommand).env("ORDERLY_LOG", "warn").env_remove("ORDERLY_CONFIG").stdout(Stdio::piped()).stderr(log);
    for (key, value) in envs {
        command.env(key, value);
    }
    let mut child = command.spawn().with_context(|| format!("starting orderly {role}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let spawned = Spawned { child, _data: data };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).with_context(|| format!("reading orderly {role}'s first line"))?;
    let Some(address) = line.trim().strip_prefix("listening on ") else {
        bail!("orderly {role} did not start (first line {line:?}); see its log");
    };
    Ok((spawned, address.to_owned()))
}

fn machine() -> BTreeMap<&'static str, String> {
    let mut machine = BTreeMap::new();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    machine.insert("cpus", cpus.to_string());
    if let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo")
        && let Some(model) =
            cpuinfo.lines().find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':'])))
    {
        machine.insert("cpu", model.to_owned());
    }
    if let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        machine.insert("kernel", release.trim().to_owned());
    }
    machine.insert("profile", if cfg!(debug_assertions) { "debug build" } else { "release build" }.to_owned());
    machine
}

/// The addresses of the API processes registered in the cluster's etcd.
async fn registered_apis(config: &Config) -> anyhow::Result<Vec<String>> {
    use orderly_app::registry::{Registry, Role};
    let registry = orderly::cluster::connect_registry(config).await?;
    let status = registry.status().await.context("reading the registry")?;
    let apis: Vec<String> = status
        .members
        .into_iter()
        .filter(|m| m.role == Role::Api && !m.address.is_empty())
        .map(|m| m.address)
        .collect();
    anyhow::ensure!(!apis.is_empty(), "no API process is registered in etcd at {:?}", config.cluster.etcd_endpoints);
    eprintln!("APIs found in the registry: {}", apis.join(" "));
    Ok(apis)
}

/// Runs the bench; `Ok(false)` when a check failed (the report says which).
pub async fn bench(args: BenchArgs, config: Config) -> anyhow::Result<bool> {
    let out = args.out.join(args.scenario.as_str());
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let urls = if args.cluster { registered_apis(&config).await? } else { args.url.clone() };
    let (bases, secrets, spawned) = match urls.as_slice() {
        [_, ..] => {
            let bases = urls.iter().map(|url| url.trim_end_matches('/').to_owned()).collect();
            (bases, config::secrets(&config)?, None)
        }
        [] => {
            let data = tempfile::Builder::new().prefix("orderly-bench-").tempdir().context("temp dir")?;
            let data_dir = data.path().join("data");
            let secrets = config::secrets(&Config { data_dir: data_dir.clone(), ..Config::default() })?;
            let envs = [
                ("ORDERLY_DATA_DIR", data_dir.display().to_string()),
                ("ORDERLY_HTTP_ADDR", "127.0.0.1:0".to_owned()),
                ("ORDERLY_FLOW__UNPAID_TIMEOUT_MS", args.timers_ms.to_string()),
                ("ORDERLY_FLOW__RESERVATION_CHECK_DELAY_MS", args.timers_ms.to_string()),
                ("ORDERLY_NAIVE_BASELINE", args.naive_baseline.to_string()),
            ];
            let (server, address) = spawn("serve", &envs, data, &out.join("server.log"))?;
            (vec![format!("http://{address}")], secrets, Some(server))
        }
    };
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .timeout(Duration::from_secs(30))
        .build()
        .context("HTTP client")?;
    let target = Target {
        http,
        bases: Arc::new(bases),
        turn: Arc::default(),
        auth: Arc::new(TokenAuth::new(secrets.token_secret.into_bytes(), secrets.admin_token.clone())),
        admin_token: secrets.admin_token,
        expires_s: now_s + 24 * 3600,
    };

    let mut rng = SmallRng::seed_from_u64(args.seed);
    // Ids of this run stay apart from earlier runs on the same server.
    let id_base = (now_s % 1_000_000) * 10_000 + 1;
    let workload = Arc::new(Workload::new(args.scenario, id_base, args.flash_stock, &mut rng));
    // The naive design's commodities: the same shape, ids of their own (its stock bypasses the cache), and
    // buyers of its own (its carts promise nothing our entry does: a buyer refused by our entry must not
    // be judged by the orders of a naive cart).
    let naive_workload = args.naive_baseline.then(|| {
        Arc::new(Workload::new(args.scenario, id_base + 5_000, args.flash_stock, &mut rng).with_buyers_after(&workload))
    });
    // `abuse`'s abusers: commodities and buyers of their own, after everyone else's.
    let abusers = (args.scenario == Scenario::Abuse).then(|| {
        let last = naive_workload.as_deref().unwrap_or(workload.as_ref());
        let buyer = Workload::hammering_buyer(id_base + 9_000).with_buyers_after(last);
        let crowd = Workload::hammering_crowd(id_base + 9_100).with_buyers_after(&buyer);
        (Arc::new(buyer), Arc::new(crowd))
    });
    let others = naive_workload.iter().chain(abusers.iter().flat_map(|(buyer, crowd)| [buyer, crowd]));
    for body in workload.catalog_bodies().into_iter().chain(others.flat_map(|w| w.catalog_bodies())) {
        target.admin_post("/api/admin/catalog", &body).await.context("loading the catalog")?;
    }
    eprintln!(
        "orderly-bench orders {}: {} SKUs over {} shops on {}",
        args.scenario.as_str(),
        workload.sku_count,
        workload.shop_count,
        target.bases()
    );

    // As many buyers acting on their orders as placing them: pay-later must beat the unpaid timeout.
    let (follow_ups, follow_up_pool) = load::follow_up_pool(&target, args.connections.max(4));
    let mut settles: BTreeMap<String, Option<u64>> = BTreeMap::new();
    let bench_start = Instant::now();
    let duration = Duration::from_secs(args.duration_s);
    let settle = Duration::from_secs(args.settle_timeout_s);
    let closed = Mode::Closed { connections: args.connections };
    let mut phases: Vec<(PhaseSpec, Recorder)> = Vec::new();
    let engines = match args.engine_calls {
        true => {
            let broker = config.cluster.bus == orderly::cluster::BusKind::Rabbitmq;
            Some(
                crate::engines::Engines::connect(&config.cluster.postgres_url, &config.cluster.redis_url, broker)
                    .await?,
            )
        }
        false => None,
    };
    let engines = engines.as_ref();
    if !args.no_baseline {
        let spec =
            PhaseSpec { name: "healthz".into(), kind: Kind::Healthz, mode: closed, duration, requests_max: None };
        let recorder =
            run_with_progress(&spec, &target, &workload, args.seed, &follow_ups, engines, Measure::ALL).await?;
        phases.push((spec, recorder));
    }
    let mut ceilings = Vec::new();
    let mut rule_change: Option<report::RuleChange> = None;
    // `abuse`: the orders accepted while the buyer's caps were on.
    let mut capped = std::collections::BTreeSet::new();
    if args.engine_ceilings {
        for ceiling in [
            crate::ceilings::redis_reserve(&config.cluster.redis_url, args.connections, duration).await,
            crate::ceilings::broker_publish(&config.cluster, args.connections, duration).await,
        ] {
            let ceiling = ceiling.context("measuring an engine's ceiling")?;
            eprintln!("{:>14}: {:.0}/s ({} callers)", ceiling.name, ceiling.per_s, ceiling.callers);
            ceilings.push(ceiling);
        }
    }
    let order_phase = |name: &str, mode: Mode, requests_max: Option<u64>| PhaseSpec {
        name: name.into(),
        kind: Kind::Order,
        mode,
        duration,
        requests_max,
    };
    let flash_requests = args.requests.unwrap_or(u64::from(args.flash_stock) * 2);
    if let Some(naive_workload) = &naive_workload {
        let requests_max = if args.scenario == Scenario::Flash { Some(flash_requests) } else { args.requests };
        let spec = PhaseSpec { name: "naive".into(), kind: Kind::NaiveOrder, mode: closed, duration, requests_max };
        let recorder =
            run_with_progress(&spec, &target, naive_workload, args.seed, &follow_ups, engines, Measure::ALL).await?;
        phases.push((spec, recorder));
        // Its outbox (timeouts, charges) is worked off before our phases start.
        let settled = settle_after_phase(&target, &follow_ups, settle).await;
        settles.insert("naive".into(), settled.map(|d| d.as_millis() as u64));
    }
    match args.scenario {
        Scenario::Flash => {
            let spec = order_phase("flash", closed, Some(flash_requests));
            let recorder =
                run_with_progress(&spec, &target, &workload, args.seed, &follow_ups, engines, Measure::ALL).await?;
            phases.push((spec, recorder));
        }
        Scenario::Mixed | Scenario::OneLine | Scenario::Overload | Scenario::Abuse => {
            let spec = order_phase("capacity", closed, args.requests);
            let recorder =
                run_with_progress(&spec, &target, &workload, args.seed, &follow_ups, engines, Measure::ALL).await?;
            let capacity = recorder.answered() as f64 / recorder.elapsed.as_secs_f64().max(0.001);
            phases.push((spec, recorder));
            // The next phase starts from quiet, not with this one's backlog of creates and timers.
            let settled = settle_after_phase(&target, &follow_ups, settle).await;
            settles.insert("capacity".into(), settled.map(|d| d.as_millis() as u64));
            // Fixed-rate phases at a share of the capacity; the client must not be the bottleneck: room
            // for half a second of the offered load in flight.
            let at_rate = |name: &str, factor: f64| {
                let per_second = ((capacity * factor) as u64).max(1);
                let in_flight_max = (per_second as usize / 2).clamp(args.connections, 4_096);
                order_phase(name, Mode::Rate { per_second, in_flight_max }, args.requests)
            };
            match args.scenario {
                Scenario::Abuse => {
                    let abusers = abusers.as_ref().context("the abusers' workloads")?;
                    let mut rules = abuse_rules(&workload, capacity * ORDINARY_SHARE);
                    if args.no_caps {
                        rules.retain(|(key, _)| !key.starts_with("flow.buyer_caps."));
                    }
                    target.set_settings(&rules).await?;
                    eprintln!("rules set for the abuse phases: {rules:?}");
                    // Every API applies a setting within a second.
                    tokio::time::sleep(Duration::from_millis(1_500)).await;
                    let spec = at_rate("ordinary", ORDINARY_SHARE);
                    let seed = args.seed + 1;
                    let recorder =
                        run_with_progress(&spec, &target, &workload, seed, &follow_ups, engines, Measure::ALL).await?;
                    phases.push((spec, recorder));
                    let settled = settle_after_phase(&target, &follow_ups, settle).await;
                    settles.insert("ordinary".into(), settled.map(|d| d.as_millis() as u64));
                    // The same ordinary buyers, the same requests, while the abusers hammer beside them.
                    let ordinary = at_rate("ordinary_abused", ORDINARY_SHARE);
                    let hammering_buyer = at_rate("abuser_buyer", ABUSER_SHARE);
                    let hammering_crowd = at_rate("abuser_crowd", ABUSER_SHARE);
                    // The ordinary phase's CPU would include the abusers': not measured beside them.
                    let limits_only = Measure { cost: false, limits: true };
                    let (a, b, c) = tokio::join!(
                        run_with_progress(&ordinary, &target, &workload, seed, &follow_ups, engines, limits_only),
                        run_with_progress(
                            &hammering_buyer,
                            &target,
                            &abusers.0,
                            seed + 2,
                            &follow_ups,
                            None,
                            Measure::ANSWERS
                        ),
                        run_with_progress(
                            &hammering_crowd,
                            &target,
                            &abusers.1,
                            seed + 3,
                            &follow_ups,
                            None,
                            Measure::ANSWERS
                        ),
                    );
                    phases.extend([(ordinary, a?), (hammering_buyer, b?), (hammering_crowd, c?)]);
                    target.unset_settings(&rules).await?;
                    let under_caps = ["ordinary", "ordinary_abused", "abuser_buyer", "abuser_crowd"];
                    for (_, recorder) in phases.iter().filter(|(spec, _)| under_caps.contains(&spec.name.as_str())) {
                        capped.extend(recorder.accepted.iter().map(|a| a.order_no.clone()));
                    }
                    // Every API applies the removal within a second: no rule left over refuses early.
                    tokio::time::sleep(Duration::from_millis(1_500)).await;
                    // A rule changed under load: the hammering buyer alone and unlimited, until a third
                    // into the phase the buyer rule is set through the first API; each API's first
                    // refusal with the rule's code says when it was in force there.
                    let spec = at_rate("rule_change", ABUSER_SHARE);
                    let buyer_rule: Vec<(String, String)> =
                        rules.iter().filter(|(key, _)| key.starts_with("rate_limit.buyer.")).cloned().collect();
                    let phase_start = Instant::now();
                    let setter = {
                        let (target, buyer_rule) = (target.clone(), buyer_rule.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(duration / 3).await;
                            // From the first write: the rule may be in force as soon as that one applies.
                            let writing = Instant::now();
                            target.set_settings(&buyer_rule).await?;
                            anyhow::Ok(writing)
                        })
                    };
                    let recorder =
                        run_with_progress(&spec, &target, &abusers.0, seed + 4, &follow_ups, None, Measure::ANSWERS)
                            .await?;
                    let set_at = setter.await.context("setting the rule")??;
                    rule_change = Some(report::RuleChange::new(set_at, phase_start, &recorder, target.base_count()));
                    phases.push((spec, recorder));
                    target.unset_settings(&buyer_rule).await?;
                }
                _ => {
                    let seed = args.seed + 1;
                    let spec = at_rate("at_70_percent", 0.7);
                    let recorder =
                        run_with_progress(&spec, &target, &workload, seed, &follow_ups, engines, Measure::ALL).await?;
                    phases.push((spec, recorder));
                    let also_at = if matches!(args.scenario, Scenario::Mixed | Scenario::OneLine) {
                        args.also_at.as_slice()
                    } else {
                        &[]
                    };
                    for (n, share) in also_at.iter().copied().enumerate() {
                        let name = format!("at_{:.0}_percent", share * 100.0);
                        if phases.iter().any(|(spec, _)| spec.name == name) {
                            continue;
                        }
                        let before = phases.last().map_or_else(String::new, |(spec, _)| spec.name.clone());
                        let settled = settle_after_phase(&target, &follow_ups, settle).await;
                        settles.insert(before, settled.map(|d| d.as_millis() as u64));
                        let spec = at_rate(&name, share);
                        let seed = seed + 1 + n as u64;
                        let recorder =
                            run_with_progress(&spec, &target, &workload, seed, &follow_ups, engines, Measure::ALL)
                                .await?;
                        phases.push((spec, recorder));
                    }
                    if args.scenario == Scenario::Overload {
                        let settled = settle_after_phase(&target, &follow_ups, settle).await;
                        settles.insert("at_70_percent".into(), settled.map(|d| d.as_millis() as u64));
                        let spec = at_rate("overload_3x", 3.0);
                        let recorder =
                            run_with_progress(&spec, &target, &workload, seed, &follow_ups, engines, Measure::ALL)
                                .await?;
                        phases.push((spec, recorder));
                    }
                }
            }
        }
    }
    let load_end = Instant::now();

    let accepted: Vec<load::Accepted> = phases.iter().flat_map(|(_, r)| r.accepted.iter().cloned()).collect();
    eprintln!("load done: {} orders accepted; waiting for buyers' last actions and for quiet", accepted.len());
    let follow_ups = follow_up_pool.finish(follow_ups).await;

    // Persisted: the create queue looked empty twice in a row. Then every accepted order number is
    // asked for, and one still `pending` is asked again until the settle timeout — a broker does not
    // count the messages a worker holds unacked, so an empty queue is not the whole proof.
    let persisted_after = wait_for(&target, load_end, settle, |depth| queued(depth, Some("create_order")) == 0).await;
    let mut finals = verify_orders(&target, &accepted, args.connections, settle).await;
    let verified = finals.counts();
    let quiet_after = wait_for(&target, load_end, settle, quiet).await;
    // A pay-at-once order seen to pay may still have had its charge running: asked again once quiet.
    for (order, state, body, seen) in finals.orders.iter_mut().filter(|(o, s, _, _)| o.pay_at_once && s == "to_pay") {
        (*state, *body) = ask_state(&target, order).await;
        *seen = Instant::now();
    }
    // The broker does not count what a worker holds unacked (a batch of unpaid timeouts being applied),
    // so empty queues can be seen while the last changes land: quiet is also "the store and the cache
    // read the same twice in a row, a second apart". The last audit is the one judged.
    let audit_path = |quiet: bool| {
        format!("/api/admin/audit?quiet={quiet}&deadline_ms={}", bench_start.elapsed().as_millis() + 60_000)
    };
    let mut audit = target.admin_get(&audit_path(quiet_after.is_some())).await.context("auditing")?;
    if quiet_after.is_some() {
        for _ in 0..QUIET_AUDITS_MAX {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let again = target.admin_get(&audit_path(true)).await.context("auditing")?;
            let still = |a: &Value| (a["report"]["orders_by_state"].clone(), a["report"]["stock"].clone());
            let settled = still(&again) == still(&audit);
            audit = again;
            if settled {
                break;
            }
        }
    }

    let phase_reports: Vec<PhaseReport> =
        phases.iter().map(|(spec, recorder)| PhaseReport::new(spec, recorder)).collect();
    let mut checks = Checks::new(args.scenario, &workload, &accepted, &verified, &audit, persisted_after, quiet_after);
    // The buyer's word (issue 10): what every answer promised, judged from what the bench was told.
    let accepted_nos: std::collections::BTreeSet<&str> = accepted.iter().map(|a| a.order_no.as_str()).collect();
    let (mut refused, mut unanswered) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    for (_, recorder) in &phases {
        refused.extend(recorder.refused_uids.iter().copied());
        unanswered.extend(recorder.unanswered_uids.iter().copied());
    }
    let judged: Vec<u64> = refused.difference(&unanswered).copied().collect();
    let behind_errors = orders_behind_errors(&target, &judged, &accepted_nos, args.connections).await;
    // The unpaid timeout of the server: the bench's own, or the one configured for the servers benched.
    let unpaid_timeout_ms = if spawned.is_some() { args.timers_ms } else { config.flow.unpaid_timeout_ms };
    checks.0.extend(report::promise_checks(
        &finals.orders,
        &behind_errors,
        judged.len(),
        &audit,
        &follow_ups.told_final,
        unpaid_timeout_ms,
    ));
    if args.scenario == Scenario::Abuse && !args.no_caps {
        checks.0.push(report::cap_check(&finals.orders, &capped, ABUSE_UNITS_CAP, ABUSE_UNPAID_CAP, unpaid_timeout_ms));
    }
    let report = Report {
        scenario: args.scenario,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        server: if spawned.is_some() { "standalone, started by the bench".into() } else { target.bases() },
        machine: machine(),
        workload: (*workload).clone(),
        targets: report::targets(args.scenario, &phase_reports, &ceilings, rule_change.as_ref()),
        rule_change,
        phases: phase_reports,
        ceilings,
        follow_ups: follow_ups.counts,
        follow_ups_late: follow_ups.late,
        settled_between_phases_ms: settles,
        persisted_after_ms: persisted_after.map(|d| d.as_millis() as u64),
        quiet_after_ms: quiet_after.map(|d| d.as_millis() as u64),
        verified,
        audit_violations: audit["report"]["violations"].as_array().cloned().unwrap_or_default(),
        orders_by_state: audit["report"]["orders_by_state"].clone(),
        checks,
    };
    report.write(&out, &phases)?;
    println!("{}", report.markdown());
    println!("report: {}", out.display());
    drop(spawned);
    Ok(report.checks.passed())
}

async fn run_with_progress(
    spec: &PhaseSpec,
    target: &Target,
    workload: &Arc<Workload>,
    seed: u64,
    follow_ups: &load::FollowUps,
    engines: Option<&crate::engines::Engines>,
    measure: Measure,
) -> anyhow::Result<Recorder> {
    let engines = engines.filter(|_| measure.cost);
    let live = Arc::new(Live::default());
    let bar = indicatif::ProgressBar::new(spec.duration.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>14} [{bar:30}] {elapsed:>3} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(spec.name.clone());
    let ticker = {
        let (bar, live) = (bar.clone(), Arc::clone(&live));
        tokio::spawn(async move {
            let start = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let answered = live.answered.load(std::sync::atomic::Ordering::Relaxed);
                let accepted = live.accepted.load(std::sync::atomic::Ordering::Relaxed);
                let rate = answered as f64 / start.elapsed().as_secs_f64();
                bar.set_position(start.elapsed().as_millis() as u64);
                bar.set_message(format!("{answered} answered ({rate:.0}/s), {accepted} ok"));
            }
        })
    };
    let calls_before = match engines {
        Some(engines) => Some(engines.read().await?),
        None => None,
    };
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = measure.limits.then(|| {
        let (target, samples) = (target.clone(), Arc::clone(&samples));
        tokio::spawn(async move {
            let start = Instant::now();
            loop {
                let taken = target.limits(start.elapsed().as_secs_f64()).await;
                lock(&samples).extend(taken);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    });
    let waits_before = match measure.cost && spec.kind == Kind::Order {
        true => Some(target.entry_waits().await),
        false => None,
    };
    let (cpu_before, machine_before) = (crate::cpu::snapshot(), crate::cpu::machine());
    let mut recorder = load::run_phase(spec, target, workload, seed, live, follow_ups.clone()).await;
    if let Some(before) = waits_before {
        recorder.entry_waits = crate::waits::spent(&before, &target.entry_waits().await);
    }
    if measure.cost {
        recorder.cpu_ms = crate::cpu::spent_ms(&cpu_before, &crate::cpu::snapshot());
        recorder.cores_busy = machine_before
            .zip(crate::cpu::machine())
            .and_then(|(before, after)| crate::cpu::cores_busy(&before, &after));
    }
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    recorder.limits = std::mem::take(&mut *lock(&samples));
    if let (Some(engines), Some(before)) = (engines, calls_before) {
        recorder.engine_calls = crate::engines::spent(&before, &engines.read().await?);
    }
    ticker.abort();
    bar.finish_and_clear();
    eprintln!(
        "{:>14}: {} answered in {:.1} s ({:.0}/s), {} ok",
        spec.name,
        recorder.answered(),
        recorder.elapsed.as_secs_f64(),
        recorder.answered() as f64 / recorder.elapsed.as_secs_f64().max(0.001),
        recorder.outcomes.get("ok").copied().unwrap_or(0)
    );
    Ok(recorder)
}

/// `abuse`: the ordinary buyers' rate, and each abuser's, as shares of the measured capacity (the two
/// abusers together offer as much as the service can accept).
const ORDINARY_SHARE: f64 = 0.5;
const ABUSER_SHARE: f64 = 0.5;

/// `abuse`: the buyer's caps set with the rules — far above what an ordinary buyer holds (a cart of at
/// most 3 lines of 3 units, a couple of carts in a run), well below what the hammering buyer would
/// hoard unpaid.
const ABUSE_UNITS_CAP: u64 = 10;
const ABUSE_UNPAID_CAP: u64 = 20;

/// The rules an operator sets against abuse, from the ordinary demand (`ordinary_per_s` carts a second of
/// `workload`): a buyer may place 10 carts a second (burst 20), two orders of magnitude above what an
/// ordinary buyer does; a commodity takes three times the lines the hottest one gets from ordinary buyers
/// (burst: one second of that); and the buyer's caps. Settings as `(key, JSON text)`.
fn abuse_rules(workload: &Workload, ordinary_per_s: f64) -> Vec<(String, String)> {
    let lines_per_cart = (1 + workload.lines_max) as f64 / 2.0;
    let hottest_share = workload.hot_share / workload.hot.max(1) as f64;
    let per_commodity = (3.0 * ordinary_per_s * lines_per_cart * hottest_share).ceil().max(10.0) as u64;
    [
        ("rate_limit.buyer.per_second", "10".to_owned()),
        ("rate_limit.buyer.burst", "20".to_owned()),
        ("rate_limit.commodity.per_second", per_commodity.to_string()),
        ("rate_limit.commodity.burst", per_commodity.to_string()),
        ("flow.buyer_caps.units_per_commodity", ABUSE_UNITS_CAP.to_string()),
        ("flow.buyer_caps.unpaid_orders", ABUSE_UNPAID_CAP.to_string()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

/// Audits at most this many more times, a second apart, until two in a row read the same.
const QUIET_AUDITS_MAX: usize = 30;

/// Nothing left to do: no message waiting, no outbox event to relay, no payment to settle.
fn quiet(depth: &Value) -> bool {
    queued(depth, None) == 0 && depth["outbox"].as_u64() == Some(0) && depth["payments_pending"].as_u64() == Some(0)
}

/// Messages waiting on `topic` (all topics when `None`) in a `/api/admin/bus` answer.
fn queued(depth: &Value, topic: Option<&str>) -> u64 {
    depth["queued"]
        .as_array()
        .map(|topics| {
            topics
                .iter()
                .filter(|entry| topic.is_none_or(|t| entry[0].as_str() == Some(t)))
                .filter_map(|entry| entry[1].as_u64())
                .sum()
        })
        .unwrap_or(u64::MAX)
}

/// The wait between two phases, from the end of the first: its buyers' follow-ups all answered, then the
/// system quiet ([`wait_for`]); `None` when either did not happen within `settle`.
async fn settle_after_phase(target: &Target, follow_ups: &load::FollowUps, settle: Duration) -> Option<Duration> {
    let since = Instant::now();
    if !follow_ups.sent(settle).await {
        return None;
    }
    wait_for(target, since, settle.saturating_sub(since.elapsed()), quiet).await
}

/// Polls the bus until `done` holds twice in a row, 300 ms apart (a broker does not count what a worker
/// holds unacked, so one empty look can fall between a take and its follow-up publish); the time since
/// `since` of the first look, or `None` at the timeout. A server that does not answer for a moment
/// (restarting under chaos) is asked again.
async fn wait_for(
    target: &Target,
    since: Instant,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Option<Duration> {
    let deadline = Instant::now() + timeout;
    let mut first_seen: Option<Duration> = None;
    while Instant::now() < deadline {
        match target.admin_get("/api/admin/bus").await {
            Ok(depth) if done(&depth) => match first_seen {
                Some(at) => return Some(at),
                None => {
                    first_seen = Some(since.elapsed());
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
            },
            _ => first_seen = None,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// What the bench last saw of each accepted order.
pub(crate) struct Finals {
    /// (the order as accepted, its state, its body as the buyer sees it, when it was seen)
    pub orders: Vec<(load::Accepted, String, Value, Instant)>,
}

impl Finals {
    fn counts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for (_, state, _, _) in &self.orders {
            *counts.entry(state.clone()).or_insert(0) += 1;
        }
        counts
    }
}

/// Every accepted order number, asked for by its buyer until it is past `pending` (or `timeout`):
/// missing or still pending is a broken promise.
async fn verify_orders(target: &Target, accepted: &[load::Accepted], connections: usize, timeout: Duration) -> Finals {
    let deadline = Instant::now() + timeout;
    let queue = Arc::new(Mutex::new(accepted.to_vec()));
    let seen = Arc::new(Mutex::new(Vec::with_capacity(accepted.len())));
    let mut tasks = Vec::new();
    for _ in 0..connections.max(1) {
        let (queue, seen, target) = (Arc::clone(&queue), Arc::clone(&seen), target.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(order) = lock(&queue).pop() else { return };
                let (state, body) = loop {
                    let (state, body) = ask_state(&target, &order).await;
                    if state != "pending" || Instant::now() >= deadline {
                        break (state, body);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                lock(&seen).push((order, state, body, Instant::now()));
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    Finals { orders: std::mem::take(&mut *lock(&seen)) }
}

/// Orders of buyers whose every unaccepted cart got a definite refusal (409, 429, 503, 4xx), that are not
/// among the numbers the bench was given: a cart answered with an error left them behind. Found by listing
/// each such buyer's orders. (state, order number) per order; rejected ones hold nothing and are kept
/// for the report only.
async fn orders_behind_errors(
    target: &Target,
    uids: &[u64],
    accepted: &std::collections::BTreeSet<&str>,
    connections: usize,
) -> Vec<(String, String)> {
    let queue = Arc::new(Mutex::new(uids.to_vec()));
    let found = Arc::new(Mutex::new(Vec::new()));
    let accepted: Arc<std::collections::BTreeSet<String>> =
        Arc::new(accepted.iter().map(|s| (*s).to_owned()).collect());
    let mut tasks = Vec::new();
    for _ in 0..connections.max(1) {
        let (queue, found, target, accepted) =
            (Arc::clone(&queue), Arc::clone(&found), target.clone(), Arc::clone(&accepted));
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(uid) = lock(&queue).pop() else { return };
                let mut before: Option<String> = None;
                for _ in 0..1_000 {
                    let mut url = format!("{}/api/orders?limit=100", target.base());
                    if let Some(before) = &before {
                        url.push_str(&format!("&before={before}"));
                    }
                    let Ok(answer) = target.http.get(url).bearer_auth(target.buyer_token(uid)).send().await else {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue;
                    };
                    let body: Value = answer.json().await.unwrap_or_default();
                    let Some(orders) = body["data"]["orders"].as_array() else {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue;
                    };
                    for order in orders {
                        let order_no = order["order_no"].as_str().unwrap_or_default().to_owned();
                        if !accepted.contains(&order_no) {
                            let state = order["state"].as_str().unwrap_or("unreadable").to_owned();
                            lock(&found).push((state, order_no));
                        }
                    }
                    match body["data"]["next_before"].as_str() {
                        Some(next) if orders.len() == 100 => before = Some(next.to_owned()),
                        _ => break,
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    std::mem::take(&mut *lock(&found))
}

/// The order's state as its buyer sees it; transport trouble is asked about again, a few times.
async fn ask_state(target: &Target, order: &load::Accepted) -> (String, Value) {
    let mut state = String::from("unanswered");
    let mut seen = Value::Null;
    for _ in 0..20 {
        let answer = target
            .http
            .get(format!("{}/api/orders/{}", target.base(), order.order_no))
            .bearer_auth(target.buyer_token(order.uid))
            .send()
            .await;
        let Ok(answer) = answer else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.unwrap_or_default();
        state = match status {
            200 => {
                seen = body["data"].clone();
                body["data"]["state"].as_str().unwrap_or("unreadable").to_owned()
            }
            404 => "missing".to_owned(),
            other => format!("http_{other}"),
        };
        if !state.starts_with("http_") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (state, seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn also_at_takes_shares_above_zero_and_below_one() {
        assert_eq!(share_below_one("0.35"), Ok(0.35));
        assert_eq!(share_below_one(" 0.5"), Ok(0.5));
        for bad in ["0", "1", "1.5", "-0.2", "NaN", "inf", "x", ""] {
            assert!(share_below_one(bad).is_err(), "{bad:?} was taken");
        }
    }
}
