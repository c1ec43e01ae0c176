//! The payment service through gRPC, in process: idempotency under racing retries, declines, lost
//! answers, refunds, bad input, and a service that is down. In every case an order has at most one
//! successful charge (I5), and an unknown outcome is reported as such, never as a decline.

use std::net::SocketAddr;
use std::sync::Arc;

use orderly_app::Clock;
use orderly_app::ports::{ChargeOutcome, ChargeRequest, PaymentStatus, Payments, RefundOutcome, RefundRefusal};
use orderly_clock::SystemClock;
use orderly_domain::{Money, OrderNo, SnowflakeId, Uid};
use orderly_ledger::LedgerConfig;
use orderly_local::{AcquirerConfig, Durability, LocalConfig};
use orderly_payment::proto::payment_client::PaymentClient;
use orderly_payment::{ClientConfig, GrpcPayments};

struct Service {
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Service {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}

async fn start_on(address: &str, acquirer: AcquirerConfig) -> Service {
    let dir = tempfile::tempdir().expect("temp dir");
    let local = LocalConfig { durability: Durability::Os, acquirer, ledger: lease(), ..LocalConfig::default() };
    let ledger = orderly_local::open_payment_ledger(dir.path(), Arc::new(SystemClock), &local).expect("ledger");
    let listener = tokio::net::TcpListener::bind(address).await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        orderly_payment::serve(listener, Arc::new(ledger), async {
            let _ = stopped.await;
        })
        .await
        .expect("serves");
    });
    Service { address, stop: Some(stop), task, _dir: dir }
}

async fn start(acquirer: AcquirerConfig) -> Service {
    start_on("127.0.0.1:0", acquirer).await
}

/// Short, so a test can wait a charge's lease out.
fn lease() -> LedgerConfig {
    LedgerConfig { charge_lease_ms: 300 }
}

fn client(address: SocketAddr) -> GrpcPayments {
    GrpcPayments::new(ClientConfig { endpoints: vec![format!("http://{address}")], ..ClientConfig::default() })
        .expect("client")
}

fn order(n: u64) -> OrderNo {
    OrderNo::new(SnowflakeId(n), Uid(42))
}

fn charge(n: u64, key: &str) -> ChargeRequest {
    ChargeRequest {
        order_no: order(n),
        amount: Money::from_cents(2999),
        idempotency_key: key.to_owned(),
        deadline_ms: SystemClock.now_ms() + 60_000,
        trace: None,
    }
}

