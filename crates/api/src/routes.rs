//! The router and its handlers. Order of work at the entry (ARCHITECTURE.md): the concurrency limit →
//! auth → validate → the rate rules → the use-case; answers in the seed's envelope.

use std::cell::Cell;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use orderly_app::Actor;
use orderly_app::admin::{CatalogError, CatalogRejection};
use orderly_app::registry::Registry;
use orderly_app::settings::Live;
use orderly_app::trace::{TraceIds, TraceParent};
use orderly_app::{Orderly, PayOutcome, PlaceError};
use orderly_domain::{CatalogEntry, CommodityId, Money, OrderNo, PlaceOrderBody, ShopId, Uid};
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::adaptive::{ConcurrencyLimit, Priority};
use crate::auth::TokenAuth;
use crate::dashboard::{self, AuditVerdict};
use crate::error::{ApiError, ErrorBody, ok};
use crate::limit::{QUEUED, RateLimitConfig, Rule, Rules};
use crate::views::{self, Envelope};

/// Largest request body accepted.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Longest `Idempotency-Key` accepted.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 128;

#[derive(Debug, Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
    /// Serve `POST /api/baseline/orders`, the bench's naive baseline.
    naive_baseline: bool,
    /// The registry whose settings `/api/admin/config` reads and writes, and the process's own
    /// configuration they are laid over (to check a value before it is written).
    registry: Option<(Arc<dyn Registry>, Arc<Live>)>,
    /// Serves `GET /metrics` ([`crate::observe`]).
    metrics: Option<PrometheusHandle>,
}

#[derive(Debug)]
struct Inner {
    orderly: Orderly,
    auth: TokenAuth,
    /// The entry's limits in force (replaced when they change at run time).
    limits: ArcSwap<RateLimitConfig>,
    /// Rebuilt from `limits` when they change; a rule that did not change keeps its buckets.
    rules: ArcSwap<Rules>,
    /// Carts refused per rule, in [`Rule::ALL`]'s order, since the process started.
    refused: [AtomicU64; 4],
    /// Carts refused by the buyer's caps since the process started: units of a commodity, unpaid orders.
    capped: [AtomicU64; 2],
    /// Buyer requests served at once (adaptive), shared by priority.
    concurrency: Arc<ConcurrencyLimit>,
    /// What the last `GET /api/admin/audit` found, for the dashboard.
    last_audit: ArcSwapOption<AuditVerdict>,
    /// Trace contexts for carts placed without a `traceparent`.
    trace_ids: TraceIds,
}

impl ApiState {
    pub fn new(orderly: Orderly, auth: TokenAuth, limits: &RateLimitConfig) -> ApiState {
        ApiState {
            inner: Arc::new(Inner {
                orderly,
                auth,
                limits: ArcSwap::from_pointee(limits.clone()),
                rules: ArcSwap::from_pointee(Rules::new(limits)),
                refused: Default::default(),
                capped: Default::default(),
                concurrency: Arc::new(ConcurrencyLimit::new(limits)),
                last_audit: ArcSwapOption::empty(),
                // A prefix of its own per process: std's hasher keys are random per process.
                trace_ids: TraceIds::new(std::hash::RandomState::new().hash_one(std::process::id())),
            }),
            naive_baseline: false,
            registry: None,
            metrics: None,
        }
    }

    /// Serves `GET /metrics` from this process's recorder ([`crate::observe::install`]).
    pub fn with_metrics(mut self, handle: PrometheusHandle) -> ApiState {
        self.metrics = Some(handle);
        self
    }

    /// Serves `/api/admin/config` (the registry's settings, each checked against `base` before it is
    /// written) and `/api/admin/cluster` (the registry's status).
    pub fn with_registry(mut self, registry: Arc<dyn Registry>, base: Live) -> ApiState {
        self.registry = Some((registry, Arc::new(base)));
        self
    }

    /// Takes the global and per-commodity rules from the cluster's shared buckets (`rate_limit.shared`);
    /// the fallback's share divides them by the APIs registered in the registry given to
    /// [`ApiState::with_registry`] (call that first), else by one.
    pub fn with_shared_rates(self, rates: Arc<dyn orderly_app::SharedRates>) -> ApiState {
        let members = self.registry.as_ref().map(|(registry, _)| registry.members());
        let apis = move || {
            members.as_ref().map_or(1, |members| {
                members.borrow().iter().filter(|m| m.role == orderly_app::registry::Role::Api).count().max(1)
            })
        };
        let sharing = crate::limit::Sharing { rates, apis: Arc::new(apis) };
        let limits = self.inner.limits.load_full();
        self.inner.rules.store(Arc::new(Rules::new(&limits).sharing(sharing)));
        self
    }

