//! `GET /metrics` in Prometheus's text format, and the layer that counts every HTTP answer. The flow's
//! own counters are [`orderly_app::meters`]; the work still to do is read when scraped.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};
use orderly_app::Orderly;

/// HTTP answers, by `route` (the route's pattern, `unmatched` for none), `method` and `status`.
pub const HTTP_REQUESTS: &str = "orderly_http_requests_total";
/// How long an answer took, in seconds, by `route` and `method`.
pub const HTTP_SECONDS: &str = "orderly_http_request_seconds";

/// The work still to do, read when scraped.
pub const BUS_QUEUED: &str = "orderly_bus_queued";
pub const BUS_DEAD_LETTERS: &str = "orderly_bus_dead_letters";
pub const OUTBOX_EVENTS: &str = "orderly_outbox_events";
pub const PAYMENTS_PENDING: &str = "orderly_payments_pending";

/// The entry's limits in force (their refusals are the 429 and 503 answers).
pub const RATE_LIMIT: &str = "orderly_rate_limit_orders_per_second";
pub const RATE_LIMIT_BURST: &str = "orderly_rate_limit_burst";
pub const IN_FLIGHT_MAX: &str = "orderly_in_flight_max";
/// Buyer requests being served now (admitted past the in-flight bound), read when scraped.
pub const IN_FLIGHT: &str = "orderly_http_in_flight";
/// The concurrency limit in force (adaptive: it follows latency), read when scraped.
pub const CONCURRENCY_LIMIT: &str = "orderly_concurrency_limit";
/// Carts refused by a rate rule, by `rule` (global, buyer, commodity, shop).
pub const RATE_LIMITED: &str = "orderly_rate_limited_total";
/// Buyer requests shed at the concurrency limit, by `priority` (changes, orders, queries).
pub const SHED: &str = "orderly_shed_total";

/// The stock of the most deducted commodities (the dashboard's list), by `commodity_id`, read when
/// scraped by an API: what the cache can still sell, and what live orders hold in the store.
pub const STOCK_SELLING: &str = "orderly_stock_selling";
pub const STOCK_DEDUCTED: &str = "orderly_stock_deducted";

/// A gauge not set for this long leaves the output: a commodity that is no longer among the most
/// deducted stops being reported. Every gauge here is set when scraped, so a scrape never misses one.
const GAUGE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Histogram buckets (seconds), for HTTP answers and charges alike: fine below 100 ms, where an
/// accepted order's latency is judged (the dashboard's p99 interpolates within a bucket).
const SECONDS_BUCKETS: [f64; 19] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

/// Why [`install`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Recorder(#[from] BuildError),
    #[error("cannot start the metrics upkeep thread: {0}")]
    Upkeep(std::io::Error),
}

