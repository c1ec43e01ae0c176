//! The payment service over gRPC (the seed's payment system, called over RPC).
//!
//! # Layout
//! - [`proto`]: generated from `proto/payment.proto` (compiled by protox at build time: no `protoc`).
//! - [`server`]: the gRPC service around any ledger behind the `Payments` port (`PaymentLedger` on the
//!   embedded books, or on PostgreSQL's in the cluster), and [`server::serve`]. A started charge runs to
//!   its end even when its caller goes away.
//! - [`client`]: [`client::GrpcPayments`], the `Payments` port over gRPC: a deadline on every call,
//!   retries with backoff and jitter (every call is idempotent), client-side balancing over a static
//!   list of instances.

pub mod client;
pub mod server;

#[allow(clippy::all, missing_debug_implementations, unreachable_pub)]
pub mod proto {
    tonic::include_proto!("orderly.payment.v1");
}

pub use client::{ClientConfig, GrpcPayments};
pub use server::{PaymentService, serve};

/// The only currency the ledger keeps (the seed's prices are yuan).
pub const CURRENCY: &str = "CNY";

/// The gRPC metadata key of a charge's trace context (W3C `traceparent`; `orderly_app::trace`).
pub const TRACEPARENT: &str = "traceparent";