    /// Applies limits changed at run time: a rule whose rate or burst changed starts with a full bucket,
    /// the others keep theirs; the concurrency limit takes its new bounds from the limit in force.
    pub fn set_limits(&self, limits: &RateLimitConfig) {
        let rules = self.inner.rules.load();
        if !rules.enforce(limits) {
            self.inner.rules.store(Arc::new(rules.with(limits)));
        }
        self.inner.concurrency.reconfigure(limits);
        self.inner.limits.store(Arc::new(limits.clone()));
    }

    /// Also serves `POST /api/baseline/orders`: the same entry (limit, auth, validation, pricing), then
    /// [`Orderly::place_orders_naive`] — one synchronous store transaction per cart, no cache, no bus. For
    /// `orderly bench --naive-baseline` only: its stock bypasses the cache.
    pub fn with_naive_baseline(mut self, on: bool) -> ApiState {
        self.naive_baseline = on;
        self
    }
}

/// Where the OpenAPI document is served; Swagger UI reads it at `/docs`.
pub const OPENAPI_PATH: &str = "/api/openapi.json";

/// The routes with their OpenAPI operations: each handler is added through `routes!`, which takes its
/// `#[utoipa::path]`, so a route cannot exist without its entry in the document (the `openapi` test
/// checks that nothing is added around them).
fn documented_routes(state: &ApiState) -> OpenApiRouter<ApiState> {
    // One concurrency limit for every buyer route (a per-route limit would multiply the bound).
    let shed = axum::middleware::from_fn_with_state(state.clone(), admit);
    let mut buyer = OpenApiRouter::new()
        .routes(routes!(place_orders, list_orders))
        .routes(routes!(get_order))
        .routes(routes!(pay_order))
        .routes(routes!(cancel_order))
        .routes(routes!(get_commodity));
    if state.naive_baseline {
        buyer = buyer.routes(routes!(place_orders_naive));
    }
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .merge(buyer.route_layer(shed))
        .routes(routes!(admin_catalog))
        .routes(routes!(admin_stock))
        .routes(routes!(admin_audit))
        .routes(routes!(admin_bus))
        .routes(routes!(admin_config))
        .routes(routes!(admin_config_set, admin_config_unset))
        .routes(routes!(admin_cluster))
        .routes(routes!(admin_limits))
        .routes(routes!(dashboard::data))
        .routes(routes!(metrics_text))
        .routes(routes!(dashboard::page))
        .routes(routes!(dashboard::uplot_js))
        .routes(routes!(dashboard::uplot_css))
}

pub fn router(state: ApiState) -> Router {
    // The document lists the routes this server serves (the naive baseline's only when it is served).
    let (routes, mut document) = documented_routes(&state).split_for_parts();
    crate::openapi::complete(&mut document);
    routes
        .merge(SwaggerUi::new("/docs").url(OPENAPI_PATH, document))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no_such_route", "no such route") })
        // axum keeps the `Allow` header; the answer gets the envelope like every other.
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
        })
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn(crate::observe::count))
        .with_state(state)
}

/// Admits a buyer request under the concurrency limit or sheds it at once (503 `overloaded`); an admitted
/// one holds its slot while it is served (also when its client goes away mid-way: the permit drops), and
/// its latency — less any wait in a rule's queue — is one sample for the limit.
async fn admit(
    State(state): State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let priority = Priority::of(request.method(), request.uri().path());
    let Some(permit) = state.inner.concurrency.try_acquire(priority) else {
        metrics::counter!(crate::observe::SHED, "priority" => priority.name()).increment(1);
        return ApiError::overloaded().into_response();
    };
    let started = Instant::now();
    let (response, queued) = QUEUED
        .scope(Cell::new(Duration::ZERO), async {
            let response = next.run(request).await;
            (response, QUEUED.with(Cell::get))
        })
        .await;
    let now = Instant::now();
    permit.served(now.saturating_duration_since(started).saturating_sub(queued), now);
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

impl ApiState {
    pub(crate) fn orderly(&self) -> &Orderly {
        &self.inner.orderly
    }

    pub(crate) fn last_audit(&self) -> Option<AuditVerdict> {
        self.inner.last_audit.load_full().map(|verdict| (*verdict).clone())
    }

    fn buyer(&self, headers: &HeaderMap) -> Result<Uid, ApiError> {
        let token = bearer(headers).ok_or(crate::auth::AuthRejection::Missing)?;
        let now_s = self.inner.orderly.now_ms() / 1000;
        Ok(self.inner.auth.verify(token, now_s)?)
    }

    pub(crate) fn admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match bearer(headers) {
            Some(token) if self.inner.auth.is_admin(token) => Ok(()),
            _ => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "admin token required")),
        }
    }
}

