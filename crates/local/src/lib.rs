//! The standalone profile: every port in one process, durable on one embedded LSM-tree (fjall).
//!
//! # Layout
//! - `codec`: how records and messages are written (a format byte, then postcard; JSON of earlier
//!   builds still read).
//! - [`db`]: the fjall database, its keyspaces, and group commit (one fsync serves every writer that
//!   wrote before it started).
//! - [`store`]: [`LocalStore`], the `Store` port — catalog, stock ledger, orders, outbox, safe-pay set,
//!   idempotency keys. The seed's wish: the LSM-tree as inventory persistence.
//! - [`bus`]: [`LocalBus`], a durable queue with delayed delivery in the same database.
//! - [`cache`]: [`LocalStockCache`], the stock cache in memory, rebuilt from the store at start.
//! - [`holdings`]: [`LocalHoldings`], the gate of the buyer's caps in memory.
//! - [`payments`]: the payment ledger's and the simulated acquirer's books in the embedded database
//!   ([`local_payments`]: the payment service in process).
//! - [`registry`]: [`LocalRegistry`], the registry in process; its settings kept in the database.
//! - [`error`]: [`LocalError`], what can fail here, mapped to the ports' error.
//! - [`open`]: every adapter above opened on one data directory, as the profile's `Ports`.

pub mod bus;
pub mod cache;
mod codec;
pub mod db;
pub mod error;
pub mod holdings;
pub mod open;
pub mod payments;
pub mod registry;
pub mod store;

pub use bus::LocalBus;
pub use cache::LocalStockCache;
pub use db::{Durability, LocalDb};
pub use error::LocalError;
pub use holdings::LocalHoldings;
pub use open::{LocalConfig, open, open_payment_ledger, open_with_registry};
pub use payments::{AcquirerConfig, local_payment_books, local_payments};
pub use registry::LocalRegistry;
pub use store::LocalStore;

use orderly_app::PortError;

pub(crate) fn storage_error(error: impl std::fmt::Display) -> PortError {
    LocalError::Storage(error.to_string()).into()
}

pub(crate) use codec::{decode, encode};
