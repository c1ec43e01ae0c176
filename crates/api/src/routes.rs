//! The router and its handlers. Order of work at the entry (ARCHITECTURE.md): limit → auth → validate
//! → the use-case; answers in the seed's envelope.

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;
use orderly_app::Actor;
use orderly_app::admin::{CatalogError, CatalogRejection};
use orderly_app::registry::Registry;
use orderly_app::settings::Live;
use orderly_app::{Orderly, PayOutcome};
use orderly_domain::{CatalogEntry, CommodityId, Money, OrderNo, PlaceOrderBody, ShopId, Uid};
use serde::Deserialize;
use serde_json::json;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{BoxError, ServiceBuilder};

use crate::auth::TokenAuth;
use crate::error::{ApiError, ok};
use crate::limit::{EntryLimiter, RateLimitConfig};
use crate::views;

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
    /// Replaced whole when the rate limit changes at run time.
    limiter: ArcSwap<EntryLimiter>,
    in_flight_max: usize,
}

impl ApiState {
    pub fn new(orderly: Orderly, auth: TokenAuth, limits: &RateLimitConfig) -> ApiState {
        ApiState {
            inner: Arc::new(Inner {
                orderly,
                auth,
                limiter: ArcSwap::from_pointee(EntryLimiter::new(limits)),
                in_flight_max: limits.in_flight_max.max(1),
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

    /// Applies a rate limit changed at run time (a new bucket, full, when rate or burst differ).
    pub fn set_rate_limit(&self, limits: &RateLimitConfig) {
        if !self.inner.limiter.load().enforces(limits) {
            self.inner.limiter.store(Arc::new(EntryLimiter::new(limits)));
        }
    }

    /// Also serves `POST /api/baseline/orders`: the same entry (limit, auth, validation, pricing), then
    /// [`Orderly::place_orders_naive`] — one synchronous store transaction per cart, no cache, no bus. For
    /// `orderly bench --naive-baseline` only: its stock bypasses the cache.
    pub fn with_naive_baseline(mut self, on: bool) -> ApiState {
        self.naive_baseline = on;
        self
    }
}

pub fn router(state: ApiState) -> Router {
    // One semaphore for every buyer route (a per-route limit would multiply the bound).
    let shed = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|_: BoxError| async { ApiError::overloaded() }))
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::new(state.inner.in_flight_max));
    let mut buyer = Router::new()
        .route("/api/orders", post(place_orders).get(list_orders))
        .route("/api/orders/{order_no}", get(get_order))
        .route("/api/orders/{order_no}/pay", post(pay_order))
        .route("/api/orders/{order_no}/cancel", post(cancel_order))
        .route("/api/commodities/{id}", get(get_commodity));
    if state.naive_baseline {
        buyer = buyer.route("/api/baseline/orders", post(place_orders_naive));
    }
    let buyer = buyer.route_layer(shed);
    Router::new()
        .route("/healthz", get(healthz))
        .merge(buyer)
        .route("/api/admin/catalog", post(admin_catalog))
        .route("/api/admin/stock", post(admin_stock))
        .route("/api/admin/audit", get(admin_audit))
        .route("/api/admin/bus", get(admin_bus))
        .route("/api/admin/config", get(admin_config))
        .route("/api/admin/config/{key}", put(admin_config_set).delete(admin_config_unset))
        .route("/api/admin/cluster", get(admin_cluster))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no_such_route", "no such route") })
        // axum keeps the `Allow` header; the answer gets the envelope like every other.
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
        })
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn(crate::observe::count))
        .with_state(state)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

impl ApiState {
    fn orderly(&self) -> &Orderly {
        &self.inner.orderly
    }

    fn buyer(&self, headers: &HeaderMap) -> Result<Uid, ApiError> {
        let token = bearer(headers).ok_or(crate::auth::AuthRejection::Missing)?;
        let now_s = self.inner.orderly.now_ms() / 1000;
        Ok(self.inner.auth.verify(token, now_s)?)
    }

    fn admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
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
async fn metrics_text(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let Some(handle) = &state.metrics else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_such_route", "metrics are not recorded here"));
    };
    let (rate, burst) = state.inner.limiter.load().rate();
    metrics::gauge!(crate::observe::RATE_LIMIT).set(f64::from(rate));
    metrics::gauge!(crate::observe::RATE_LIMIT_BURST).set(f64::from(burst));
    metrics::gauge!(crate::observe::IN_FLIGHT_MAX).set(state.inner.in_flight_max as f64);
    Ok(crate::observe::text(crate::observe::render(handle, Some(state.orderly())).await))
}

async fn healthz() -> Response {
    ok(StatusCode::OK, json!({ "ok": true }))
}

async fn place_orders(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (body, key) = admit_cart(&state, &headers, body)?;
    let order_nos = state.orderly().place_orders(&body, key).await?;
    Ok(ok(StatusCode::OK, json!({ "order_no": order_nos })))
}