/// A JSON request body: declared `application/json` (else `415 unsupported_media_type`), read whole
/// ([`body_bytes`]), parsed into the envelope's error shape: bad JSON is 400, a wrong shape is 422.
fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let declared = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    let essence = declared.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON, sent with Content-Type: application/json",
        ));
    }
    serde_json::from_slice(&body_bytes(body)?).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", error.to_string())
        }
        _ => ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", error.to_string()),
    })
}

/// The request body, or an enveloped error (too large, unreadable).
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "body_too_large" } else { "unreadable_body" };
        ApiError::new(status, code, rejection.body_text())
    })
}

/// The path parameter, or `400 invalid_path`.
fn path_text(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(text) = path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.body_text()))?;
    Ok(text)
}

fn order_no(path: Result<Path<String>, PathRejection>) -> Result<OrderNo, ApiError> {
    let text = path_text(path)?;
    // A malformed number cannot name an order: same answer as an unknown one.
    text.parse().map_err(|_| ApiError::not_found())
}

/// Prometheus's text format (not the envelope: a scraper reads it). No token: it names no buyer.
#[utoipa::path(get, path = "/metrics", tag = "operator",
    responses(
        (status = 200, description = "Prometheus's text format (not the envelope); series in docs/ARCHITECTURE.md", content_type = "text/plain; version=0.0.4", body = String),
        (status = 404, description = "`no_such_route`: this process records no metrics", body = ErrorBody),
    ))]
async fn metrics_text(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let Some(handle) = &state.metrics else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_such_route", "metrics are not recorded here"));
    };
    let limits = state.inner.limits.load();
    let concurrency = state.inner.concurrency.view();
    metrics::gauge!(crate::observe::RATE_LIMIT).set(f64::from(limits.orders_per_second));
    metrics::gauge!(crate::observe::RATE_LIMIT_BURST).set(f64::from(limits.burst));
    metrics::gauge!(crate::observe::IN_FLIGHT_MAX).set(concurrency.max as f64);
    metrics::gauge!(crate::observe::CONCURRENCY_LIMIT).set(concurrency.limit as f64);
    metrics::gauge!(crate::observe::IN_FLIGHT).set(state.inner.concurrency.in_flight() as f64);
    crate::observe::stock_gauges(state.orderly()).await;
    Ok(crate::observe::text(crate::observe::render(handle, Some(state.orderly())).await))
}

#[utoipa::path(get, path = "/healthz", tag = "operator",
    responses((status = 200, description = "The process answers", body = Envelope<views::Health>)))]
async fn healthz() -> Response {
    ok(StatusCode::OK, views::Health { ok: true })
}

#[utoipa::path(post, path = "/api/orders", tag = "buyer", security(("buyer" = [])),
    description = "Reserves the cart's stock and accepts one order per shop, all or none. The orders are accepted, not yet persisted: poll them.",
    params(
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,128}$", description = "1 to 128 visible ASCII characters: a retry with the same key and body returns the first answer and creates nothing"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context: the orders' steps in every process log under its trace id (a new one when absent or malformed)"),
    ),
    request_body = PlaceOrderBody,
    responses(
        (status = 200, description = "Accepted: the order numbers, one per shop, ordered by shop id", body = Envelope<views::Placed>),
        CartRefused,
    ))]