/// How often the recorder's histograms are drained into their buckets when nobody scrapes.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs this process's recorder: call once, at start. Fails if one is installed already.
///
/// A thread of its own drains the histograms every [`UPKEEP_EVERY`]: the recorder keeps each sample until
/// an upkeep folds it into its buckets, and without one (a process nobody scrapes) that is about 20
/// bytes more memory per HTTP answer, for ever (measured: 21 → 129 MB of RSS over 2 minutes of
/// `/healthz` at ~40 000/s; metrics-rs/metrics#467). `install_recorder` starts no upkeep itself.
pub fn install() -> Result<PrometheusHandle, InstallError> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&SECONDS_BUCKETS)?
        .idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(GAUGE_IDLE))
        .install_recorder()?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        })
        .map_err(InstallError::Upkeep)?;
    orderly_app::meters::describe();
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP answers by route, method and status");
    metrics::describe_histogram!(
        HTTP_SECONDS,
        metrics::Unit::Seconds,
        "How long an HTTP answer took, by route and method"
    );
    metrics::describe_gauge!(BUS_QUEUED, "Messages waiting per topic, delayed ones included");
    metrics::describe_gauge!(BUS_DEAD_LETTERS, "Dead letters waiting for an operator");
    metrics::describe_gauge!(OUTBOX_EVENTS, "Outbox events not relayed yet (counted up to 1000)");
    metrics::describe_gauge!(PAYMENTS_PENDING, "Payments without a definite answer (the safe-pay set)");
    metrics::describe_gauge!(RATE_LIMIT, "The entry's token bucket rate in force, orders per second");
    metrics::describe_gauge!(RATE_LIMIT_BURST, "The entry's token bucket burst in force");
    metrics::describe_gauge!(IN_FLIGHT_MAX, "The concurrency limit's ceiling (rate_limit.in_flight_max)");
    metrics::describe_gauge!(IN_FLIGHT, "Buyer requests being served now");
    metrics::describe_gauge!(CONCURRENCY_LIMIT, "Buyer requests served at once before shedding, now (adaptive)");
    metrics::describe_counter!(RATE_LIMITED, "Carts refused by a rate rule (429), by rule");
    metrics::describe_counter!(SHED, "Buyer requests shed at the concurrency limit (503 overloaded), by priority");
    metrics::describe_gauge!(STOCK_SELLING, "What the cache can still sell, for the most deducted commodities");
    metrics::describe_gauge!(STOCK_DEDUCTED, "Units live orders hold in the store, for the most deducted commodities");
    Ok(handle)
}

/// Counts the answer and times it (a route layer: it sees the route that matched).
pub async fn count(matched: Option<MatchedPath>, request: Request, next: Next) -> Response {
    let route = matched.map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    // Known methods only: a client's invented one must not make a series of its own.
    let method: &'static str = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status).increment(1);
    metrics::histogram!(HTTP_SECONDS, "route" => route, "method" => method).record(started.elapsed().as_secs_f64());
    response
}

/// What a process that serves no API (a worker, the payment service) serves on its `metrics_addr`:
/// `GET /metrics` only; with the work still to do where the process runs the flow.
pub fn router(handle: PrometheusHandle, orderly: Option<Orderly>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (handle, orderly) = (handle.clone(), orderly.clone());
            async move { text(render(&handle, orderly.as_ref()).await) }
        }),
    )
}

/// Prometheus's text format (not the envelope: a scraper reads it).
pub fn text(body: String) -> Response {
    use axum::response::IntoResponse;
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// The text Prometheus scrapes: the gauges of the work still to do refreshed first (what cannot be read
/// now keeps its last value, for a minute: then it leaves the output), then every series.
pub async fn render(handle: &PrometheusHandle, orderly: Option<&Orderly>) -> String {
    if let Some(orderly) = orderly {
        match orderly.work_to_do().await {
            Ok(work) => {
                for (topic, waiting) in &work.queued {
                    metrics::gauge!(BUS_QUEUED, "topic" => topic.as_str()).set(*waiting as f64);
                }
                metrics::gauge!(BUS_DEAD_LETTERS).set(work.dead_letters as f64);
                metrics::gauge!(OUTBOX_EVENTS).set(work.outbox as f64);
                metrics::gauge!(PAYMENTS_PENDING).set(work.payments_pending as f64);
            }
            Err(error) => tracing::debug!(%error, "work to do not read for /metrics"),
        }
    }
    handle.run_upkeep();
    handle.render()
}

/// Sets the stock gauges of the most deducted commodities (an API's scrape; a worker's would repeat them).
pub async fn stock_gauges(orderly: &Orderly) {
    match orderly.hot_stock(crate::dashboard::HOT_COMMODITIES).await {
        Ok(hot) => {
            for stock in hot {
                let commodity_id = stock.commodity_id.to_string();
                metrics::gauge!(STOCK_DEDUCTED, "commodity_id" => commodity_id.clone()).set(stock.deducted as f64);
                if let Some(selling) = stock.selling {
                    metrics::gauge!(STOCK_SELLING, "commodity_id" => commodity_id).set(selling as f64);
                }
            }
        }
        Err(error) => tracing::debug!(%error, "stock not read for /metrics"),
    }
}
