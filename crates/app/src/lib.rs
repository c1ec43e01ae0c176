//! Use-cases of orderly and the ports they need. No technology is named here: adapters implement the
//! ports (`orderly-local` for the standalone profile).
//!
//! # Layout
//! - [`ports`]: the traits — [`ports::StockCache`], [`ports::Store`], [`ports::Bus`], [`ports::Payments`],
//!   [`ports::OrderCache`], [`ports::Clock`], [`ports::IdGen`] — and the one error type infrastructure
//!   failures map to.
//! - [`model`]: what the ports exchange: orders, tokens, stock levels, messages, outbox events.
//! - [`flow`]: the entry (place orders) and the buyer's actions (query, pay, cancel).
//! - [`catalog`]: the entry's short-lived copy of catalog entries (prices are checked on every line).
//! - [`workers`]: steppable consumers of the bus, the outbox relay and the payment reconciler.
//! - [`ids`]: the leased snowflake generator that stays unique across restarts.
//! - [`audit`]: the invariants I1–I5 checked over a store and a cache.
//! - [`payment_ledger`]: the payment service's ledger and simulated acquirer, over two storage ports
//!   (embedded or PostgreSQL), with the rules written once.
//! - [`store_rules`]: what every store decides (the batched create, a transition's stock return).
//! - [`config`]: bounds and delays of the flow, each with a default.

pub mod admin;
pub mod audit;
pub mod catalog;
pub mod config;
pub mod flow;
pub mod ids;
pub mod model;
pub mod payment_ledger;
pub mod ports;
pub mod store_rules;
pub mod workers;

pub use config::FlowConfig;
pub use flow::{OrderError, Orderly, PayOutcome, PlaceError};
pub use ports::{Bus, Clock, IdGen, OrderCache, Payments, PortError, StockCache, Store};