async fn place_orders(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (body, key) = admit_cart(&state, &headers, body).await?;
    // The client's trace context, or a new one while this process traces orders: each order keeps it
    // (orderly_app::trace). Otherwise none — the order number names the order in the logs, and its
    // records stay as small as without traces.
    let sent = headers.get("traceparent").and_then(|value| value.to_str().ok()).and_then(TraceParent::parse);
    let trace = sent.or_else(|| {
        tracing::enabled!(target: orderly_app::trace::TARGET, tracing::Level::DEBUG)
            .then(|| state.inner.trace_ids.next())
    });
    let placed = state.orderly().place_orders_traced(&body, key, trace).await;
    let capped = match &placed {
        Err(PlaceError::PurchaseCap { .. }) => Some(0),
        Err(PlaceError::UnpaidCap { .. }) => Some(1),
        _ => None,
    };
    if let Some(cap) = capped {
        state.inner.capped[cap].fetch_add(1, Ordering::Relaxed);
    }
    Ok(ok(StatusCode::OK, views::Placed { order_no: placed? }))
}

#[utoipa::path(post, path = "/api/baseline/orders", tag = "buyer", security(("buyer" = [])),
    description = "The bench's naive baseline (served with `ORDERLY_NAIVE_BASELINE=true` only): the same checks as `POST /api/orders`, the orders created by one database transaction before the answer.",
    request_body = PlaceOrderBody,
    responses(
        (status = 200, description = "Created, `to_pay`", body = Envelope<views::Placed>),
        CartRefused,
    ))]
async fn place_orders_naive(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (body, _) = admit_cart(&state, &headers, body).await?;
    let order_nos = state.orderly().place_orders_naive(&body).await?;
    Ok(ok(StatusCode::OK, views::Placed { order_no: order_nos }))
}

/// The refusals both cart routes answer ([`admit_cart`] and the use-case), for the OpenAPI document: a
/// description only, never built (every answer here is an [`ApiError`]).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum CartRefused {
    #[response(status = 400, description = "`malformed_json`, `invalid_idempotency_key`, `unreadable_body`")]
    BadRequest(ErrorBody),
    #[response(status = 403, description = "`uid_mismatch`: the body's uid is not the caller")]
    NotTheCaller(ErrorBody),
    #[response(status = 409, description = "`sold_out`: not enough stock (`data.commodity_id`)")]
    SoldOut(ErrorBody),
    #[response(status = 413, description = "`body_too_large`")]
    TooLarge(ErrorBody),
    #[response(status = 415, description = "`unsupported_media_type`")]
    NotJson(ErrorBody),
    #[response(
        status = 422,
        description = "`invalid_body` or a cart the catalog refuses (`price_mismatch`, `unknown_commodity`, `wrong_shop`, ...; `data.line`), `idempotency_key_reused`"
    )]
    Refused(ErrorBody),
    #[response(
        status = 429,
        description = "`rate_limited` (the process's rate), `rate_limited_buyer`, `rate_limited_commodity`, `rate_limited_shop`: the rule that refused; `purchase_cap_reached` (`data.commodity_id`, `held`, `cap`), `unpaid_orders_cap_reached` (`data.held`, `cap`): the buyer's cap",
        headers(("Retry-After" = u64, description = "Seconds until the rule has a token, or until an order counted by the cap may free room"))
    )]
    RateLimited(ErrorBody),
}

/// How [`json_body`] refuses an admin's body, for the OpenAPI document (a description only).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum BodyRefused {
    #[response(status = 400, description = "`malformed_json`, `unreadable_body`")]
    Unreadable(ErrorBody),
    #[response(status = 413, description = "`body_too_large`")]
    TooLarge(ErrorBody),
    #[response(status = 415, description = "`unsupported_media_type`")]
    NotJson(ErrorBody),
}

/// The entry's checks before the use-case: the buyer, the idempotency key, the body, then the rate rules
/// (which need the buyer and the cart's commodities and shops).
async fn admit_cart<'h>(
    state: &ApiState,
    headers: &'h HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(PlaceOrderBody, Option<&'h str>), ApiError> {
    let uid = state.buyer(headers)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => {
            let key = value.to_str().ok().filter(|k| {
                (1..=IDEMPOTENCY_KEY_LEN_MAX).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic())
            });
            Some(key.ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_idempotency_key",
                    format!("Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_LEN_MAX} visible ASCII characters"),
                )
            })?)
        }
    };
    let body: PlaceOrderBody = json_body(headers, body)?;
    if body.uid != uid {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "uid_mismatch", "the body's uid is not the caller"));
    }
    // Bounded before the rules: a cart of hundreds of lines must not take hundreds of tokens (nor, shared,
    // make hundreds of calls) before the use-case refuses it for its size.
    state.orderly().config().cart.check_size(body.commodity_details.len())?;
    let rules = state.inner.rules.load_full();
    if let Err(refused) = rules.admit(&crate::limit::cart_keys(&body)).await {
        state.inner.refused[refused.rule as usize].fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::observe::RATE_LIMITED, "rule" => refused.rule.name()).increment(1);
        return Err(ApiError::rate_limited(refused));
    }
    Ok((body, key))
}

