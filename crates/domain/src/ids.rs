//! Identifiers: buyers, shops (the seed's `user_id` of a line), commodities, and order numbers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::snowflake::SnowflakeId;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A buyer (the seed's `uid`).
    Uid
);
id_type!(
    /// A shop, the seller of a line (the seed's line `user_id`). One order per shop.
    ShopId
);
id_type!(
    /// A commodity, which is also the stock-keeping unit here.
    CommodityId
);

/// Number of buyer shards the order number's suffix can name (4 decimal digits).
pub const BUYER_SHARDS: u64 = 10_000;

/// The public order number: a snowflake id followed by the buyer's shard as four digits, so a sharded
/// store can route a lookup by order number alone (the seed's numbers end in a buyer suffix too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderNo {
    pub id: SnowflakeId,
    pub buyer_shard: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderNoParseError {
    #[error("order number must be 5 to 23 decimal digits")]
    Malformed,
}

impl OrderNo {
    pub fn new(id: SnowflakeId, buyer: Uid) -> OrderNo {
        // The remainder is below 10 000, so it always fits.
        let buyer_shard = u16::try_from(buyer.0 % BUYER_SHARDS).unwrap_or(u16::MAX);
        OrderNo { id, buyer_shard }
    }

    /// Fixed-width big-endian bytes: sorts like the id, for store keys.
    pub fn to_key(self) -> [u8; 10] {
        let mut key = [0u8; 10];
        key[..8].copy_from_slice(&self.id.0.to_be_bytes());
        key[8..].copy_from_slice(&self.buyer_shard.to_be_bytes());
        key
    }

    pub fn from_key(key: &[u8]) -> Option<OrderNo> {
        let id = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
        let buyer_shard = u16::from_be_bytes(key.get(8..10)?.try_into().ok()?);
        Some(OrderNo { id: SnowflakeId(id), buyer_shard })
    }
}

impl fmt::Display for OrderNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:04}", self.id.0, self.buyer_shard)
    }
}

impl FromStr for OrderNo {
    type Err = OrderNoParseError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // At most 19 digits of id: every such number fits a u64 (a snowflake id has 63 bits, 19 digits).
        if !(5..=23).contains(&text.len()) || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(OrderNoParseError::Malformed);
        }
        let (id, shard) = text.split_at(text.len() - 4);
        let id = id.parse::<u64>().map_err(|_| OrderNoParseError::Malformed)?;
        let buyer_shard = shard.parse::<u16>().map_err(|_| OrderNoParseError::Malformed)?;
        Ok(OrderNo { id: SnowflakeId(id), buyer_shard })
    }
}

/// Its text, as the API shows it; in a binary format (not human-readable: the standalone database's
/// records) the id and the shard as two integers.
impl Serialize for OrderNo {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match serializer.is_human_readable() {
            true => serializer.collect_str(self),
            false => (self.id.0, self.buyer_shard).serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for OrderNo {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if !deserializer.is_human_readable() {
            let (id, buyer_shard) = <(u64, u16)>::deserialize(deserializer)?;
            if u64::from(buyer_shard) >= BUYER_SHARDS {
                return Err(serde::de::Error::custom(OrderNoParseError::Malformed));
            }
            return Ok(OrderNo { id: SnowflakeId(id), buyer_shard });
        }
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Text of 5 to 23 digits: the snowflake id, then the buyer's shard as four digits. Exactly the texts
/// that parse.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for OrderNo {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[0-9]{5,23}$"))
            .examples(["3838572628184924160001"])
            .description(Some("An order number: the snowflake id followed by the buyer's shard (4 digits)."))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for OrderNo {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_number_round_trips_as_text_and_key() {
        let no = OrderNo::new(SnowflakeId(1_440_193_966_207_668_983), Uid(1_679_206_719));
        assert_eq!(no.buyer_shard, 6719);
        let text = no.to_string();
        assert_eq!(text, "14401939662076689836719");
        assert_eq!(text.parse::<OrderNo>(), Ok(no));
        assert_eq!(OrderNo::from_key(&no.to_key()), Some(no));
        let small = OrderNo::new(SnowflakeId(7), Uid(3));
        assert_eq!(small.to_string(), "70003");
        assert_eq!("70003".parse::<OrderNo>(), Ok(small));
    }

    #[test]
    fn malformed_order_numbers_are_refused() {
        for bad in ["", "1234", "abc12345", "-12345", "1234567890123456789012345", "99999999999999999999990000"] {
            assert_eq!(bad.parse::<OrderNo>(), Err(OrderNoParseError::Malformed), "{bad}");
        }
    }
}
