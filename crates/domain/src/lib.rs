//! Pure rules of orderly. No I/O, no async, no clock: time comes in as arguments.
//!
//! # Layout
//! - [`money`]: amounts in minor units (cents); parses the seed's decimals (`29.99`) exactly.
//! - [`ids`]: buyer, shop and commodity ids, and the public order number.
//! - [`snowflake`]: time-ordered 63-bit ids that never repeat, even when the clock steps back.
//! - [`cart`]: the seed's request body, validated and priced against the catalog, split one order per shop.
//! - [`fsm`]: the order state machine as a table (state, action) → next state + effects.

pub mod cart;
pub mod fsm;
pub mod ids;
pub mod money;
pub mod snowflake;

pub use cart::{
    CartLimits, CartRejection, CatalogEntry, OrderDraft, OrderLine, PlaceOrderBody, PlaceOrderLine, price_and_split,
};
pub use fsm::{Effect, OrderAction, OrderState, Transition, TransitionRejection, transition};
pub use ids::{CommodityId, OrderNo, OrderNoParseError, ShopId, Uid};
pub use money::{MONEY_CENTS_MAX, Money, MoneyParseError};
pub use snowflake::{ClockBehind, Snowflake, SnowflakeId};
