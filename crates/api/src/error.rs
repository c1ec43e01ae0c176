//! [`ApiError`]: where domain and port errors become HTTP answers, each with a stable `code`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orderly_app::ports::ChangeRejection;
use orderly_app::{OrderError, PlaceError, PortError};
use orderly_domain::{CartRejection, TransitionRejection};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::auth::AuthRejection;

/// Every `code` an error answer can carry (docs/API.md's table; the OpenAPI document's enum).
pub const CODES: &[&str] = &[
    "malformed_json",
    "invalid_idempotency_key",
    "unreadable_body",
    "invalid_query",
    "invalid_path",
    "unauthorized",
    "payment_declined",
    "uid_mismatch",
    "not_found",
    "unknown_commodity",
    "no_such_route",
    "no_registry",
    "method_not_allowed",
    "sold_out",
    "order_not_created_yet",
    "order_already_created",
    "order_already_final",
    "payment_in_flight",
    "commodity_shop_fixed",
    "body_too_large",
    "unsupported_media_type",
    "invalid_body",
    "empty_cart",
    "too_many_lines",
    "quantity_out_of_range",
    "duplicate_commodity",
    "wrong_shop",
    "price_mismatch",
    "total_too_large",
    "buying_from_self",
    "idempotency_key_reused",
    "too_many_items",
    "invalid_commodity_id",
    "invalid_price",
    "invalid_setting",
    "rate_limited",
    "rate_limited_buyer",
    "rate_limited_commodity",
    "rate_limited_shop",
    "purchase_cap_reached",
    "unpaid_orders_cap_reached",
    "overloaded",
    "unavailable",
    "internal",
];

/// What an error answer's body is: the envelope with a stable `code`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Equals the HTTP status.
    pub status: u16,
    /// For people; clients branch on `code`.
    pub message: String,
    #[schema(schema_with = code_schema)]
    pub code: &'static str,
    /// What the error is about (`line`, `commodity_id`, `key`, or the order), or null.
    #[schema(value_type = Value)]
    pub data: Value,
}

fn code_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(CODES.iter().copied()))
        .description(Some("Stable; documented in docs/API.md."))
        .build()
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, documented in docs/API.md; clients branch on it, never on `message`.
    pub code: &'static str,
    pub message: String,
    pub data: Value,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        debug_assert!(CODES.contains(&code), "error code {code} is not in error::CODES");
        ApiError { status, code, message: message.into(), data: Value::Null, retry_after_s: None }
    }

    pub fn with_data(mut self, data: Value) -> ApiError {
        self.data = data;
        self
    }

    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such order")
    }

    /// A cart refused by a rate rule: the rule's code, and when it would have had a token.
    pub fn rate_limited(refused: crate::limit::Refused) -> ApiError {
        let wait = refused.retry_after;
        let what = match refused.rule {
            crate::limit::Rule::Global => "too many orders",
            crate::limit::Rule::Buyer => "too many orders from this buyer",
            crate::limit::Rule::Commodity => "too many orders for this commodity",
            crate::limit::Rule::Shop => "too many orders for this shop",
        };
        let mut error =
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, refused.rule.code(), format!("{what}; retry later"));
        error.retry_after_s = Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
        error
    }

    /// Load shedding: the buyer requests in flight are at the concurrency limit.
    pub fn overloaded() -> ApiError {
        let mut error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "overloaded; retry later");
        error.retry_after_s = Some(1);
        error
    }

    fn unavailable(error: &PortError) -> ApiError {
        // Logged here, where it is handled; the client gets no internals.
        if error.is_retryable() {
            tracing::warn!(%error, "dependency unavailable");
            let mut answer =
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "temporarily unavailable; retry");
            answer.retry_after_s = Some(1);
            answer
        } else {
            tracing::error!(%error, "internal failure");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
        }
    }
}

impl From<AuthRejection> for ApiError {
    fn from(rejection: AuthRejection) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", rejection.to_string())
    }
}

impl From<PortError> for ApiError {
    fn from(error: PortError) -> Self {
        ApiError::unavailable(&error)
    }
}

impl From<CartRejection> for ApiError {
    fn from(rejection: CartRejection) -> Self {
        use CartRejection as C;
        let (code, line) = match &rejection {
            C::Empty => ("empty_cart", None),
            C::TooManyLines { .. } => ("too_many_lines", None),
            C::QuantityOutOfRange { line, .. } => ("quantity_out_of_range", Some(*line)),
            C::DuplicateCommodity { line, .. } => ("duplicate_commodity", Some(*line)),
            C::UnknownCommodity { line, .. } => ("unknown_commodity", Some(*line)),
            C::WrongShop { line, .. } => ("wrong_shop", Some(*line)),
            C::PriceMismatch { line, .. } => ("price_mismatch", Some(*line)),
            C::TotalTooLarge => ("total_too_large", None),
            C::BuyingFromSelf { line, .. } => ("buying_from_self", Some(*line)),
        };
        let error = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, rejection.to_string());
        match line {
            Some(line) => error.with_data(json!({ "line": line })),
            None => error,
        }
    }
}

impl From<PlaceError> for ApiError {
    fn from(error: PlaceError) -> Self {
        match error {
            PlaceError::Cart(rejection) => rejection.into(),
            PlaceError::SoldOut { commodity_id } => {
                ApiError::new(StatusCode::CONFLICT, "sold_out", format!("commodity {commodity_id} is sold out"))
                    .with_data(json!({ "commodity_id": commodity_id }))
            }
            PlaceError::IdempotencyKeyReused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with another request",
            ),
            PlaceError::PurchaseCap { commodity_id, held, cap, retry_after_ms } => {
                let mut error = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "purchase_cap_reached",
                    format!("this buyer may hold {cap} units of commodity {commodity_id} and holds {held}"),
                )
                .with_data(json!({ "commodity_id": commodity_id, "held": held, "cap": cap }));
                error.retry_after_s = Some(retry_after_ms.div_ceil(1_000));
                error
            }
            PlaceError::UnpaidCap { held, cap, retry_after_ms } => {
                let mut error = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "unpaid_orders_cap_reached",
                    format!("this buyer may have {cap} unpaid orders and has {held}; pay or cancel one first"),
                )
                .with_data(json!({ "held": held, "cap": cap }));
                error.retry_after_s = Some(retry_after_ms.div_ceil(1_000));
                error
            }
            PlaceError::Unavailable(error) => error.into(),
        }
    }
}

impl From<OrderError> for ApiError {
    fn from(error: OrderError) -> Self {
        match error {
            OrderError::Refused(ChangeRejection::NotFound) => ApiError::not_found(),
            OrderError::Refused(ChangeRejection::Transition(rejection)) => {
                let code = match rejection {
                    TransitionRejection::AlreadyFinal { .. } => "order_already_final",
                    TransitionRejection::NotCreatedYet { .. } => "order_not_created_yet",
                    TransitionRejection::AlreadyCreated { .. } => "order_already_created",
                };
                ApiError::new(StatusCode::CONFLICT, code, rejection.to_string())
            }
            OrderError::Refused(ChangeRejection::PaymentInFlight) => {
                ApiError::new(StatusCode::CONFLICT, "payment_in_flight", "a payment for this order is in flight")
            }
            OrderError::Unavailable(error) => error.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { status: self.status.as_u16(), message: self.message, code: self.code, data: self.data };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The seed's success envelope.
pub fn ok<T: Serialize>(status: StatusCode, data: T) -> Response {
    (status, axum::Json(crate::views::Envelope { status: status.as_u16(), message: "OK", data })).into_response()
}
