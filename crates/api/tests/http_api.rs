//! The API through the router (no socket): the seed's walk-through, auth, bad input, limits.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use orderly_api::{ApiState, RateLimitConfig, TokenAuth, router};
use orderly_app::time::ManualClock;
use orderly_app::{FlowConfig, Orderly};
use orderly_domain::Uid;
use orderly_local::{Durability, LocalConfig};
use serde_json::{Value, json};
use tower::ServiceExt;

const T0_MS: u64 = 1_800_000_000_000;
const ADMIN: &str = "admin-token-for-tests";

struct App {
    router: Router,
    orderly: Orderly,
    auth: TokenAuth,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

async fn app_with(limits: RateLimitConfig) -> App {
    app_configured(limits, false).await
}

async fn app_configured(limits: RateLimitConfig, naive_baseline: bool) -> App {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let local = LocalConfig { durability: Durability::Os, ..LocalConfig::default() };
    let ports = orderly_local::open(dir.path(), clock.clone(), &local, None).await.expect("opens");
    let orderly = Orderly::new(ports, FlowConfig::default());
    let auth = TokenAuth::new(b"test-secret-0123456789".to_vec(), ADMIN.to_owned());
    let router = router(ApiState::new(orderly.clone(), auth.clone(), &limits).with_naive_baseline(naive_baseline));
    let app = App { router, orderly, auth, clock, _dir: dir };
    app.load_catalog().await;
    app
}

async fn app() -> App {
    app_with(RateLimitConfig::default()).await
}

impl App {
    /// Commodities 1 (shop 100001, 29.99) and 2 (shop 100002, 49.99), 10 units each.
    async fn load_catalog(&self) {
        let catalog = json!({"commodities": [
            {"commodity_id": 1, "shop_id": 100001, "price": 29.99, "add_stock": 10},
            {"commodity_id": 2, "shop_id": 100002, "price": 49.99, "add_stock": 10}
        ]});
        let (status, _) = self.call("POST", "/api/admin/catalog", Some(ADMIN), Some(catalog.to_string())).await;
        assert_eq!(status, StatusCode::OK);
    }

    fn token(&self, uid: u64) -> String {
        self.auth.mint(Uid(uid), T0_MS / 1000 + 3600)
    }

    async fn call(&self, method: &str, uri: &str, token: Option<&str>, body: Option<String>) -> (StatusCode, Value) {
        self.call_with(method, uri, token, body, &[]).await
    }

    async fn call_with(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri).header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body.map(Body::from).unwrap_or_else(Body::empty)).expect("request");
        let (status, value, _) = self.send(request).await;
        (status, value)
    }

    /// Any request as built; every answer must be the envelope.
    async fn send(&self, request: Request<Body>) -> (StatusCode, Value, axum::http::HeaderMap) {
        let response = self.router.clone().oneshot(request).await.expect("router answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        let value: Value = serde_json::from_slice(&bytes).expect("every answer is JSON");
        assert_eq!(value["status"], json!(status.as_u16()), "envelope status matches: {value}");
        (status, value, headers)
    }
}

/// `POST /api/orders` as the buyer of `token`, declared as `content_type` (none: no header).
fn post_orders(token: &str, content_type: Option<&str>, body: String) -> Request<Body> {
    let mut request =
        Request::builder().method("POST").uri("/api/orders").header("authorization", format!("Bearer {token}"));
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.body(Body::from(body)).expect("request")
}

fn seed_body() -> Value {
    json!({
        "uid": 1, "to_uid": 2, "origin_price": 29.99, "actual_price": 29.99, "pay_at_once": true,
        "commodity_details": [
            {"actual_price": 29.99, "commodity_id": 1, "good_type": 1, "page_type": 0, "prices": 29.99, "user_id": 100001, "num": 1},
            {"actual_price": 49.99, "commodity_id": 2, "good_type": 1, "page_type": 0, "prices": 49.99, "user_id": 100002, "num": 1}
        ]
    })
}

#[tokio::test]
async fn seed_walk_through_accepts_polls_pending_then_paid() {
    let app = app().await;
    let token = app.token(1);
    let (status, answer) = app.call("POST", "/api/orders", Some(&token), Some(seed_body().to_string())).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["message"], "OK");
    let order_nos = answer["data"]["order_no"].as_array().expect("numbers").clone();
    assert_eq!(order_nos.len(), 2);
    let first = order_nos[0].as_str().expect("string order number");
    let (status, polled) = app.call("GET", &format!("/api/orders/{first}"), Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(polled["data"]["state"], "pending");
    app.orderly.drain().await.expect("workers run");
    let (_, polled) = app.call("GET", &format!("/api/orders/{first}"), Some(&token), None).await;
    assert_eq!(polled["data"]["state"], "paid");
    assert_eq!(polled["data"]["total"], json!(29.99));
    let (_, listed) = app.call("GET", "/api/orders?limit=10", Some(&token), None).await;
    assert_eq!(listed["data"]["orders"].as_array().map(Vec::len), Some(2));
    let (_, commodity) = app.call("GET", "/api/commodities/1", None, None).await;
    assert_eq!(commodity["data"], json!({"commodity_id": 1, "shop_id": 100001, "price": 29.99, "stock": 9}));
}