async fn place_orders_naive(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (body, _) = admit_cart(&state, &headers, body)?;
    let order_nos = state.orderly().place_orders_naive(&body).await?;
    Ok(ok(StatusCode::OK, json!({ "order_no": order_nos })))
}

/// The entry's checks before the use-case: rate limit, the buyer, the idempotency key, the body.
fn admit_cart<'h>(
    state: &ApiState,
    headers: &'h HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(PlaceOrderBody, Option<&'h str>), ApiError> {
    state.inner.limiter.load().admit().map_err(ApiError::rate_limited)?;
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
    Ok((body, key))
}

async fn get_order(
    State(state): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let uid = state.buyer(&headers)?;
    let order = state.orderly().order(Actor::Buyer(uid), order_no(path)?).await?;
    Ok(ok(StatusCode::OK, views::order(&order)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    before: Option<String>,
    limit: Option<usize>,
}

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
    let orders = state.orderly().orders_of(uid, before, params.limit.unwrap_or(20)).await?;
    let next_before = orders.last().map(|o| o.order_no);
    let orders: Vec<_> = orders.iter().map(views::order).collect();
    Ok(ok(StatusCode::OK, json!({ "orders": orders, "next_before": next_before })))
}

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
                .with_data(views::order(&order)))
        }
    }
}

async fn cancel_order(
    State(state): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let uid = state.buyer(&headers)?;
    let order = state.orderly().cancel(Actor::Buyer(uid), order_no(path)?).await?;
    Ok(ok(StatusCode::OK, views::order(&order)))
}

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
        json!({ "commodity_id": entry.commodity_id, "shop_id": entry.shop_id, "price": entry.unit_price, "stock": stock }),
    ))
}

/// One commodity of the admin catalog (also the format of the catalog file loaded at start).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogItem {
    pub commodity_id: CommodityId,
    /// The shop selling it (the seed's line `user_id`).
    pub shop_id: ShopId,
    #[serde(deserialize_with = "orderly_domain::money::deserialize_exact")]
    pub price: Money,
    /// Stock to add.
    #[serde(default)]
    pub add_stock: u32,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogBody {
    pub commodities: Vec<CatalogItem>,
}

/// Commodities in one request, at most.
pub const CATALOG_ITEMS_MAX: usize = 1_000;

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
    Ok(ok(StatusCode::OK, json!({ "commodities": entries.len() })))
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StockBody {
    commodity_id: CommodityId,
    add: u32,
}

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
    Ok(ok(StatusCode::OK, json!({ "commodity_id": body.commodity_id, "available": available })))
}

/// Work still to do: messages waiting per topic (delayed ones included), dead letters, outbox events
/// not relayed yet (up to 1000), payments without a definite answer. Zero everywhere (dead letters
/// aside) means quiet.
async fn admin_bus(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.admin(&headers)?;
    let work = state.orderly().work_to_do().await?;
    Ok(ok(
        StatusCode::OK,
        json!({ "queued": work.queued, "dead_letters": work.dead_letters, "outbox": work.outbox,
                "payments_pending": work.payments_pending }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    /// The caller vouches that traffic stopped and queues drained: I2's equalities are owed.
    #[serde(default)]
    quiet: bool,
    /// How long an order may take to become definite.
    #[serde(default = "default_deadline_ms")]
    deadline_ms: u64,
}

fn default_deadline_ms() -> u64 {
    60_000
}

/// I1–I5 over the live store and cache (the store is locked by this process, so the CLI cannot read it).
async fn admin_audit(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    state.admin(&headers)?;
    let Query(params) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let report = state.orderly().audit(params.quiet, params.deadline_ms).await?;
    let depth = state.orderly().bus_depth().await?;
    let report = serde_json::to_value(&report).unwrap_or_default();
    Ok(ok(StatusCode::OK, json!({ "report": report, "bus": depth })))
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
async fn admin_config(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.admin(&headers)?;
    let (registry, base) = state.registry()?;
    let settings = registry.settings().borrow().clone();
    let effective = base.with(&settings).map(|live| live.flatten()).map_err(invalid_setting)?;
    Ok(ok(StatusCode::OK, json!({ "settings": settings, "effective": effective })))
}

/// Sets one setting for every process (the body: its JSON value). Checked first: a bad value is
/// refused naming the key, and nothing changes.
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
    Ok(ok(StatusCode::OK, json!({ "key": key, "value": effective })))
}

/// Removes one setting: every process goes back to its own configuration for it.
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
    Ok(ok(StatusCode::OK, json!({ "key": key, "value": null })))
}

fn invalid_setting(error: orderly_app::settings::SettingError) -> ApiError {
    let key = error.key.clone();
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_setting", error.to_string())
        .with_data(json!({ "key": key }))
}

/// The registry's servers, the processes registered (role, address, version, start) and the worker ids
/// they hold.
async fn admin_cluster(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.admin(&headers)?;
    let (registry, _) = state.registry()?;
    let status = registry.status().await?;
    Ok(ok(StatusCode::OK, serde_json::to_value(&status).unwrap_or_default()))
}
