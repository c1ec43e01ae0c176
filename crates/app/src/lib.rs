//! Use-cases of orderly and the ports they need. No technology is named here: adapters implement the
//! ports (`orderly-local` for the standalone profile).
//!
//! # Layout
//! - [`ports`]: the traits — [`ports::StockCache`], [`ports::Store`], [`ports::Bus`], [`ports::Payments`],
//!   [`ports::OrderCache`], [`ports::Clock`], [`ports::IdGen`] — and the one error type infrastructure
//!   failures map to.
//! - [`model`]: what the ports exchange: orders, tokens, stock levels, messages, outbox events.
//! - [`orderly`]: the wiring — [`Ports`], and [`Orderly`], the use-cases' one receiver (private fields).
//! - [`entry`]: the entry (place orders). [`buyer`]: the buyer's actions (query, list, pay, cancel).
//! - [`admin`]: the admin's (catalog, stock, work to do).
//! - [`caps`]: the buyer's caps (units of one commodity, unpaid orders) and their gate's rule.
//! - [`catalog`]: the entry's short-lived copy of catalog entries (prices are checked on every line).
//! - [`sold_out`]: the entry's short-lived memory of what is sold out (answered without a remote call).
//! - [`workers`]: steppable consumers of the bus, the outbox relay and the payment reconciler (a module
//!   each).
//! - [`ids`]: the leased snowflake generator that stays unique across restarts.
//! - [`audit`]: the invariants I1–I5 checked over a store and a cache.
//! - [`time`]: the [`Clock`] port, the wall clock's steps, and [`time::ManualClock`] for tests.
//! - [`store_rules`]: what every store decides (the batched create, a transition's stock return).
//! - [`config`]: bounds and delays of the flow, each with a default.
//! - [`group`]: group commit, for adapters: concurrent calls sent to their engine as one batch.
//! - [`registry`]: the [`Registry`] port — members under leases, snowflake worker ids, settings.
//! - [`settings`]: what changes without a restart ([`settings::Live`]) and how a setting is checked.
//! - [`trace`]: one order's path across processes (its request's `traceparent`, kept on the order).

pub mod admin;
pub mod audit;
pub mod buyer;
pub mod caps;
pub mod catalog;
pub mod config;
pub mod entry;
pub mod group;
pub mod ids;
pub mod meters;
pub mod model;
pub mod orderly;
pub mod ports;
pub mod registry;
pub mod settings;
pub mod sold_out;
pub mod store_rules;
pub mod time;
pub mod trace;
pub mod workers;

pub use buyer::{Actor, OrderError, PayOutcome};
pub use config::FlowConfig;
pub use entry::PlaceError;
pub use orderly::{Orderly, Ports, SECOND_DELETE_WINDOW_MS};
pub use ports::{Bus, Clock, Holdings, IdGen, OrderCache, Payments, PortError, SharedRates, StockCache, Store};
pub use registry::{Member, Registry, Role, Settings};