#[tokio::test]
async fn auth_is_required_and_a_buyer_sees_only_their_orders() {
    let app = app().await;
    let body = seed_body().to_string();
    let (status, answer) = app.call("POST", "/api/orders", None, Some(body.clone())).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    let (status, answer) = app.call("POST", "/api/orders", Some("forged.token"), Some(body.clone())).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    let (status, answer) = app.call("POST", "/api/orders", Some(&app.token(2)), Some(body.clone())).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::FORBIDDEN, Some("uid_mismatch")));
    let (_, answer) = app.call("POST", "/api/orders", Some(&app.token(1)), Some(body)).await;
    let first = answer["data"]["order_no"][0].as_str().expect("number").to_owned();
    let (status, answer) = app.call("GET", &format!("/api/orders/{first}"), Some(&app.token(2)), None).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (status, _) = app.call("POST", &format!("/api/orders/{first}/cancel"), Some(&app.token(2)), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, answer) = app.call("POST", "/api/admin/catalog", Some(&app.token(1)), Some("{}".into())).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_with_a_stable_code() {
    let app = app().await;
    let token = app.token(1);
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut body = seed_body();
        edit(&mut body);
        body.to_string()
    };
    let cases: Vec<(String, StatusCode, &str)> = vec![
        ("{not json".into(), StatusCode::BAD_REQUEST, "malformed_json"),
        ("".into(), StatusCode::BAD_REQUEST, "malformed_json"),
        ("[]".into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (with(&|b| b["commodity_details"] = json!([])), StatusCode::UNPROCESSABLE_ENTITY, "empty_cart"),
        (
            with(&|b| b["commodity_details"][0]["num"] = json!(0)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "quantity_out_of_range",
        ),
        (
            with(&|b| b["commodity_details"][0]["num"] = json!(-3)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "quantity_out_of_range",
        ),
        (
            with(&|b| b["commodity_details"][0]["num"] = json!(1_000_000_000)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "quantity_out_of_range",
        ),
        (with(&|b| b["commodity_details"][0]["num"] = json!(1e30)), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (with(&|b| b["commodity_details"][0]["num"] = json!("1")), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (
            with(&|b| b["commodity_details"][1]["commodity_id"] = json!(999)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_commodity",
        ),
        (
            with(&|b| b["commodity_details"][1]["prices"] = json!(0.01)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "price_mismatch",
        ),
        (
            with(&|b| b["commodity_details"][1]["actual_price"] = json!(49.999)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            with(&|b| b["commodity_details"][1]["actual_price"] = json!(-49.99)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            with(&|b| b["commodity_details"][1]["user_id"] = json!(100001)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "wrong_shop",
        ),
        (
            with(&|b| b["commodity_details"][1] = b["commodity_details"][0].clone()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "duplicate_commodity",
        ),
        (with(&|b| b["surprise"] = json!(1)), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (
            with(&|b| b["commodity_details"] = json!(vec![b["commodity_details"][0].clone(); 51])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_lines",
        ),
        (with(&|b| b["commodity_details"][0]["num"] = json!(11)), StatusCode::CONFLICT, "sold_out"),
    ];
    for (body, status, code) in cases {
        let (got, answer) = app.call("POST", "/api/orders", Some(&token), Some(body.clone())).await;
        assert_eq!((got, answer["code"].as_str()), (status, Some(code)), "{body} → {answer}");
    }
    let price = with(&|b| b["commodity_details"][1]["prices"] = json!(0.01));
    let (_, answer) = app.call("POST", "/api/orders", Some(&token), Some(price)).await;
    assert_eq!(answer["data"]["line"], 1, "the line is named");
    let huge = "x".repeat(orderly_api::routes::BODY_BYTES_MAX + 1);
    let (status, answer) = app.call("POST", "/api/orders", Some(&token), Some(huge)).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")));
    for uri in ["/api/orders/abc", "/api/orders/1", "/api/orders/99999999999999999999999999"] {
        let (status, answer) = app.call("GET", uri, Some(&token), None).await;
        assert_eq!((status, answer["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{uri}");
    }
    let (status, answer) = app.call("GET", "/api/orders?limit=abc", Some(&token), None).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_query")));
    let (status, _) = app.call("GET", "/api/commodities/nope", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nothing was reserved by any refused request.
    let (_, commodity) = app.call("GET", "/api/commodities/1", None, None).await;
    assert_eq!(commodity["data"]["stock"], 10);
}

/// Issue 17, item 5: what an outside client found contradicting docs/API.md, each refused with its code
/// and nothing reserved.
#[tokio::test]
async fn the_api_holds_to_its_contract() {
    let app = app().await;
    let token = app.token(1);
    let seed = seed_body().to_string();
    assert!(seed.contains(r#""prices":29.99"#), "{seed}");
    // Money is read from the number's text: what f64 would round to the catalog's price is refused.
    let long_tail = format!("29.99{}1", "0".repeat(5_000));
    for price in ["29.9899999999999999999", "29.990000000000000001", long_tail.as_str(), r#""29.99""#, "2.999e1"] {
        let body = seed.replacen(r#""prices":29.99"#, &format!(r#""prices":{price}"#), 1);
        let (status, answer) = app.call("POST", "/api/orders", Some(&token), Some(body)).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_body")),
            "{price:.40}"
        );
    }
    for key in ["a b", "a\tb", "caf\u{e9}"] {
        let value = axum::http::HeaderValue::from_str(key).expect("a header value");
        let request = Request::builder()
            .method("POST")
            .uri("/api/orders")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .header("idempotency-key", value)
            .body(Body::from(seed.clone()))
            .expect("request");
        let (status, answer, _) = app.send(request).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_idempotency_key")),
            "{key:?}"
        );
    }
    // The body must be declared JSON.
    for content_type in [Some("text/plain"), None, Some("application/jsonx")] {
        let (status, answer, _) = app.send(post_orders(&token, content_type, seed.clone())).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("unsupported_media_type")),
            "{content_type:?}"
        );
    }
    let (_, commodity) = app.call("GET", "/api/commodities/1", None, None).await;
    assert_eq!(commodity["data"]["stock"], 10, "nothing reserved by a refused cart");
    let (status, answer, _) =
        app.send(post_orders(&token, Some("Application/JSON; charset=utf-8"), seed.clone())).await;
    assert_eq!(status, StatusCode::OK, "JSON with a charset is JSON: {answer}");
    // A method a route does not take: 405 in the envelope, with `Allow`.
    for (method, uri) in [("DELETE", "/api/orders"), ("PUT", "/api/admin/catalog"), ("POST", "/healthz")] {
        let request = Request::builder().method(method).uri(uri).body(Body::empty()).expect("request");
        let (status, answer, headers) = app.send(request).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")),
            "{method} {uri}"
        );
        assert!(headers.contains_key("allow"), "{method} {uri}: {headers:?}");
    }
    // Admin input, as strictly: nothing of a refused catalog is written.
    let catalog = |items: Value| Some(json!({ "commodities": items }).to_string());
    let cases = [
        (
            json!([{"commodity_id": 0, "shop_id": 100001, "price": 1.00}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_commodity_id",
        ),
        (
            json!([{"commodity_id": 7, "shop_id": 100001, "price": 0}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_price",
        ),
        (
            json!([{"commodity_id": 7, "shop_id": 100001, "price": 1}, {"commodity_id": 7, "shop_id": 100002, "price": 1}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "duplicate_commodity",
        ),
        (
            json!([{"commodity_id": 8, "shop_id": 100001, "price": 1}, {"commodity_id": 1, "shop_id": 100002, "price": 29.99}]),
            StatusCode::CONFLICT,
            "commodity_shop_fixed",
        ),
    ];
    for (items, status, code) in cases {
        let (got, answer) = app.call("POST", "/api/admin/catalog", Some(ADMIN), catalog(items.clone())).await;
        assert_eq!((got, answer["code"].as_str()), (status, Some(code)), "{items} → {answer}");
    }
    let (_, price) = app
        .call(
            "POST",
            "/api/admin/catalog",
            Some(ADMIN),
            Some(r#"{"commodities":[{"commodity_id":9,"shop_id":100001,"price":1.005}]}"#.into()),
        )
        .await;
    assert_eq!(price["code"], "invalid_body", "{price}");
    for id in [7, 8, 9] {
        let (status, _) = app.call("GET", &format!("/api/commodities/{id}"), None, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "commodity {id} was not written");
    }
    let (_, commodity) = app.call("GET", "/api/commodities/1", None, None).await;
    assert_eq!(commodity["data"]["shop_id"], 100001, "still its first shop");
}

/// Issue 17, item 2: `GET /metrics` in Prometheus's text format — the HTTP answers by route and status
/// with their latency, the order events, the charges, the work still to do, the requests in flight, the
/// most deducted commodities' stock.
#[tokio::test]
async fn metrics_count_answers_orders_and_work() {
    let app = app().await;
    let handle = orderly_api::observe::install().expect("the test process's only recorder");
    let router =
        router(ApiState::new(app.orderly.clone(), app.auth.clone(), &RateLimitConfig::default()).with_metrics(handle));
    let token = app.token(1);
    let post = post_orders(&token, Some("application/json"), seed_body().to_string());
    assert_eq!(router.clone().oneshot(post).await.expect("answers").status(), StatusCode::OK);
    let unknown = Request::builder().uri("/api/orders/abc").header("authorization", format!("Bearer {token}"));
    let unknown = unknown.body(Body::empty()).expect("request");
    assert_eq!(router.clone().oneshot(unknown).await.expect("answers").status(), StatusCode::NOT_FOUND);
    // The creates wait 2.5 s for a worker.
    app.clock.advance_ms(2_500);
    app.orderly.drain().await.expect("workers run");
    let scrape = Request::builder().uri("/metrics").body(Body::empty()).expect("request");
    let response = router.clone().oneshot(scrape).await.expect("answers");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(content_type.as_deref(), Some("text/plain; version=0.0.4"));
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8(bytes.to_vec()).expect("text");
    for series in [
        r#"orderly_order_events_total{event="accepted"} 2"#,
        r#"orderly_order_events_total{event="created"} 2"#,
        r#"orderly_order_events_total{event="paid"} 2"#,
        r#"orderly_payments_total{outcome="succeeded"} 2"#,
        r#"orderly_http_requests_total{route="/api/orders",method="POST",status="200"} 1"#,
        r#"orderly_http_requests_total{route="/api/orders/{order_no}",method="GET",status="404"} 1"#,
        r#"orderly_http_request_seconds_bucket{route="/api/orders",method="POST",le="+Inf"} 1"#,
        r#"orderly_bus_queued{topic="create_order"} 0"#,
        "orderly_outbox_events 0",
        "orderly_payments_pending 0",
        "orderly_rate_limit_orders_per_second 20000",
        "orderly_in_flight_max 512",
        "orderly_http_in_flight 0",
        // Both creates waited 2.5 s; the worker's last receive found nothing waiting.
        r#"orderly_bus_wait_seconds_count{topic="create_order"} 2"#,
        r#"orderly_bus_wait_seconds_sum{topic="create_order"} 5"#,
        r#"orderly_bus_oldest_age_seconds{topic="create_order"} 0"#,
        // The seed's cart took one unit of each commodity (10 each): paid, deducted in the store.
        r#"orderly_stock_deducted{commodity_id="1"} 1"#,
        r#"orderly_stock_selling{commodity_id="1"} 9"#,
        r#"orderly_stock_deducted{commodity_id="2"} 1"#,
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    // For `promtool check metrics` in `.ci/run`.
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/metrics-sample.prom");
    std::fs::write(&sample, &text).expect("sample written");
}

#[tokio::test]
async fn idempotency_key_replays_the_first_answer() {
    let app = app().await;
    let token = app.token(1);
    let key = [("idempotency-key", "order-attempt-1")];
    let (_, first) = app.call_with("POST", "/api/orders", Some(&token), Some(seed_body().to_string()), &key).await;
    let (status, retry) = app.call_with("POST", "/api/orders", Some(&token), Some(seed_body().to_string()), &key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["data"], retry["data"]);
    let mut other = seed_body();
    other["pay_at_once"] = json!(false);
    let (status, answer) = app.call_with("POST", "/api/orders", Some(&token), Some(other.to_string()), &key).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("idempotency_key_reused")));
    let (_, commodity) = app.call("GET", "/api/commodities/1", None, None).await;
    assert_eq!(commodity["data"]["stock"], 9, "reserved once");
}

#[tokio::test]
async fn the_entry_sheds_load_with_429_and_retry_after() {
    let app = app_with(RateLimitConfig { orders_per_second: 1, burst: 2, ..RateLimitConfig::default() }).await;
    let token = app.token(1);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let mut body = seed_body();
        body["commodity_details"] = json!([body["commodity_details"][0].clone()]);
        let request = post_orders(&token, Some("application/json"), body.to_string());
        let response = app.router.clone().oneshot(request).await.expect("answers");
        statuses.push((response.status(), response.headers().get("retry-after").cloned()));
    }
    assert_eq!(statuses[0].0, StatusCode::OK);
    assert_eq!(statuses[1].0, StatusCode::OK);
    assert_eq!(statuses[2].0, StatusCode::TOO_MANY_REQUESTS);
    assert!(statuses[2].1.is_some(), "Retry-After is set");
}

/// A one-line cart of `commodity` (1: shop 100001, 2: shop 100002) for buyer `uid`.
fn one_line(uid: u64, commodity: u64) -> String {
    let mut body = seed_body();
    body["uid"] = json!(uid);
    let line = body["commodity_details"][commodity as usize - 1].clone();
    body["commodity_details"] = json!([line]);
    body.to_string()
}

/// Each rule refuses with its own code and `Retry-After`, for its own key only, and a refused cart
/// reserves nothing; `GET /api/admin/limits` shows the rules and what they refused.
#[tokio::test]
async fn each_rate_rule_refuses_its_own_key_with_its_own_code() {
    use orderly_api::limit::KeyRule;
    let one_per_second = KeyRule { per_second: 1, burst: 1, queue_ms: 0 };
    let stock = async |app: &App, commodity: u64| {
        let (_, answer) = app.call("GET", &format!("/api/commodities/{commodity}"), None, None).await;
        answer["data"]["stock"].clone()
    };
    for rule in ["buyer", "commodity", "shop"] {
        let mut limits = RateLimitConfig::default();
        match rule {
            "buyer" => limits.buyer = one_per_second.clone(),
            "commodity" => limits.commodity = one_per_second.clone(),
            _ => limits.shop = one_per_second.clone(),
        }
        let app = app_with(limits).await;
        let (buyer_1, buyer_2) = (app.token(1), app.token(2));
        let (status, answer) = app.call("POST", "/api/orders", Some(&buyer_1), Some(one_line(1, 1))).await;
        assert_eq!(status, StatusCode::OK, "{rule}: {answer}");
        let request = post_orders(&buyer_1, Some("application/json"), one_line(1, 1));
        let (status, answer, headers) = app.send(request).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{rule}: {answer}");
        assert_eq!(answer["code"], format!("rate_limited_{rule}"));
        assert_eq!(headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"), "{rule}");
        assert_eq!(stock(&app, 1).await, 9, "{rule}: the refused cart reserved nothing");
        // Another key of the same rule is not touched: buyer 2 on commodity 1 is refused only by the
        // commodity and shop rules (same commodity, same shop); commodity 2 (shop 100002) by none.
        let (status, answer) = app.call("POST", "/api/orders", Some(&buyer_2), Some(one_line(2, 1))).await;
        let expected = if rule == "buyer" { StatusCode::OK } else { StatusCode::TOO_MANY_REQUESTS };
        assert_eq!(status, expected, "{rule}: {answer}");
        let (status, answer) = app.call("POST", "/api/orders", Some(&app.token(3)), Some(one_line(3, 2))).await;
        assert_eq!(status, StatusCode::OK, "{rule}: {answer}");

        let (status, limits) = app.call("GET", "/api/admin/limits", Some(ADMIN), None).await;
        assert_eq!(status, StatusCode::OK, "{limits}");
        let rules = limits["data"]["rules"].as_array().expect("rules");
        let view = rules.iter().find(|view| view["rule"] == rule).expect("the rule is shown");
        assert_eq!(
            (view["per_second"].clone(), view["code"].clone()),
            (json!(1), json!(format!("rate_limited_{rule}")))
        );
        let refused = if rule == "buyer" { 1 } else { 2 };
        assert_eq!(view["refused"], refused, "{rule}: {limits}");
        let keys = if rule == "buyer" { 3 } else { 2 };
        assert_eq!(view["keys"], keys, "{rule}: the buyers, commodities or shops seen");
        let global = rules.iter().find(|view| view["rule"] == "global").expect("global");
        assert_eq!((global["per_second"].clone(), global["refused"].clone()), (json!(20_000), json!(0)));
        let concurrency = &limits["data"]["concurrency"];
        assert_eq!((concurrency["adaptive"].clone(), concurrency["max"].clone()), (json!(true), json!(512)));
        assert_eq!(concurrency["partitions"][0]["admitted_below"], 512, "pay and cancel: the whole limit");
        assert_eq!(concurrency["partitions"][1]["priority"], "orders");
        let in_flight: Vec<Value> = (0..3).map(|i| concurrency["partitions"][i]["in_flight"].clone()).collect();
        assert_eq!(in_flight, [json!(0), json!(0), json!(0)], "every slot given back: {limits}");
    }
}

/// The buyer's caps answer 429 with their own code, what the buyer holds and `Retry-After`; the refused
/// cart reserves nothing; `GET /api/admin/limits` shows the caps and what they refused.
#[tokio::test]
async fn the_buyers_caps_refuse_with_their_own_codes() {
    let app = app().await;
    let mut config = (*app.orderly.config()).clone();
    config.buyer_caps.units_per_commodity = 2;
    config.buyer_caps.unpaid_orders = 3;
    app.orderly.set_config(config);
    let token = app.token(1);
    for _ in 0..2 {
        let (status, answer) = app.call("POST", "/api/orders", Some(&token), Some(one_line(1, 1))).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let (status, answer, headers) = app.send(post_orders(&token, Some("application/json"), one_line(1, 1))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    assert_eq!(answer["code"], "purchase_cap_reached");
    assert_eq!(answer["data"], json!({"commodity_id": 1, "held": 2, "cap": 2}));
    let timeout_s = FlowConfig::default().unpaid_timeout_ms / 1000;
    assert_eq!(headers.get("retry-after").and_then(|v| v.to_str().ok()), Some(timeout_s.to_string().as_str()));
    let (_, commodity) = app.call("GET", "/api/commodities/1", None, None).await;
    assert_eq!(commodity["data"]["stock"], 8, "the refused cart reserved nothing");

    let (status, answer) = app.call("POST", "/api/orders", Some(&token), Some(one_line(1, 2))).await;
    assert_eq!(status, StatusCode::OK, "another commodity: {answer}");
    let (status, answer, headers) = app.send(post_orders(&token, Some("application/json"), one_line(1, 2))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    assert_eq!(answer["code"], "unpaid_orders_cap_reached");
    assert_eq!(answer["data"], json!({"held": 3, "cap": 3}));
    assert!(headers.get("retry-after").is_some());

    let (status, limits) = app.call("GET", "/api/admin/limits", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::OK, "{limits}");
    let caps = &limits["data"]["caps"];
    assert_eq!(
        (caps["units_per_commodity"].clone(), caps["unpaid_orders"].clone(), caps["window_ms"].clone()),
        (json!(2), json!(3), json!(86_400_000))
    );
    assert_eq!((caps["refused_purchase_cap"].clone(), caps["refused_unpaid_orders_cap"].clone()), (json!(1), json!(1)));
}

/// In queue mode a cart over its rule's rate waits for its turn (within the bound) and is accepted.
#[tokio::test]
async fn a_queueing_rule_serves_the_cart_later_instead_of_refusing_it() {
    let limits = RateLimitConfig {
        commodity: orderly_api::limit::KeyRule { per_second: 20, burst: 1, queue_ms: 500 },
        ..RateLimitConfig::default()
    };
    let app = app_with(limits).await;
    let token = app.token(1);
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let (status, answer) = app.call("POST", "/api/orders", Some(&token), Some(one_line(1, 1))).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    // Three carts of one commodity at 20 a second with a burst of one: the last two waited their turn.
    assert!(started.elapsed() >= std::time::Duration::from_millis(90), "{:?}", started.elapsed());
}

/// Over `in_flight_max` buyer requests at once, one more of the same kind is shed at once with 503
/// `overloaded`; the held one still completes, and once it did the next request is served again. Healthz
/// is never shed.
#[tokio::test]
async fn requests_beyond_the_in_flight_bound_are_shed_with_503() {
    let limits = RateLimitConfig { in_flight_max: 1, ..RateLimitConfig::default() };
    let mut app = app_with(limits.clone()).await;
    let handle = orderly_api::observe::install().expect("the test process's only recorder");
    app.router = router(ApiState::new(app.orderly.clone(), app.auth.clone(), &limits).with_metrics(handle));
    let in_flight = async |app: &App| {
        let scrape = Request::builder().uri("/metrics").body(Body::empty()).expect("request");
        let response = app.router.clone().oneshot(scrape).await.expect("answers");
        let text = response.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&text).into_owned();
        let line = text.lines().find(|line| line.starts_with("orderly_http_in_flight ")).map(str::to_owned);
        line.expect("the in-flight gauge")
    };
    let token = app.token(1);
    // A request whose body is still arriving holds the only slot.
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let stream = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx));
    let held = Request::builder()
        .method("POST")
        .uri("/api/orders")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("request");
    let router = app.router.clone();
    let held = tokio::spawn(async move { router.oneshot(held).await.expect("answers").status() });
    tokio::task::yield_now().await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    let (status, body) = app.call("POST", "/api/orders", Some(&token), Some(seed_body().to_string())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "overloaded");
    // Another kind still has its guaranteed part (5 % of the limit, at least one slot): a query is served
    // beside the held cart — the documented overshoot of the limit.
    let (status, body) = app.call("GET", "/api/orders", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = app.call("GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(in_flight(&app).await, "orderly_http_in_flight 1", "the held request is counted, the shed one not");

    sender.send(Ok(seed_body().to_string().into_bytes())).await.expect("body sent");
    drop(sender);
    assert_eq!(held.await.expect("held request"), StatusCode::OK);
    let (status, body) = app.call("GET", "/api/orders", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["orders"].as_array().map(Vec::len), Some(2), "the held request placed its orders");
    assert_eq!(in_flight(&app).await, "orderly_http_in_flight 0");
}

/// The bench's naive baseline: served only when asked for; the same entry checks, then the order is
/// created by one synchronous store transaction (no worker needed), and sold out is refused the same way.
#[tokio::test]
async fn the_naive_baseline_route_is_off_by_default_and_creates_synchronously() {
    let app = app().await;
    let token = app.token(1);
    let body = seed_body().to_string();
    let (status, answer) = app.call("POST", "/api/baseline/orders", Some(&token), Some(body.clone())).await;
    assert_eq!((status, answer["code"].clone()), (StatusCode::NOT_FOUND, json!("no_such_route")));

    let app = app_configured(RateLimitConfig::default(), true).await;
    let token = app.token(1);
    let (status, answer) = app.call("POST", "/api/baseline/orders", None, Some(body.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    let (status, answer) = app.call("POST", "/api/baseline/orders", Some(&token), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    for order_no in answer["data"]["order_no"].as_array().expect("order numbers") {
        let uri = format!("/api/orders/{}", order_no.as_str().expect("a string"));
        let (_, order) = app.call("GET", &uri, Some(&token), None).await;
        assert_eq!(order["data"]["state"], "to_pay", "created when answered: {order}");
    }
    let too_many = json!({"uid": 1, "to_uid": 1, "origin_price": 0, "actual_price": 0, "pay_at_once": false,
        "commodity_details": [{"actual_price": 29.99, "commodity_id": 1, "good_type": 1, "page_type": 0,
                               "prices": 29.99, "user_id": 100001, "num": 10}]});
    let (status, answer) = app.call("POST", "/api/baseline/orders", Some(&token), Some(too_many.to_string())).await;
    assert_eq!((status, answer["code"].clone()), (StatusCode::CONFLICT, json!("sold_out")));
}

#[tokio::test]
async fn admin_stock_adds_to_a_known_commodity_and_refuses_an_unknown_one() {
    let app = app().await;
    let body = json!({"commodity_id": 1, "add": 5}).to_string();
    let (status, answer) = app.call("POST", "/api/admin/stock", Some(ADMIN), Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((answer["data"]["commodity_id"].as_u64(), answer["data"]["available"].as_u64()), (Some(1), Some(15)));
    let (status, answer) = app.call("GET", "/api/commodities/1", Some(&app.token(1)), None).await;
    assert_eq!((status, answer["data"]["stock"].as_u64()), (StatusCode::OK, Some(15)), "the cache follows");
    let body = json!({"commodity_id": 99, "add": 5}).to_string();
    let (status, answer) = app.call("POST", "/api/admin/stock", Some(ADMIN), Some(body)).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::NOT_FOUND, Some("unknown_commodity")));
}

/// Settings at run time through the admin API, on the standalone registry: a good value is written and
/// in force; a bad one is refused naming its key and changes nothing; a rate limit applied to the
/// state takes effect on the next request.
#[tokio::test]
async fn admin_config_checks_each_setting_and_the_rate_limit_follows() {
    use orderly_app::registry::Registry;
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let local = LocalConfig { durability: Durability::Os, ..LocalConfig::default() };
    let (ports, registry) =
        orderly_local::open_with_registry(dir.path(), clock.clone(), &local, None).await.expect("opens");
    let registry: Arc<dyn Registry> = Arc::new(registry);
    let orderly = Orderly::new(ports, FlowConfig::default());
    let auth = TokenAuth::new(b"test-secret-0123456789".to_vec(), ADMIN.to_owned());
    let state = ApiState::new(orderly.clone(), auth.clone(), &RateLimitConfig::default())
        .with_registry(Arc::clone(&registry), orderly_app::settings::Live::default());
    let app = App { router: router(state.clone()), orderly, auth, clock, _dir: dir };

    let (status, _) = app.call("PUT", "/api/admin/config/flow.unpaid_timeout_ms", None, Some("60000".into())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "admin only");
    let (status, body) =
        app.call("PUT", "/api/admin/config/flow.unpaid_timeout_ms", Some(ADMIN), Some("60000".into())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["value"], "60000");
    for (key, value) in [
        ("flow.unpaid_timeout_ms", "\"soon\""),
        ("flow.unpaid_timeout_ms", "0"),
        ("flow.no_such_timer_ms", "5"),
        ("rate_limit.in_flight_max", "0"),
        ("rate_limit.adaptive.priorities.queries_below", "0.9"),
        ("flow.buyer_caps.window_ms", "0"),
        ("flow.buyer_caps.unpaid_orders", "-1"),
    ] {
        let (status, body) =
            app.call("PUT", &format!("/api/admin/config/{key}"), Some(ADMIN), Some(value.into())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{key}={value}: {body}");
        assert_eq!(body["code"], "invalid_setting");
        assert_eq!(body["data"]["key"], key);
    }
    let (status, body) = app.call("GET", "/api/admin/config", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["settings"], json!({"flow.unpaid_timeout_ms": "60000"}), "only the good value: {body}");
    assert_eq!(body["data"]["effective"]["flow.unpaid_timeout_ms"], "60000");
    assert_eq!(registry.settings().borrow().len(), 1, "in the registry");
    let (status, _) = app.call("DELETE", "/api/admin/config/flow.unpaid_timeout_ms", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(registry.settings().borrow().is_empty(), "removed");

    // One order a second, burst one: the second cart in a row is refused.
    app.load_catalog().await;
    state.set_limits(&RateLimitConfig { orders_per_second: 1, burst: 1, ..RateLimitConfig::default() });
    let token = app.token(1);
    let (first, _) = app.call("POST", "/api/orders", Some(&token), Some(seed_body().to_string())).await;
    let (second, body) = app.call("POST", "/api/orders", Some(&token), Some(seed_body().to_string())).await;
    assert_eq!(first, StatusCode::OK);
    assert_eq!(second, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "rate_limited");
    let (status, body) = app.call("GET", "/api/admin/cluster", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["servers"][0]["healthy"], true);
}

/// `(method, path)` of every route docs/API.md names in backticks (`` `GET /api/orders?limit=…` ``),
/// query strings left off.
fn documented_routes(api_md: &str) -> std::collections::BTreeSet<(String, String)> {
    let mut routes = std::collections::BTreeSet::new();
    for (start, _) in api_md.match_indices('`') {
        let rest = &api_md[start + 1..];
        let Some((method, path)) = rest.split_once(' ') else { continue };
        if !["GET", "POST", "PUT", "DELETE", "PATCH"].contains(&method) || !path.starts_with('/') {
            continue;
        }
        let path = path.split(['`', '?', ' ']).next().unwrap_or_default();
        routes.insert((method.to_lowercase(), path.to_owned()));
    }
    routes
}

/// The OpenAPI document (issue 17, item 1): served with Swagger UI; the router serves exactly the
/// document's methods on its paths and builds no route outside it; docs/API.md names the same routes
/// and the same error codes.
#[tokio::test]
async fn the_openapi_document_names_every_route_and_code() {
    let app = app_configured(RateLimitConfig::default(), true).await;
    let get = |uri: &str| Request::builder().uri(uri).body(Body::empty()).expect("request");
    let response = app.router.clone().oneshot(get("/api/openapi.json")).await.expect("answers");
    assert_eq!(response.status(), StatusCode::OK);
    let document: Value =
        serde_json::from_slice(&response.into_body().collect().await.expect("body").to_bytes()).expect("JSON");
    assert!(document["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", document["openapi"]);
    let response = app.router.clone().oneshot(get("/docs/")).await.expect("answers");
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.into_body().collect().await.expect("body").to_bytes();
    assert!(String::from_utf8_lossy(&page).contains("swagger-ui"), "Swagger UI's page");

    // Routes are added only through `routes!` (each takes its handler's `#[utoipa::path]`).
    let source = include_str!("../src/routes.rs").replace("OpenApiRouter", "");
    for builder in [".route(", ".route_service(", ".nest(", ".nest_service(", "Router::new()", ".fallback_service("] {
        assert!(!source.contains(builder), "routes.rs adds a route outside the document with {builder}");
    }
    for (at, _) in source.match_indices(".merge(") {
        let merged = &source[at + ".merge(".len()..];
        assert!(
            merged.starts_with("buyer") || merged.starts_with("SwaggerUi"),
            "routes.rs merges a router that is not documented: {}",
            merged.lines().next().unwrap_or_default()
        );
    }

    // The router takes exactly the document's methods on each of its paths.
    let paths = document["paths"].as_object().expect("paths");
    let mut in_document = std::collections::BTreeSet::new();
    for (path, item) in paths {
        let uri = path
            .replace("{order_no}", "38385726281849241600001")
            .replace("{id}", "1")
            .replace("{key}", "flow.unpaid_timeout_ms");
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let documented = item.get(method.to_lowercase()).is_some();
            if documented {
                in_document.insert((method.to_lowercase(), path.clone()));
            }
            let request = Request::builder().method(method).uri(&uri).body(Body::empty()).expect("request");
            let response = app.router.clone().oneshot(request).await.expect("answers");
            let status = response.status();
            let bytes = response.into_body().collect().await.expect("body").to_bytes();
            // The dashboard's page and files are not JSON.
            let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if documented {
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {answer}");
                // (This app records no metrics: its `/metrics` answers the documented 404.)
                if path != "/metrics" {
                    assert_ne!(answer["code"], "no_such_route", "{method} {path}");
                }
            } else {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is not in the document: {answer}");
            }
        }
    }

    // docs/API.md names the document's routes (and the two that serve the document itself).
    let api_md = include_str!("../../../docs/API.md");
    let mut expected = in_document.clone();
    expected.insert(("get".to_owned(), "/api/openapi.json".to_owned()));
    expected.insert(("get".to_owned(), "/docs".to_owned()));
    assert_eq!(documented_routes(api_md), expected, "docs/API.md and the OpenAPI document name other routes");

    // The error codes: docs/API.md's table, the document's enum and `error::CODES` are one list.
    let table: std::collections::BTreeSet<&str> = api_md
        .lines()
        .filter(|line| line.starts_with("| 4") || line.starts_with("| 5"))
        .flat_map(|line| line.split('|').nth(2).unwrap_or_default().split('`').skip(1).step_by(2))
        .collect();
    let codes: std::collections::BTreeSet<&str> = orderly_api::error::CODES.iter().copied().collect();
    assert_eq!(table, codes, "docs/API.md's error codes and error::CODES differ");
    let in_schema: std::collections::BTreeSet<&str> =
        document["components"]["schemas"]["ErrorBody"]["properties"]["code"]["enum"]
            .as_array()
            .expect("the code's enum")
            .iter()
            .filter_map(Value::as_str)
            .collect();
    assert_eq!(in_schema, codes);
}