#[utoipa::path(get, path = "/api/orders/{order_no}", tag = "buyer", security(("buyer" = [])),
    params(("order_no" = OrderNo, Path, description = "An order of the caller")),
    responses(
        (status = 200, description = "The order", body = Envelope<views::OrderView>),
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order, or another buyer's", body = ErrorBody),
    ))]
async fn get_order(
    State(state): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let uid = state.buyer(&headers)?;
    let order = state.orderly().order(Actor::Buyer(uid), order_no(path)?).await?;
    Ok(ok(StatusCode::OK, views::order(&order)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListParams {
    /// Orders older than this one (the previous page's `next_before`).
    #[param(value_type = Option<OrderNo>)]
    before: Option<String>,
    /// Page size, clamped to 1–100 (20 when absent).
    #[param(minimum = 0, maximum = 18446744073709551615_u64)]
    limit: Option<u64>,
}

#[utoipa::path(get, path = "/api/orders", tag = "buyer", security(("buyer" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "A page of the caller's orders, newest first", body = Envelope<views::OrderPage>),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
    ))]
async fn list_orders(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let uid = state.buyer(&headers)?;
    let Query(params) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let before =
        match params.before {
            None => None,
            Some(text) => Some(text.parse::<OrderNo>().map_err(|_| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", "before must be an order number")
            })?),
        };
    let limit = usize::try_from(params.limit.unwrap_or(20)).unwrap_or(usize::MAX);
    let orders = state.orderly().orders_of(uid, before, limit).await?;
    let next_before = orders.last().map(|o| o.order_no);
    let orders = orders.iter().map(views::order).collect();
    Ok(ok(StatusCode::OK, views::OrderPage { orders, next_before }))
}

#[utoipa::path(post, path = "/api/orders/{order_no}/pay", tag = "buyer", security(("buyer" = [])),
    description = "Charges the order's total through the payment service. An order is never charged twice.",
    params(("order_no" = OrderNo, Path, description = "An order of the caller")),
    responses(
        (status = 200, description = "Paid", body = Envelope<views::OrderView>),
        (status = 202, description = "No definite answer yet: the reconciler settles it; poll the order", body = Envelope<views::OrderView>),
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 402, description = "`payment_declined`: the order stays `to_pay`; `data` is the order", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`payment_in_flight`, `order_already_final`, `order_not_created_yet`", body = ErrorBody),
    ))]
async fn pay_order(
    State(state): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let uid = state.buyer(&headers)?;
    match state.orderly().pay(Actor::Buyer(uid), order_no(path)?).await? {
        PayOutcome::Paid(order) => Ok(ok(StatusCode::OK, views::order(&order))),
        // Accepted, not settled: the reconciler will settle it; poll the order.
        PayOutcome::Pending(order) => Ok(ok(StatusCode::ACCEPTED, views::order(&order))),
        PayOutcome::Declined { order, reason } => {
            Err(ApiError::new(StatusCode::PAYMENT_REQUIRED, "payment_declined", format!("payment declined: {reason}"))
                .with_data(serde_json::to_value(views::order(&order)).unwrap_or_default()))
        }
    }
}

#[utoipa::path(post, path = "/api/orders/{order_no}/cancel", tag = "buyer", security(("buyer" = [])),
    params(("order_no" = OrderNo, Path, description = "An order of the caller")),
    responses(
        (status = 200, description = "Cancelled, its stock returned", body = Envelope<views::OrderView>),
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`order_already_final`, `order_not_created_yet`, `payment_in_flight`", body = ErrorBody),
    ))]
async fn cancel_order(
    State(state): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let uid = state.buyer(&headers)?;
    let order = state.orderly().cancel(Actor::Buyer(uid), order_no(path)?).await?;
    Ok(ok(StatusCode::OK, views::order(&order)))
}

#[utoipa::path(get, path = "/api/commodities/{id}", tag = "buyer",
    params(("id" = u64, Path, description = "A commodity id")),
    responses(
        (status = 200, description = "Price and what can still be sold", body = Envelope<views::CommodityView>),
        (status = 404, description = "`unknown_commodity`", body = ErrorBody),
    ))]
