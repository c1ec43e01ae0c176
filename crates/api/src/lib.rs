//! The HTTP API of orderly (axum). Every answer is the seed's envelope `{status, message, data}`;
//! errors add a stable `code`.
//!
//! # Layout
//! - [`routes`]: the router and the handlers.
//! - [`error`]: [`error::ApiError`], the one place domain and port errors become HTTP answers.
//! - [`auth`]: bearer tokens (HMAC-signed `uid` + expiry) and the admin token.
//! - [`limit`]: the entry's rate rules (token buckets: global, per buyer, commodity, shop).
//! - [`adaptive`]: the concurrency limit that follows latency, shared by priority.
//! - [`views`]: what the API shows, one type per answer.
//! - [`dashboard`]: the live page at `/dashboard` and its data.
//! - [`openapi`]: the OpenAPI 3.1 document (`/api/openapi.json`, Swagger UI at `/docs`).

pub mod adaptive;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod limit;
pub mod observe;
pub mod openapi;
pub mod routes;
pub mod views;

pub use auth::TokenAuth;
pub use limit::RateLimitConfig;
pub use routes::{ApiState, router};