async fn successes_for(payments: &GrpcPayments, n: u64) -> usize {
    payments.succeeded().await.expect("list").iter().filter(|(no, _)| *no == order(n)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charge_is_idempotent_and_refunds_never_exceed_the_charge() {
    let service = start(AcquirerConfig::default()).await;
    let payments = client(service.address);
    let first = payments.charge(charge(1, "k1")).await.expect("charge");
    let ChargeOutcome::Succeeded { payment_id } = first.clone() else { panic!("declined: {first:?}") };
    assert_eq!(payments.charge(charge(1, "k1")).await.expect("retry"), first, "a retry answers the first result");
    assert_eq!(payments.charge(charge(1, "k2")).await.expect("new key"), first, "a paid order is never charged again");
    assert_eq!(payments.query(order(1)).await.expect("query"), PaymentStatus::Succeeded { payment_id });
    assert_eq!(payments.query(order(2)).await.expect("query"), PaymentStatus::NotFound);
    assert_eq!(successes_for(&payments, 1).await, 1);

    let refund = |amount: i64, key: &'static str| {
        let payments = payments.clone();
        async move { payments.refund(order(1), Money::from_cents(amount), key).await.expect("refund") }
    };
    assert_eq!(refund(1_000, "r1").await, RefundOutcome::Refunded { total: Money::from_cents(1_000) });
    assert_eq!(refund(1_000, "r1").await, RefundOutcome::Refunded { total: Money::from_cents(1_000) }, "retry");
    assert_eq!(refund(2_000, "r2").await, RefundOutcome::Refused { reason: RefundRefusal::AmountOutOfRange });
    assert_eq!(refund(1_999, "r3").await, RefundOutcome::Refunded { total: Money::from_cents(2_999) });
    let unpaid = payments.refund(order(2), Money::from_cents(1), "r4").await.expect("refund");
    assert_eq!(unpaid, RefundOutcome::Refused { reason: RefundRefusal::NotCharged });
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_retries_charge_once() {
    let service = start(AcquirerConfig { latency_ms: 100, ..AcquirerConfig::default() }).await;
    let payments = client(service.address);
    let mut racers = Vec::new();
    for _ in 0..16 {
        let payments = payments.clone();
        racers.push(tokio::spawn(async move { payments.charge(charge(7, "same-attempt")).await }));
    }
    let mut succeeded = 0;
    for racer in racers {
        match racer.await.expect("task") {
            Ok(ChargeOutcome::Succeeded { .. }) => succeeded += 1,
            // "In progress" is an unknown outcome for that caller: the reconciler would ask later.
            Err(error) => assert!(error.is_retryable(), "{error}"),
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(succeeded >= 1, "the first caller got the answer");
    assert!(matches!(payments.query(order(7)).await.expect("query"), PaymentStatus::Succeeded { .. }));
    assert_eq!(successes_for(&payments, 7).await, 1, "charged exactly once");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decline_is_definite() {
    let service = start(AcquirerConfig { decline_rate: 1.0, ..AcquirerConfig::default() }).await;
    let payments = client(service.address);
    let declined = payments.charge(charge(3, "k1")).await.expect("charge");
    assert!(matches!(declined, ChargeOutcome::Declined { .. }), "{declined:?}");
    assert!(matches!(payments.query(order(3)).await.expect("query"), PaymentStatus::Declined { .. }));
    assert_eq!(successes_for(&payments, 3).await, 0);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_unknown_and_the_query_finds_the_capture() {
    let service = start(AcquirerConfig { lost_answer_rate: 1.0, ..AcquirerConfig::default() }).await;
    let payments = client(service.address);
    let error = payments.charge(charge(4, "k1")).await.expect_err("no definite answer");
    assert!(error.is_retryable(), "unknown outcome, never a decline: {error}");
    // While the attempt's lease holds, the ledger does not guess, and another attempt must wait.
    assert_eq!(payments.query(order(4)).await.expect("query"), PaymentStatus::Processing);
    assert!(payments.charge(charge(4, "k2")).await.expect_err("busy").is_retryable());
    tokio::time::sleep(std::time::Duration::from_millis(lease().charge_lease_ms)).await;
    // The money was taken: safe pay's question finds it, and a new attempt does not charge again.
    let status = payments.query(order(4)).await.expect("query");
    let PaymentStatus::Succeeded { payment_id } = status else { panic!("not settled: {status:?}") };
    let again = payments.charge(charge(4, "k2")).await.expect("charge");
    assert_eq!(again, ChargeOutcome::Succeeded { payment_id });
    assert_eq!(successes_for(&payments, 4).await, 1);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_is_down_is_an_unknown_outcome_and_the_next_round_works() {
    // A port nobody listens on (bound, then released).
    let address = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
    let payments = client(address);
    let error = payments.charge(charge(5, "k1")).await.expect_err("nobody answers");
    assert!(error.is_retryable(), "{error}");
    assert!(payments.query(order(5)).await.expect_err("nobody answers").is_retryable());

    let service = start_on(&address.to_string(), AcquirerConfig::default()).await;
    // The same client reconnects: the reconciler's next round settles it.
    assert_eq!(payments.query(order(5)).await.expect("query"), PaymentStatus::NotFound);
    assert!(matches!(payments.charge(charge(5, "k1")).await.expect("charge"), ChargeOutcome::Succeeded { .. }));
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_invalid_argument() {
    let service = start(AcquirerConfig::default()).await;
    let mut raw = PaymentClient::connect(format!("http://{}", service.address)).await.expect("connect");
    let good = orderly_payment::proto::ChargeRequest {
        order_no: order(6).to_string(),
        amount_cents: 100,
        currency: "CNY".into(),
        idempotency_key: "k".into(),
        deadline_ms: SystemClock.now_ms() + 60_000,
    };
    let cases = [
        orderly_payment::proto::ChargeRequest { currency: "USD".into(), ..good.clone() },
        orderly_payment::proto::ChargeRequest { amount_cents: 0, ..good.clone() },
        orderly_payment::proto::ChargeRequest { amount_cents: -5, ..good.clone() },
        orderly_payment::proto::ChargeRequest { order_no: "not-a-number".into(), ..good.clone() },
        orderly_payment::proto::ChargeRequest { idempotency_key: String::new(), ..good.clone() },
    ];
    for case in cases {
        let status = raw.charge(case.clone()).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{case:?}");
    }
    assert!(raw.charge(good).await.is_ok());
    service.stop().await;
}

/// Client-side balancing over a static list: calls spread over the live instances, and a dead one in
/// the list does not fail the calls. (Instances here have separate ledgers, so each order is charged on
/// one of them; in production they share one ledger.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_balanced_over_instances_and_a_dead_one_is_avoided() {
    let (a, b) = (start(AcquirerConfig::default()).await, start(AcquirerConfig::default()).await);
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
    let balanced = GrpcPayments::new(ClientConfig {
        endpoints: [a.address, b.address, dead].iter().map(|addr| format!("http://{addr}")).collect(),
        attempts_max: 5,
        ..ClientConfig::default()
    })
    .expect("client");
    for n in 100..140 {
        let outcome = balanced.charge(charge(n, "k")).await.expect("a live instance answers");
        assert!(matches!(outcome, ChargeOutcome::Succeeded { .. }), "{outcome:?}");
    }
    let on_a = client(a.address).succeeded().await.expect("list").len();
    let on_b = client(b.address).succeeded().await.expect("list").len();
    assert_eq!(on_a + on_b, 40, "every order charged once, somewhere");
    assert!(on_a > 0 && on_b > 0, "both instances served calls ({on_a} / {on_b})");
    a.stop().await;
    b.stop().await;
}

/// The ledger's succeeded charges come in pages (a whole ledger in one reply outgrew gRPC's 4 MiB
/// message limit at about 90 000 charges, and the audit got "unavailable"): the client reads page after
/// page and gets every charge once, by order number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn succeeded_charges_are_read_page_after_page() {
    let dir = tempfile::tempdir().expect("temp dir");
    let local = LocalConfig { durability: Durability::Os, ledger: lease(), ..LocalConfig::default() };
    let ledger = orderly_local::open_payment_ledger(dir.path(), Arc::new(SystemClock), &local).expect("ledger");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let service = orderly_payment::PaymentService::new(Arc::new(ledger)).with_succeeded_page(2).into_server();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .expect("serves");
    });
    let payments = client(address);
    for n in [5, 1, 4, 2, 3] {
        let outcome = payments.charge(charge(n, &format!("{n}-1"))).await.expect("charge");
        assert!(matches!(outcome, ChargeOutcome::Succeeded { .. }), "{outcome:?}");
    }
    let listed: Vec<OrderNo> = payments.succeeded().await.expect("list").into_iter().map(|(no, _)| no).collect();
    assert_eq!(listed, (1..=5).map(order).collect::<Vec<_>>(), "three pages of two, every charge once, in order");
    task.abort();
}