async fn get_commodity(
    State(state): State<ApiState>,
    path: Result<Path<u64>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = path.map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "unknown_commodity", "no such commodity"))?;
    let (entry, stock) = state
        .orderly()
        .commodity(CommodityId(id))
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown_commodity", "no such commodity"))?;
    Ok(ok(
        StatusCode::OK,
        views::CommodityView {
            commodity_id: entry.commodity_id,
            shop_id: entry.shop_id,
            price: entry.unit_price,
            stock,
        },
    ))
}

/// One commodity of the admin catalog (also the format of the catalog file loaded at start).
#[derive(Debug, Clone, Deserialize, serde::Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogItem {
    pub commodity_id: CommodityId,
    /// The shop selling it (the seed's line `user_id`).
    pub shop_id: ShopId,
    #[serde(deserialize_with = "orderly_domain::money::deserialize_exact")]
    pub price: Money,
    /// Stock to add.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 4294967295_u64)]
    pub add_stock: u32,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, ToSchema)]
#[schema(example = json!({"commodities": [{"commodity_id": 4, "shop_id": 100003, "price": 19.99, "add_stock": 50}]}))]
#[serde(deny_unknown_fields)]
pub struct CatalogBody {
    pub commodities: Vec<CatalogItem>,
}

/// Commodities in one request, at most.
pub const CATALOG_ITEMS_MAX: usize = 1_000;

#[utoipa::path(post, path = "/api/admin/catalog", tag = "admin", security(("admin" = [])),
    description = "Adds commodities (and stock), all or nothing. The same format is the catalog file loaded at start.",
    request_body = CatalogBody,
    responses(
        (status = 200, description = "Loaded: how many commodities", body = Envelope<views::CatalogLoaded>),
        BodyRefused,
        (status = 409, description = "`commodity_shop_fixed`: a known commodity under another shop (`data.commodity_id`)", body = ErrorBody),
        (status = 422, description = "`invalid_body`, `too_many_items`, `invalid_commodity_id`, `invalid_price`, `duplicate_commodity` (`data.commodity_id`)", body = ErrorBody),
    ))]
async fn admin_catalog(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    state.admin(&headers)?;
    let body: CatalogBody = json_body(&headers, body)?;
    if body.commodities.len() > CATALOG_ITEMS_MAX {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_items",
            format!("at most {CATALOG_ITEMS_MAX} commodities"),
        ));
    }
    let entries: Vec<CatalogEntry> = body
        .commodities
        .iter()
        .map(|c| CatalogEntry { commodity_id: c.commodity_id, shop_id: c.shop_id, unit_price: c.price })
        .collect();
    let stock: Vec<(CommodityId, u32)> =
        body.commodities.iter().filter(|c| c.add_stock > 0).map(|c| (c.commodity_id, c.add_stock)).collect();
    state.orderly().load_catalog(&entries, &stock).await.map_err(catalog_refused)?;
    Ok(ok(StatusCode::OK, views::CatalogLoaded { commodities: entries.len() }))
}

fn catalog_refused(error: CatalogError) -> ApiError {
    let rejection = match error {
        CatalogError::Unavailable(error) => return error.into(),
        CatalogError::Refused(rejection) => rejection,
    };
    let (status, code, commodity_id) = match &rejection {
        CatalogRejection::ZeroId => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_commodity_id", CommodityId(0)),
        CatalogRejection::ZeroPrice { commodity_id } => {
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_price", *commodity_id)
        }
        CatalogRejection::Duplicate { commodity_id } => {
            (StatusCode::UNPROCESSABLE_ENTITY, "duplicate_commodity", *commodity_id)
        }
        CatalogRejection::ShopChange { commodity_id, .. } => {
            (StatusCode::CONFLICT, "commodity_shop_fixed", *commodity_id)
        }
    };
    ApiError::new(status, code, rejection.to_string()).with_data(json!({ "commodity_id": commodity_id }))
}

/// Stock to add to a known commodity.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"commodity_id": 1, "add": 10}))]
#[serde(deny_unknown_fields)]
struct StockBody {
    commodity_id: CommodityId,
    #[schema(minimum = 0, maximum = 4294967295_u64)]
    add: u32,
}

#[utoipa::path(post, path = "/api/admin/stock", tag = "admin", security(("admin" = [])),
    request_body = StockBody,
    responses(
        (status = 200, description = "Stock added: what is available now", body = Envelope<views::StockAdded>),
        BodyRefused,
        (status = 404, description = "`unknown_commodity`", body = ErrorBody),
        (status = 422, description = "`invalid_body`", body = ErrorBody),
    ))]
