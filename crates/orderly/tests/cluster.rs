//! End to end on the cluster profile: two payment instances on one PostgreSQL ledger, two workers and two
//! APIs as separate `orderly` processes on the local PostgreSQL (a fresh database per test), Redis
//! (`TEST_REDIS_URL`, keys under a fresh namespace) and RabbitMQ (`TEST_AMQP_URL`, queues under that
//! namespace, deleted by the broker once idle) — or, with `TEST_BUS=kafka`, Kafka (`TEST_KAFKA_BROKERS`,
//! topics under that namespace). The seed's scenarios over HTTP, then the faults: a worker
//! killed with SIGKILL mid-load, the cache lost mid-load, a payment instance killed mid-load. Each ends
//! quiet with I1–I5 holding (cache = store included).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::TryRngCore;
use serde_json::{Value, json};
use sqlx::Connection;

const WORKERS: usize = 2;
const APIS: usize = 2;

fn env_url(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// One process of the cluster; killed when dropped.
struct Process {
    child: Child,
    /// What it printed first ("listening on …", "worker running").
    ready: String,
    killed: bool,
}

impl Process {
    fn address(&self) -> &str {
        self.ready.trim().trim_start_matches("listening on ")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.killed = true;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where a cluster keeps its state, and how its processes are started.
struct Settings {
    dir: tempfile::TempDir,
    database: String,
    namespace: String,
    /// etcd's endpoints as the processes' JSON list.
    etcd: String,
    /// Each process's log in a file of its own here, with the order path's events
    /// (`orderly::trace`); `None`: warnings to the test's stderr.
    logs: Option<PathBuf>,
    started: std::sync::atomic::AtomicUsize,
}

/// How long a killed process stays in the registry, at most (the processes' lease TTL).
const REGISTRY_TTL_S: u64 = 2;

/// etcd (`TEST_ETCD_ENDPOINTS`, comma-separated; `.ci/run` starts it) as a JSON list for the processes.
fn etcd_endpoints() -> String {
    let list = env_url("TEST_ETCD_ENDPOINTS", "http://127.0.0.1:2379");
    let quoted: Vec<String> = list.split(',').map(|e| format!("\"{e}\"")).collect();
    format!("[{}]", quoted.join(","))
}

impl Settings {
    async fn fresh() -> Settings {
        let mut bytes = [0u8; 8];
        rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("randomness");
        let id = format!("{:016x}", u64::from_le_bytes(bytes));
        let database = format!("orderly_e2e_{id}");
        let server = env_url("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres");
        let mut connection =
            sqlx::PgConnection::connect(&server).await.expect("PostgreSQL is up (CI starts it; see .ci/run)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut connection)
            .await
            .expect("create database");
        Settings {
            dir: tempfile::tempdir().expect("temp dir"),
            database,
            namespace: format!("orderly-e2e-{id}"),
            etcd: etcd_endpoints(),
            logs: None,
            started: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn secrets(&self) -> PathBuf {
        self.dir.path().join("secrets")
    }

    fn postgres_url(&self) -> String {
        let server = env_url("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres");
        let (base, _) = server.rsplit_once('/').expect("a database URL names a database");
        format!("{base}/{}", self.database)
    }

    /// `orderly <args>` with the cluster's settings.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_orderly"));
        command
            .args(args)
            .env_remove("ORDERLY_CONFIG")
            .env("ORDERLY_DATA_DIR", self.secrets())
            .env("ORDERLY_LOG", "warn")
            .env("ORDERLY_CLUSTER__POSTGRES_URL", self.postgres_url())
            .env("ORDERLY_CLUSTER__REDIS_URL", env_url("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
            .env("ORDERLY_CLUSTER__AMQP_URL", env_url("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
            // TEST_BUS=kafka: the same tests on Kafka (TEST_KAFKA_BROKERS; scripts/kafka-up starts tansu).
            .env("ORDERLY_CLUSTER__BUS", env_url("TEST_BUS", "rabbitmq"))
            .env("ORDERLY_CLUSTER__KAFKA_BROKERS", env_url("TEST_KAFKA_BROKERS", "127.0.0.1:9092"))
            .env("ORDERLY_CLUSTER__NAMESPACE", &self.namespace)
            .env("ORDERLY_CLUSTER__QUEUE_EXPIRES_MS", "600000")
            .env("ORDERLY_CLUSTER__POSTGRES_CONNECTIONS_MAX", "4")
            // One ledger for every payment instance, in its own schema of the cluster's database.
            .env("ORDERLY_PAYMENT_SERVICE__POSTGRES_URL", self.postgres_url())
            .env("ORDERLY_PAYMENT_SERVICE__POSTGRES_CONNECTIONS_MAX", "4")
            .env("ORDERLY_FLOW__UNPAID_TIMEOUT_MS", "3000")
            .env("ORDERLY_FLOW__RESERVATION_CHECK_DELAY_MS", "2000")
            // Every process registers in etcd under the cluster's namespace: the APIs and workers find
            // the payment instances there, and take their snowflake worker ids from it.
            .env("ORDERLY_CLUSTER__ETCD_ENDPOINTS", &self.etcd)
            .env("ORDERLY_CLUSTER__REGISTRY_TTL_S", REGISTRY_TTL_S.to_string())
            .env("ORDERLY_PAYMENT_SERVICE__REGISTER", "true")
            .stderr(Stdio::inherit());
        if let Some(logs) = &self.logs {
            let n = self.started.fetch_add(1, Ordering::Relaxed);
            let log = std::fs::File::create(logs.join(format!("{}-{n}.log", args.first().unwrap_or(&"orderly"))))
                .expect("log file");
            command.env("ORDERLY_LOG", "warn,orderly_app=info,orderly::trace=debug").stderr(log);
        }
        command
    }

    /// The lines of every process log (`logs`) that started as `role` and mention `needle`.
    fn log_lines(&self, role: &str, needle: &str) -> Vec<String> {
        let logs = self.logs.as_ref().expect("logs kept");
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(logs).expect("log directory").flatten() {
            if entry.file_name().to_string_lossy().starts_with(&format!("{role}-")) {
                let text = std::fs::read_to_string(entry.path()).expect("log");
                lines.extend(text.lines().filter(|line| line.contains(needle)).map(str::to_owned));
            }
        }
        lines
    }

    /// Starts `orderly <role>` with the cluster's settings and waits for its first line.
    fn spawn(&self, role: &str, extra: &[(&str, String)]) -> Process {
        let mut command = self.command(&[role]);
        command.stdout(Stdio::piped());
        for (key, value) in extra {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("orderly starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut ready = String::new();
        BufReader::new(stdout).read_line(&mut ready).expect("reads the first line");
        assert!(!ready.is_empty(), "orderly {role} exited at start (its log is above)");
        Process { child, ready, killed: false }
    }

    /// A worker serving `/metrics` on a port of its own (named in its first line).
    fn worker(&self) -> Process {
        self.spawn("worker", &[("ORDERLY_METRICS_ADDR", "127.0.0.1:0".into())])
    }

    fn token(&self, args: &[&str]) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_orderly"))
            .arg("token")
            .args(args)
            .env_remove("ORDERLY_CONFIG")
            .env("ORDERLY_DATA_DIR", self.secrets())
            .output()
            .expect("token runs");
        assert!(output.status.success(), "token: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("utf-8").trim().to_owned()
    }
}

impl Drop for Settings {
    fn drop(&mut self) {
        // Best effort, after the processes (fields drop in order); `.ci/run` drops what a crashed run left.
        let _ = Command::new("dropdb")
            .args(["-h", "127.0.0.1", "-U", "postgres", "--if-exists", "--force", &self.database])
            .stderr(Stdio::null())
            .status();
    }
}

struct Cluster {
    apis: Vec<Process>,
    workers: Mutex<Vec<Process>>,
    payments: Mutex<Vec<Process>>,
    settings: Settings,
    http: reqwest::Client,
    admin: String,
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_with_payment(&[]).await
    }

    /// With `payment_env` set on the payment instances.
    async fn start_with_payment(payment_env: &[(&str, String)]) -> Cluster {
        Cluster::start_with(Settings::fresh().await, payment_env).await
    }

    /// On an etcd of its own (`endpoints`, a JSON list).
    async fn start_on_etcd(endpoints: String) -> Cluster {
        let mut settings = Settings::fresh().await;
        settings.etcd = endpoints;
        Cluster::start_with(settings, &[]).await
    }

    async fn start_with(settings: Settings, payment_env: &[(&str, String)]) -> Cluster {
        // Two payment instances sharing the PostgreSQL ledger; callers find both in etcd and balance.
        let mut env = vec![("ORDERLY_PAYMENT_SERVICE__LISTEN_ADDR", "127.0.0.1:0".to_owned())];
        env.extend(payment_env.iter().cloned());
        let payments: Vec<Process> = (0..2).map(|_| settings.spawn("payment", &env)).collect();
        let workers = (0..WORKERS).map(|_| settings.worker()).collect();
        let apis = (0..APIS).map(|_| settings.spawn("api", &[("ORDERLY_HTTP_ADDR", "127.0.0.1:0".into())])).collect();
        let admin = settings.token(&["--admin"]);
        Cluster {
            apis,
            workers: Mutex::new(workers),
            payments: Mutex::new(payments),
            settings,
            http: reqwest::Client::new(),
            admin,
        }
    }

    fn api(&self, n: usize) -> String {
        format!("http://{}", self.apis[n % APIS].address())
    }

    /// SIGKILL, as a crash: the worker's unacked deliveries and claimed reservations are left behind.
    fn kill_worker(&self, n: usize) {
        self.workers.lock().expect("workers")[n].kill();
    }

    /// SIGKILL of a payment instance: its charges in flight are cut off with no answer.
    fn kill_payment(&self, n: usize) {
        self.payments.lock().expect("payments")[n].kill();
    }

    /// One more payment instance (it registers; callers find it).
    fn start_payment(&self) {
        let payment = self.settings.spawn("payment", &[("ORDERLY_PAYMENT_SERVICE__LISTEN_ADDR", "127.0.0.1:0".into())]);
        self.payments.lock().expect("payments").push(payment);
    }

    fn restart_worker(&self, n: usize) {
        let worker = self.settings.worker();
        self.workers.lock().expect("workers")[n] = worker;
    }

    /// The processes registered in etcd for this cluster, by role: (instance, address).
    async fn registered(&self, role: &str) -> Vec<(String, String)> {
        members_of(&self.admin_get("/api/admin/cluster").await, role)
    }

    /// Waits (up to `within`) until the payment instances registered are exactly at `addresses`. The
    /// registry's status may answer 503 ("retry") for a moment while etcd is slow under load: asked again.
    async fn wait_payments_registered(&self, addresses: &[String], within: Duration) {
        let deadline = Instant::now() + within;
        let mut want: Vec<&String> = addresses.iter().collect();
        want.sort();
        loop {
            let answer = self.admin_answer_via(0, "/api/admin/cluster").await;
            let seen = if answer["status"] == 200 {
                let mut seen: Vec<String> =
                    members_of(&answer["data"], "payment").into_iter().map(|(_, address)| address).collect();
                seen.sort();
                if seen.iter().eq(want.iter().copied()) {
                    return;
                }
                format!("{seen:?}")
            } else {
                assert_eq!(answer["status"], 503, "only a retry is expected: {answer}");
                answer.to_string()
            };
            assert!(Instant::now() < deadline, "payment instances {seen}, want {want:?}, not within {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn payment_addresses(&self) -> Vec<String> {
        let payments = self.payments.lock().expect("payments");
        payments.iter().filter(|p| !p.killed).map(|p| format!("http://{}", p.address())).collect()
    }

    /// `PUT` (a value) or `DELETE` (none) of a setting through API `via`; the whole answer.
    async fn set_setting(&self, via: usize, key: &str, value: Option<&str>) -> Value {
        let url = format!("{}/api/admin/config/{key}", self.api(via));
        let request = match value {
            Some(value) => self.http.put(url).body(value.to_owned()),
            None => self.http.delete(url),
        };
        request.bearer_auth(&self.admin).send().await.expect("request").json().await.expect("json")
    }

    /// A `/metrics` text.
    async fn scrape(&self, url: &str) -> String {
        let answer = self.http.get(url).send().await.expect("scrape");
        assert_eq!(answer.status(), 200, "{url}");
        answer.text().await.expect("metrics text")
    }

    async fn admin_get(&self, path: &str) -> Value {
        self.admin_get_via(0, path).await
    }

    async fn admin_get_via(&self, via: usize, path: &str) -> Value {
        let answer = self.admin_answer_via(via, path).await;
        assert_eq!(answer["status"], 200, "{path}: {answer}");
        answer["data"].clone()
    }

    /// The whole answer (envelope and status, whatever it is) of an admin `GET` through API `via`.
    async fn admin_answer_via(&self, via: usize, path: &str) -> Value {
        let answer = self.http.get(format!("{}{path}", self.api(via))).bearer_auth(&self.admin).send().await;
        answer.expect("admin request").json().await.expect("json")
    }

    async fn load_catalog(&self, stock: &[(u64, u64, f64, u64)]) {
        let commodities: Vec<Value> = stock
            .iter()
            .map(
                |(id, shop, price, add)| json!({"commodity_id": id, "shop_id": shop, "price": price, "add_stock": add}),
            )
            .collect();
        let answer = self
            .http
            .post(format!("{}/api/admin/catalog", self.api(0)))
            .bearer_auth(&self.admin)
            .json(&json!({ "commodities": commodities }))
            .send()
            .await
            .expect("catalog request");
        assert_eq!(answer.status(), 200);
    }

    /// Every queue, the outbox and the safe-pay set empty, twice in a row (a worker may hold a delivery
    /// the broker does not count).
    async fn wait_quiet(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut quiet_once = false;
        loop {
            let bus = self.admin_get("/api/admin/bus").await;
            let queued: u64 = bus["queued"].as_array().expect("queues").iter().filter_map(|q| q[1].as_u64()).sum();
            let quiet = queued == 0 && bus["outbox"] == 0 && bus["payments_pending"] == 0;
            if quiet && quiet_once {
                return;
            }
            quiet_once = quiet;
            assert!(Instant::now() < deadline, "not quiet after two minutes: {bus}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The audit, once quiet: no violations, cache = store included.
    async fn audit_clean(&self) -> Value {
        self.wait_quiet().await;
        let audit = self.admin_get("/api/admin/audit?quiet=true&deadline_ms=60000").await;
        assert_eq!(audit["report"]["violations"], json!([]), "audit: {audit:#}");
        audit["report"].clone()
    }

    /// Deletes every key of the cluster's namespace: what FLUSHALL or a Redis restart does to it (other
    /// tests share this Redis database).
    async fn lose_redis(&self) {
        let client = redis::Client::open(env_url("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")).expect("client");
        let mut connection = client.get_multiplexed_async_connection().await.expect("Redis is up");
        // One script: atomic, like a flush (KEYS then DEL would spare what is written in between).
        let flush =
            redis::Script::new("for _, key in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', key) end");
        let pattern = format!("{}:*", self.settings.namespace);
        let () = flush.arg(pattern).invoke_async(&mut connection).await.expect("flush");
    }
}

fn seed_body(uid: u64, pay_at_once: bool) -> Value {
    json!({
        "uid": uid, "to_uid": uid + 1, "origin_price": 79.98, "actual_price": 79.98, "pay_at_once": pay_at_once,
        "commodity_details": [
            {"actual_price": 29.99, "commodity_id": 1, "good_type": 1, "page_type": 0, "prices": 29.99, "user_id": 100001, "num": 1},
            {"actual_price": 49.99, "commodity_id": 2, "good_type": 1, "page_type": 0, "prices": 49.99, "user_id": 100002, "num": 1}
        ]
    })
}

fn one_line(uid: u64, commodity: u64, num: u64, pay_at_once: bool) -> Value {
    let (shop, price) = match commodity {
        1 => (100_001, 29.99),
        2 => (100_002, 49.99),
        _ => (100_003, 9.99),
    };
    json!({
        "uid": uid, "to_uid": uid, "origin_price": 0, "actual_price": 0, "pay_at_once": pay_at_once,
        "commodity_details": [{"actual_price": price, "commodity_id": commodity, "good_type": 0, "page_type": 0,
                               "prices": price, "user_id": shop, "num": num}]
    })
}

const CATALOG: [(u64, u64, f64, u64); 3] =
    [(1, 100_001, 29.99, 1_000), (2, 100_002, 49.99, 1_000), (3, 100_003, 9.99, 1)];

struct Buyer<'a> {
    cluster: &'a Cluster,
    bearer: String,
}

impl Buyer<'_> {
    fn new(cluster: &Cluster, uid: u64) -> Buyer<'_> {
        Buyer { cluster, bearer: cluster.settings.token(&["--uid", &uid.to_string()]) }
    }

    /// POST to the API `via`; the whole answer.
    async fn post(&self, via: usize, path: &str, body: &Value, key: Option<&str>) -> Value {
        let mut request =
            self.cluster.http.post(format!("{}{path}", self.cluster.api(via))).bearer_auth(&self.bearer).json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.expect("request").json().await.expect("json")
    }

    async fn place(&self, via: usize, body: &Value) -> Vec<String> {
        let answer = self.post(via, "/api/orders", body, None).await;
        assert_eq!(answer["status"], 200, "{answer}");
        order_nos(&answer)
    }

    async fn order(&self, via: usize, order_no: &str) -> Value {
        let answer = self
            .cluster
            .http
            .get(format!("{}/api/orders/{order_no}", self.cluster.api(via)))
            .bearer_auth(&self.bearer)
            .send()
            .await
            .expect("request");
        let answer: Value = answer.json().await.expect("json");
        assert_eq!(answer["status"], 200, "{answer}");
        answer["data"].clone()
    }

    /// Polls (through either API) until the order is in `state`: within four minutes. On the Kafka bus a
    /// 3 s unpaid timeout's close took from 15 s to just over 60 s in runs of 2026-12-06 (the delay tiers
    /// and their mover on tansu), against about 3 s on RabbitMQ; on 2026-12-07, on a slower machine and a
    /// fresh tansu storage, the scenario took 117 s in one CI run and a close outlasted this wait's then
    /// 120 s in another (15–19 s on a storage used before), with no warning from any orderly process.
    /// That latency is noted on issue 12, and this bound is for liveness, not speed.
    async fn wait_state(&self, order_no: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut turn = 0;
        loop {
            turn += 1;
            let order = self.order(turn, order_no).await;
            if order["state"] == state {
                return order;
            }
            assert!(Instant::now() < deadline, "{order_no} never became {state}: {order}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn order_nos(answer: &Value) -> Vec<String> {
    answer["data"]["order_no"]
        .as_array()
        .expect("order numbers")
        .iter()
        .map(|n| n.as_str().expect("a string").to_owned())
        .collect()
}

async fn stock_of(cluster: &Cluster, commodity: u64) -> u64 {
    let answer = cluster.http.get(format!("{}/api/commodities/{commodity}", cluster.api(1))).send().await;
    let answer: Value = answer.expect("request").json().await.expect("json");
    answer["data"]["stock"].as_u64().expect("stock")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_scenarios_run_on_the_cluster() {
    let mut settings = Settings::fresh().await;
    let logs = settings.dir.path().join("logs");
    std::fs::create_dir(&logs).expect("log directory");
    settings.logs = Some(logs);
    let cluster = Cluster::start_with(settings, &[]).await;
    cluster.load_catalog(&CATALOG).await;
    let buyer = Buyer::new(&cluster, 1);

    // The seed's request, paid at once: one order per shop, both paid through the payment service. Sent
    // with a trace context: its orders' path is followed below in every process's log.
    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let answer: Value = cluster
        .http
        .post(format!("{}/api/orders", cluster.api(0)))
        .bearer_auth(&buyer.bearer)
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .json(&seed_body(1, true))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(answer["status"], 200, "{answer}");
    let paid = order_nos(&answer);
    assert_eq!(paid.len(), 2, "split by shop");
    for order_no in &paid {
        let order = buyer.wait_state(order_no, "paid").await;
        assert_eq!(order["payment"]["state"], "succeeded");
    }
    // One order's path across the processes, by its trace id: accepted by the API, created and charged
    // by a worker, answered by a payment instance (the trace context went as gRPC metadata), paid.
    for order_no in &paid {
        let lines = |role: &str, what: &str| {
            cluster
                .settings
                .log_lines(role, TRACE_ID)
                .into_iter()
                .filter(|line| line.contains(order_no.as_str()) && line.contains(what))
                .count()
        };
        assert_eq!(lines("api", "accepted"), 1, "{order_no}: the API's log");
        assert_eq!(lines("worker", "order created"), 1, "{order_no}: a worker's log");
        assert!(lines("worker", "charge sent") >= 1, "{order_no}: a worker's log");
        assert!(lines("payment", "charge answered") >= 1, "{order_no}: a payment instance's log");
        assert_eq!(lines("worker", "order paid"), 1, "{order_no}: a worker's log");
    }
    assert!(cluster.settings.log_lines("api", TRACE_ID).len() >= 2, "both orders under the request's trace");
    // Paid later, through the other API.
    let later = buyer.place(1, &one_line(1, 1, 2, false)).await;
    buyer.wait_state(&later[0], "to_pay").await;
    let answer = buyer.post(0, &format!("/api/orders/{}/pay", later[0]), &json!({}), None).await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["data"]["state"], "paid");
    // Cancelled: its stock comes back to the cache, which the buyer's view reads.
    let before = stock_of(&cluster, 2).await;
    let cancelled = buyer.place(0, &one_line(1, 2, 3, false)).await;
    assert_eq!(stock_of(&cluster, 2).await, before - 3);
    buyer.wait_state(&cancelled[0], "to_pay").await;
    let answer = buyer.post(1, &format!("/api/orders/{}/cancel", cancelled[0]), &json!({}), None).await;
    assert_eq!((answer["status"].clone(), answer["data"]["state"].clone()), (json!(200), json!("cancelled")));
    let deadline = Instant::now() + Duration::from_secs(30);
    while stock_of(&cluster, 2).await != before {
        assert!(Instant::now() < deadline, "the cancelled order's stock never came back to the cache");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Never paid: the unpaid timeout (3 s here) closes it.
    let abandoned = buyer.place(1, &one_line(1, 1, 1, false)).await;
    buyer.wait_state(&abandoned[0], "closed").await;
    // An idempotent retry, even through the other API, gets the same order numbers; the same key with
    // another body is refused.
    let body = one_line(1, 2, 1, false);
    let first = buyer.post(0, "/api/orders", &body, Some("retry-1")).await;
    let again = buyer.post(1, "/api/orders", &body, Some("retry-1")).await;
    assert_eq!(first["status"], 200, "{first}");
    assert_eq!(order_nos(&again), order_nos(&first));
    let other = buyer.post(0, "/api/orders", &one_line(1, 2, 2, false), Some("retry-1")).await;
    assert_eq!((other["status"].clone(), other["code"].clone()), (json!(422), json!("idempotency_key_reused")));
    // Sold out: commodity 3 has one unit.
    let last_unit = buyer.place(0, &one_line(1, 3, 1, false)).await;
    let refused = buyer.post(1, "/api/orders", &one_line(1, 3, 1, false), None).await;
    assert_eq!((refused["status"].clone(), refused["code"].clone()), (json!(409), json!("sold_out")));

    let report = cluster.audit_clean().await;
    assert_eq!(report["orders_by_state"]["paid"], 3, "{report:#}");
    // Left unpaid, these two close too (3 s): then every count is final.
    for order_no in order_nos(&first).iter().chain(&last_unit) {
        buyer.wait_state(order_no, "closed").await;
    }
    // What Prometheus would sum across the processes: the entry's events on the APIs, the rest on the
    // workers (and the buyer's pay and cancel on the API that took them).
    let mut scrapes = Vec::new();
    for api in 0..APIS {
        scrapes.push(cluster.scrape(&format!("{}/metrics", cluster.api(api))).await);
    }
    let workers: Vec<String> = cluster
        .workers
        .lock()
        .expect("workers")
        .iter()
        .map(|w| w.ready.rsplit("metrics on ").next().unwrap_or_default().trim().to_owned())
        .collect();
    for address in workers {
        scrapes.push(cluster.scrape(&format!("http://{address}/metrics")).await);
    }
    let total = |event: &str| -> f64 {
        let series = format!("orderly_order_events_total{{event=\"{event}\"}} ");
        scrapes
            .iter()
            .flat_map(|text| text.lines())
            .filter_map(|line| line.strip_prefix(series.as_str()))
            .filter_map(|value| value.trim().parse::<f64>().ok())
            .sum()
    };
    // Seven orders accepted and created (two paid at once, one paid later, one cancelled, three closed
    // unpaid: the abandoned one, the one by key, commodity 3's last unit); the refused cart is sold out.
    assert_eq!(total("accepted"), 7.0, "{scrapes:#?}");
    assert_eq!(total("sold_out"), 1.0);
    assert_eq!(total("created"), 7.0);
    assert_eq!((total("paid"), total("cancelled"), total("closed")), (3.0, 1.0, 3.0));
    // The command-line audit of the cluster agrees.
    let output = cluster.settings.command(&["audit", "--cluster", "--quiet"]).output().expect("audit runs");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && printed.contains("audit: no violations"), "{printed}");
}

/// Buyers place orders through both APIs until `stop`; the accepted order numbers, with their buyer.
async fn load(cluster: Arc<Cluster>, stop: Arc<AtomicBool>) -> Vec<(u64, String)> {
    let mut clients = Vec::new();
    for uid in 1..=8u64 {
        let (cluster, stop) = (Arc::clone(&cluster), Arc::clone(&stop));
        clients.push(tokio::spawn(async move {
            let buyer = Buyer::new(&cluster, uid);
            let mut accepted = Vec::new();
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) && round < 2_000 {
                round += 1;
                let body = if round.is_multiple_of(4) {
                    seed_body(uid, round.is_multiple_of(8))
                } else {
                    one_line(uid, 1 + round % 2, 1 + round % 3, round.is_multiple_of(3))
                };
                let answer = buyer.post(round as usize, "/api/orders", &body, None).await;
                if answer["status"] == 200 {
                    accepted.extend(order_nos(&answer).into_iter().map(|n| (uid, n)));
                }
            }
            accepted
        }));
    }
    let mut accepted = Vec::new();
    for client in clients {
        accepted.extend(client.await.expect("client task"));
    }
    accepted
}

/// Every accepted order number exists and leaves `pending`; then the audit is clean.
async fn every_accepted_order_is_definite(cluster: &Cluster, accepted: &[(u64, String)]) {
    let buyers: Vec<Buyer<'_>> = (1..=8).map(|uid| Buyer::new(cluster, uid)).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    for (uid, order_no) in accepted {
        let buyer = &buyers[(*uid - 1) as usize];
        loop {
            let order = buyer.order(0, order_no).await;
            if order["state"] != "pending" {
                break;
            }
            assert!(Instant::now() < deadline, "{order_no} still pending after two minutes");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    cluster.audit_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_load_loses_no_accepted_order() {
    let cluster = Arc::new(Cluster::start().await);
    cluster.load_catalog(&CATALOG).await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = tokio::spawn(load(Arc::clone(&cluster), Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Kill -9 one worker while it holds deliveries and claimed reservations; restart it a moment later.
    cluster.kill_worker(0);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    cluster.restart_worker(0);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, Ordering::Relaxed);
    let accepted = running.await.expect("load");
    assert!(accepted.len() > 20, "the load got going ({} accepted)", accepted.len());
    every_accepted_order_is_definite(&cluster, &accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_lost_mid_load_keeps_every_invariant() {
    let cluster = Arc::new(Cluster::start().await);
    cluster.load_catalog(&CATALOG).await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = tokio::spawn(load(Arc::clone(&cluster), Arc::clone(&stop)));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        cluster.lose_redis().await;
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, Ordering::Relaxed);
    let accepted = running.await.expect("load");
    assert!(accepted.len() > 20, "the load got going ({} accepted)", accepted.len());
    every_accepted_order_is_definite(&cluster, &accepted).await;
}

/// A payment instance killed mid-load and left dead: callers balance onto the other instance, which
/// shares the PostgreSQL ledger; the charges cut off with the dead one are settled by the other once their
/// lease runs out (the acquirer record decides, first writer wins). Paid iff captured, never twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_instance_killed_mid_load_is_settled_by_the_other() {
    let cluster = Arc::new(
        Cluster::start_with_payment(&[
            // Slow enough that the kill lands mid-charge; a short lease so the test need not wait long.
            ("ORDERLY_LOCAL__ACQUIRER__LATENCY_MS", "200".to_owned()),
            ("ORDERLY_LOCAL__LEDGER__CHARGE_LEASE_MS", "1000".to_owned()),
        ])
        .await,
    );
    cluster.load_catalog(&CATALOG).await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = tokio::spawn(load(Arc::clone(&cluster), Arc::clone(&stop)));
    // Kill instance 0 while charges are running (with two instances, some of them are on it, most likely).
    let mut db = sqlx::PgConnection::connect(&cluster.settings.postgres_url()).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running: i64 = sqlx::query_scalar("SELECT count(*) FROM payment.payment_ledger WHERE state = 'processing'")
            .fetch_one(&mut db)
            .await
            .expect("ledger");
        if running >= 6 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill_payment(0);
    // The killed instance leaves the registry, so the balancers, within its lease's TTL.
    let survivors = cluster.payment_addresses();
    cluster.wait_payments_registered(&survivors, Duration::from_secs(REGISTRY_TTL_S + 1)).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, Ordering::Relaxed);
    let accepted = running.await.expect("load");
    assert!(accepted.len() > 20, "the load got going ({} accepted)", accepted.len());
    every_accepted_order_is_definite(&cluster, &accepted).await;
    let report = cluster.admin_get("/api/admin/audit?quiet=true&deadline_ms=60000").await;
    assert!(report["report"]["orders_by_state"]["paid"].as_u64().unwrap_or(0) > 0, "some orders paid: {report:#}");
    // The ledger itself: nothing left unsettled.
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM payment.payment_ledger GROUP BY state ORDER BY state")
            .fetch_all(&mut db)
            .await
            .expect("ledger states");
    let voided: i64 = sqlx::query_scalar("SELECT count(*) FROM payment.acquirer_records WHERE outcome = 'voided'")
        .fetch_one(&mut db)
        .await
        .expect("voids");
    eprintln!("payment ledger after the kill: {states:?}, attempts voided by the survivor: {voided}");
    assert!(states.iter().all(|(state, _)| state != "processing"), "unsettled entries: {states:?}");

    // A third instance registers and takes the calls: with the second one killed too, it is the only
    // one left, and a pay-at-once order is paid through it.
    cluster.start_payment();
    let joined = cluster.payment_addresses();
    cluster.wait_payments_registered(&joined, Duration::from_secs(1)).await;
    cluster.kill_payment(1);
    let buyer = Buyer::new(&cluster, 1);
    let order_no = buyer.place(0, &one_line(1, 1, 1, true)).await;
    let order = buyer.wait_state(&order_no[0], "paid").await;
    assert_eq!(order["payment"]["state"], "succeeded", "{order}");
}

/// Every process registers in etcd (the APIs at their address, each API and worker with a worker id of
/// its own, no id configured); a setting changed through one API applies on every API within a second,
/// and a bad value is refused naming its key, changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_register_and_settings_apply_everywhere_within_a_second() {
    let cluster = Cluster::start().await;
    cluster.load_catalog(&CATALOG).await;
    let status = cluster.admin_get("/api/admin/cluster").await;
    let apis = cluster.registered("api").await;
    let mut addresses: Vec<String> = apis.iter().map(|(_, address)| address.clone()).collect();
    addresses.sort();
    let mut expected: Vec<String> = (0..APIS).map(|n| cluster.api(n)).collect();
    expected.sort();
    assert_eq!(addresses, expected, "{status:#}");
    assert_eq!(cluster.registered("worker").await.len(), WORKERS, "{status:#}");
    assert_eq!(cluster.registered("payment").await.len(), 2, "{status:#}");
    let holders: Vec<&str> =
        status["worker_ids"].as_object().expect("ids").values().filter_map(Value::as_str).collect();
    assert_eq!(holders.len(), APIS + WORKERS, "one worker id per API and worker: {status:#}");
    let mut unique = holders.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), holders.len(), "each held by one process: {status:#}");

    // The roles that run once are led by workers, elected in etcd.
    let workers: Vec<String> = cluster.registered("worker").await.into_iter().map(|(instance, _)| instance).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leaders = cluster.admin_get("/api/admin/cluster").await["leaders"].clone();
        let led_by_workers = ["outbox", "reconciler"]
            .iter()
            .all(|role| leaders[*role].as_str().is_some_and(|leader| workers.iter().any(|w| w == leader)));
        if led_by_workers {
            break;
        }
        assert!(Instant::now() < deadline, "leaders {leaders} not among the workers {workers:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let refused = cluster.set_setting(0, "rate_limit.orders_per_second", Some("\"fast\"")).await;
    assert_eq!(refused["status"], 422, "{refused}");
    assert_eq!(refused["code"], "invalid_setting", "{refused}");
    assert_eq!(refused["data"]["key"], "rate_limit.orders_per_second", "{refused}");
    assert_eq!(cluster.admin_get("/api/admin/config").await["settings"], json!({}), "nothing changed");

    // One order a second, set through API 0: both APIs refuse a quick burst within a second.
    for key in ["rate_limit.orders_per_second", "rate_limit.burst"] {
        let answer = cluster.set_setting(0, key, Some("1")).await;
        assert_eq!(answer["status"], 200, "{answer}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let buyer = Buyer::new(&cluster, 2);
    for via in 0..APIS {
        let mut limited = 0;
        for _ in 0..5 {
            let answer = buyer.post(via, "/api/orders", &one_line(2, 1, 1, false), None).await;
            if answer["status"] == 429 {
                assert_eq!(answer["code"], "rate_limited", "{answer}");
                limited += 1;
            }
        }
        assert!(limited >= 3, "API {via} refused {limited} of 5 at one order a second");
    }
    let effective = cluster.admin_get("/api/admin/config").await;
    assert_eq!(effective["effective"]["rate_limit.orders_per_second"], "1", "{effective}");

    // Removed: every API is back to its own configuration within a second.
    for key in ["rate_limit.orders_per_second", "rate_limit.burst"] {
        assert_eq!(cluster.set_setting(1, key, None).await["status"], 200);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for via in 0..APIS {
        for _ in 0..5 {
            let answer = buyer.post(via, "/api/orders", &one_line(2, 1, 1, false), None).await;
            assert_eq!(answer["status"], 200, "API {via}: {answer}");
        }
    }

    // A rule per buyer, set through API 1: within a second every API refuses a buyer's second cart in a
    // second with the rule's code — another buyer's first cart still passes — and shows the rule.
    for key in ["rate_limit.buyer.per_second", "rate_limit.buyer.burst"] {
        assert_eq!(cluster.set_setting(1, key, Some("1")).await["status"], 200);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for via in 0..APIS {
        let (hasty, other) = (Buyer::new(&cluster, 10 + via as u64), Buyer::new(&cluster, 20 + via as u64));
        let first = hasty.post(via, "/api/orders", &one_line(10 + via as u64, 1, 1, false), None).await;
        assert_eq!(first["status"], 200, "API {via}: {first}");
        let second = hasty.post(via, "/api/orders", &one_line(10 + via as u64, 1, 1, false), None).await;
        assert_eq!((second["status"].clone(), second["code"].clone()), (json!(429), json!("rate_limited_buyer")));
        let another = other.post(via, "/api/orders", &one_line(20 + via as u64, 1, 1, false), None).await;
        assert_eq!(another["status"], 200, "API {via}: {another}");
        let limits = cluster.admin_get_via(via, "/api/admin/limits").await;
        let rule =
            limits["rules"].as_array().and_then(|rules| rules.iter().find(|rule| rule["rule"] == "buyer").cloned());
        let rule = rule.expect("the buyer rule is shown");
        assert_eq!((rule["per_second"].clone(), rule["refused"].clone()), (json!(1), json!(1)), "API {via}: {limits}");
    }
    for key in ["rate_limit.buyer.per_second", "rate_limit.buyer.burst"] {
        assert_eq!(cluster.set_setting(0, key, None).await["status"], 200);
    }

    // A commodity rule holds across the APIs (rate_limit.shared, buckets in Redis): 2 a second, burst 2.
    // Six carts of that commodity at once over both APIs: 2 pass (3 if a token came back meanwhile),
    // where each API on its own would have passed 2 — 4 in all. Sent together, so a slow machine does not
    // spread them over the refills; the bound still counts the tokens that came back while they ran.
    for key in ["rate_limit.commodity.per_second", "rate_limit.commodity.burst"] {
        assert_eq!(cluster.set_setting(0, key, Some("2")).await["status"], 200);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let buyers: Vec<Buyer> = (0..6_u64).map(|turn| Buyer::new(&cluster, 30 + turn)).collect();
    let carts: Vec<Value> = (0..6_u64).map(|turn| one_line(30 + turn, 2, 1, false)).collect();
    let started = Instant::now();
    let answers = futures_util::future::join_all(
        buyers
            .iter()
            .zip(&carts)
            .enumerate()
            .map(|(turn, (buyer, cart))| buyer.post(turn % APIS, "/api/orders", cart, None)),
    )
    .await;
    let took_s = started.elapsed().as_secs_f64();
    let mut passed = 0;
    for answer in answers {
        match answer["status"].as_u64() {
            Some(200) => passed += 1,
            _ => assert_eq!(answer["code"], "rate_limited_commodity", "{answer}"),
        }
    }
    let most = 3 + (2.0 * took_s).floor() as usize;
    assert!(
        (2..=most).contains(&passed),
        "{passed} of 6 carts sent together passed a shared rule of 2 a second, burst 2 (in {took_s:.2} s)"
    );
    for via in 0..APIS {
        let limits = cluster.admin_get_via(via, "/api/admin/limits").await;
        let rule = limits["rules"].as_array().and_then(|r| r.iter().find(|r| r["rule"] == "commodity").cloned());
        assert_eq!(rule.map(|r| r["shared"].clone()), Some(json!(true)), "API {via}: {limits}");
    }
    for key in ["rate_limit.commodity.per_second", "rate_limit.commodity.burst"] {
        assert_eq!(cluster.set_setting(0, key, None).await["status"], 200);
    }

    // A buyer's cap holds across the APIs (the gate in Redis): at most 2 units of a commodity. Six carts
    // of one unit each, sent at once over both APIs: exactly 2 pass.
    assert_eq!(cluster.set_setting(1, "flow.buyer_caps.units_per_commodity", Some("2")).await["status"], 200);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let capped = Buyer::new(&cluster, 40);
    let cart = one_line(40, 1, 1, false);
    let answers = tokio::join!(
        capped.post(0, "/api/orders", &cart, None),
        capped.post(1, "/api/orders", &cart, None),
        capped.post(0, "/api/orders", &cart, None),
        capped.post(1, "/api/orders", &cart, None),
        capped.post(0, "/api/orders", &cart, None),
        capped.post(1, "/api/orders", &cart, None),
    );
    let answers = [answers.0, answers.1, answers.2, answers.3, answers.4, answers.5];
    let passed = answers.iter().filter(|answer| answer["status"] == 200).count();
    for answer in answers.iter().filter(|answer| answer["status"] != 200) {
        assert_eq!(answer["code"], "purchase_cap_reached", "{answer}");
        assert_eq!(answer["data"]["cap"], 2, "{answer}");
    }
    assert_eq!(passed, 2, "racing carts over two APIs passed a cap of 2: {answers:?}");
    assert_eq!(cluster.set_setting(1, "flow.buyer_caps.units_per_commodity", None).await["status"], 200);
}

/// A one-member etcd of a test's own, on free ports, that the test may kill and start again (on its
/// data): the shared one serves the other tests.
struct PrivateEtcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl PrivateEtcd {
    fn start() -> PrivateEtcd {
        let free_port = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let mut etcd = PrivateEtcd {
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.restart();
        etcd
    }

    fn endpoints(&self) -> String {
        format!("[\"http://127.0.0.1:{}\"]", self.client_port)
    }

    /// Starts the member (again, on its data) and waits until it takes connections.
    fn restart(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "solo", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("solo={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd on PATH (scripts/etcd-up installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// All of etcd down under load for longer than the registrations' TTL: the processes keep the last
/// membership (payments still go to the instances they knew) and keep taking orders; when etcd is back
/// they are registered still. Every accepted order ends definite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_keep_being_accepted_while_etcd_is_down() {
    let mut etcd = PrivateEtcd::start();
    let cluster = Arc::new(Cluster::start_on_etcd(etcd.endpoints()).await);
    cluster.load_catalog(&CATALOG).await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = tokio::spawn(load(Arc::clone(&cluster), Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    etcd.kill();
    tokio::time::sleep(Duration::from_secs(REGISTRY_TTL_S + 1)).await;
    // Past the TTL without etcd: carts paid at once are accepted and paid, through either API.
    let buyer = Buyer::new(&cluster, 9);
    let mut paid_during = Vec::new();
    for via in 0..APIS {
        paid_during.extend(buyer.place(via, &one_line(9, 1, 1, true)).await);
    }
    for order_no in &paid_during {
        buyer.wait_state(order_no, "paid").await;
    }

    etcd.restart();
    // Back: every process is registered (its lease outlived the outage, or it registered again).
    let deadline = Instant::now() + Duration::from_secs(REGISTRY_TTL_S * 3);
    loop {
        let status = cluster.admin_answer_via(0, "/api/admin/cluster").await;
        let members = status["data"]["members"].as_array().map_or(0, Vec::len);
        if status["status"] == 200 && members == APIS + WORKERS + 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not every process registered again: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let accepted = running.await.expect("load");
    assert!(accepted.len() > 20, "the load got going ({} accepted)", accepted.len());
    every_accepted_order_is_definite(&cluster, &accepted).await;
}

/// The members of `role` in a `/api/admin/cluster` answer's data: (instance, address).
fn members_of(status: &Value, role: &str) -> Vec<(String, String)> {
    let members = status["members"].as_array().expect("members").iter();
    members
        .filter(|m| m["role"] == role)
        .map(|m| (m["instance"].as_str().unwrap_or("").to_owned(), m["address"].as_str().unwrap_or("").to_owned()))
        .collect()
}