async fn admin_stock(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    state.admin(&headers)?;
    let body: StockBody = json_body(&headers, body)?;
    let Some(available) = state.orderly().add_stock(body.commodity_id, body.add).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_commodity", "no such commodity"));
    };
    Ok(ok(StatusCode::OK, views::StockAdded { commodity_id: body.commodity_id, available }))
}

/// Work still to do: messages waiting per topic (delayed ones included), dead letters, outbox events
/// not relayed yet (up to 1000), payments without a definite answer. Zero everywhere (dead letters
/// aside) means quiet.
#[utoipa::path(get, path = "/api/admin/bus", tag = "admin", security(("admin" = [])),
    responses((status = 200, description = "Work still to do; everything but dead letters at zero means quiet", body = Envelope<views::Work>)))]
async fn admin_bus(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.admin(&headers)?;
    let work = state.orderly().work_to_do().await?;
    Ok(ok(StatusCode::OK, views::Work::from(work)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    /// The caller vouches that traffic stopped and queues drained: I2's equalities are owed.
    #[serde(default)]
    quiet: bool,
    /// How long an order may take to become definite.
    #[serde(default = "default_deadline_ms")]
    #[param(minimum = 0, maximum = 18446744073709551615_u64)]
    deadline_ms: u64,
}

fn default_deadline_ms() -> u64 {
    60_000
}

/// I1–I5 over the live store and cache (the store is locked by this process, so the CLI cannot read it).
#[utoipa::path(get, path = "/api/admin/audit", tag = "admin", security(("admin" = [])),
    description = "Invariants I1–I5 on the live system.",
    params(AuditParams),
    responses(
        (status = 200, description = "The report and the bus's depth", body = Envelope<views::Audit>),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
    ))]
async fn admin_audit(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    state.admin(&headers)?;
    let Query(params) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let report = state.orderly().audit(params.quiet, params.deadline_ms).await?;
    state.inner.last_audit.store(Some(Arc::new(AuditVerdict {
        at_ms: state.orderly().now_ms(),
        quiet: report.quiet,
        violations: report.violations.len(),
        orders_by_state: report.orders_by_state.iter().map(|(state, n)| ((*state).to_owned(), *n)).collect(),
    })));
    let depth = state.orderly().bus_depth().await?;
    let report = serde_json::to_value(&report).unwrap_or_default();
    let bus = serde_json::to_value(&depth).unwrap_or_default();
    Ok(ok(StatusCode::OK, views::Audit { report, bus }))
}

impl ApiState {
    fn registry(&self) -> Result<(&Arc<dyn Registry>, &Live), ApiError> {
        match &self.registry {
            Some((registry, base)) => Ok((registry, base)),
            None => Err(ApiError::new(StatusCode::NOT_FOUND, "no_registry", "this process has no registry")),
        }
    }
}

/// The settings changed at run time (`settings`) and every setting in force here (`effective`: this
/// process's configuration with them laid over it).
#[utoipa::path(get, path = "/api/admin/config", tag = "admin", security(("admin" = [])),
    responses(
        (status = 200, description = "Settings changed at run time, and every setting in force here", body = Envelope<views::Config>),
        (status = 404, description = "`no_registry`", body = ErrorBody),
        (status = 422, description = "`invalid_setting`: a stored setting this process refuses", body = ErrorBody),
    ))]
async fn admin_config(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.admin(&headers)?;
    let (registry, base) = state.registry()?;
    let settings = registry.settings().borrow().clone();
    let effective = base.with(&settings).map(|live| live.flatten()).map_err(invalid_setting)?;
    Ok(ok(StatusCode::OK, views::Config { settings, effective }))
}

/// Sets one setting for every process (the body: its JSON value). Checked first: a bad value is
/// refused naming the key, and nothing changes.
#[utoipa::path(put, path = "/api/admin/config/{key}", tag = "admin", security(("admin" = [])),
    description = "Sets one setting for every process (each applies it within a second), after checking it.",
    params(("key" = String, Path, description = "A setting, e.g. `rate_limit.orders_per_second`")),
    request_body(content = serde_json::Value, description = "The setting's JSON value (`250`, `\"text\"`)", content_type = "application/json"),
    responses(
        (status = 200, description = "Set: the value now in force", body = Envelope<views::Setting>),
        (status = 400, description = "`invalid_path`, `unreadable_body`", body = ErrorBody),
        (status = 404, description = "`no_registry`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_setting` (`data.key`); nothing written", body = ErrorBody),
    ))]
async fn admin_config_set(
    State(state): State<ApiState>,
    headers: HeaderMap,
    key: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    state.admin(&headers)?;
    let (registry, base) = state.registry()?;
    let key = path_text(key)?;
    let body = body_bytes(body)?;
    let value = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "unreadable_body", "the value is not UTF-8"))?
        .trim()
        .to_owned();
    let mut settings = registry.settings().borrow().clone();
    settings.insert(key.clone(), value.clone());
    let live = base.with(&settings).map_err(invalid_setting)?;
    registry.set_setting(&key, Some(&value)).await?;
    let effective = live.flatten().remove(&key);
    Ok(ok(StatusCode::OK, views::Setting { key, value: effective }))
}

/// Removes one setting: every process goes back to its own configuration for it.
#[utoipa::path(delete, path = "/api/admin/config/{key}", tag = "admin", security(("admin" = [])),
    description = "Removes a setting: every process goes back to its own configuration for it.",
    params(("key" = String, Path, description = "A setting")),
    responses(
        (status = 200, description = "Removed", body = Envelope<views::Setting>),
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 404, description = "`no_registry`", body = ErrorBody),
        (status = 422, description = "`invalid_setting`: another setting needs it", body = ErrorBody),
    ))]
async fn admin_config_unset(
    State(state): State<ApiState>,
    headers: HeaderMap,
    key: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    state.admin(&headers)?;
    let (registry, base) = state.registry()?;
    let key = path_text(key)?;
    // Checked too: the others may need this one (a maximum set above the configuration's minimum).
    let mut settings = registry.settings().borrow().clone();
    settings.remove(&key);
    base.with(&settings).map_err(invalid_setting)?;
    registry.set_setting(&key, None).await?;
    Ok(ok(StatusCode::OK, views::Setting { key, value: None }))
}

fn invalid_setting(error: orderly_app::settings::SettingError) -> ApiError {
    let key = error.key.clone();
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_setting", error.to_string())
        .with_data(json!({ "key": key }))
}

/// The entry's limits in force in this process: each rate rule with what it refused, and the concurrency
/// limit with its partitions. Changed through `/api/admin/config/rate_limit.…`.
#[utoipa::path(get, path = "/api/admin/limits", tag = "admin", security(("admin" = [])),
    responses((status = 200, description = "The rules and the concurrency limit in force here", body = Envelope<views::Limits>)))]
async fn admin_limits(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.admin(&headers)?;
    let rules = state.inner.rules.load();
    let rules = Rule::ALL
        .iter()
        .map(|&rule| {
            let setting = rules.rule(rule);
            views::RuleView {
                rule: rule.name(),
                code: rule.code(),
                per_second: setting.per_second,
                burst: setting.burst,
                queue_ms: setting.queue_ms,
                shared: rules.is_shared(rule),
                keys: rules.keys(rule),
                refused: state.inner.refused[rule as usize].load(Ordering::Relaxed),
            }
        })
        .collect();
    let caps = state.orderly().config().buyer_caps;
    let caps = views::CapsView {
        units_per_commodity: caps.units_per_commodity,
        window_ms: caps.window_ms,
        unpaid_orders: caps.unpaid_orders,
        refused_purchase_cap: state.inner.capped[0].load(Ordering::Relaxed),
        refused_unpaid_orders_cap: state.inner.capped[1].load(Ordering::Relaxed),
    };
    Ok(ok(StatusCode::OK, views::Limits { rules, caps, concurrency: state.inner.concurrency.view() }))
}

/// The registry's servers, the processes registered (role, address, version, start) and the worker ids
/// they hold.
#[utoipa::path(get, path = "/api/admin/cluster", tag = "admin", security(("admin" = [])),
    responses(
        (status = 200, description = "The registry's servers, the processes registered, worker ids and leaders", body = Envelope<views::Cluster>),
        (status = 404, description = "`no_registry`", body = ErrorBody),
    ))]
async fn admin_cluster(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.admin(&headers)?;
    let (registry, _) = state.registry()?;
    let status = registry.status().await?;
    Ok(ok(StatusCode::OK, views::Cluster(serde_json::to_value(&status).unwrap_or_default())))
}
