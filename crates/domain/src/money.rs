//! Money without floating point.
//!
//! Amounts are `i64` minor units (cents). A request body's amounts are read from the JSON number's own
//! text ([`deserialize_exact`]): `29.99` is 2 999 cents, and `29.990000000000000001` has a third decimal
//! and is refused, never rounded. JSON records and messages (the cluster's) read them through `f64`, whose
//! shortest round-trip text (`29.99`) is exact for every amount they hold; a binary format (the
//! standalone database's records) carries the cents as an integer.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An amount in cents. Always non-negative where it leaves the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(i64);

/// Largest amount accepted: 10^13 cents (100 billion), far inside `f64`'s exact integer range.
pub const MONEY_CENTS_MAX: i64 = 10_000_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyParseError {
    #[error("amount is not a decimal number")]
    NotANumber,
    #[error("amount must not be negative")]
    Negative,
    #[error("amount has more than two decimals")]
    TooPrecise,
    #[error("amount is too large")]
    TooLarge,
    #[error("amount must be a JSON number, not a string")]
    Quoted,
    #[error("amount must be written without an exponent")]
    Exponent,
}

impl Money {
    pub const ZERO: Money = Money(0);

    pub const fn from_cents(cents: i64) -> Money {
        Money(cents)
    }

    pub const fn cents(self) -> i64 {
        self.0
    }

    /// `self * quantity`, or `None` past [`MONEY_CENTS_MAX`].
    pub fn times(self, quantity: u32) -> Option<Money> {
        let cents = self.0.checked_mul(i64::from(quantity))?;
        (cents <= MONEY_CENTS_MAX).then_some(Money(cents))
    }

    /// `self + other`, or `None` past [`MONEY_CENTS_MAX`].
    pub fn plus(self, other: Money) -> Option<Money> {
        let cents = self.0.checked_add(other.0)?;
        (cents <= MONEY_CENTS_MAX).then_some(Money(cents))
    }

    /// Parses `"29.99"`, `"30"`, `"0.5"`. Refuses signs other than none, exponents, and >2 decimals.
    pub fn parse_decimal(text: &str) -> Result<Money, MoneyParseError> {
        let text = text.trim();
        if text.starts_with('-') {
            return Err(MoneyParseError::Negative);
        }
        let (whole, fraction) = match text.split_once('.') {
            Some((w, f)) => (w, f),
            None => (text, ""),
        };
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || !digits(fraction) {
            return Err(MoneyParseError::NotANumber);
        }
        let fraction = fraction.trim_end_matches('0');
        if fraction.len() > 2 {
            return Err(MoneyParseError::TooPrecise);
        }
        // All digits by now, so the only way to fail is overflow.
        let whole: i64 = whole.parse().map_err(|_| MoneyParseError::TooLarge)?;
        let fraction_cents: i64 = match fraction.len() {
            0 => 0,
            1 => i64::from(fraction.as_bytes()[0] - b'0') * 10,
            _ => fraction.parse::<i64>().map_err(|_| MoneyParseError::NotANumber)?,
        };
        let cents =
            whole.checked_mul(100).and_then(|c| c.checked_add(fraction_cents)).ok_or(MoneyParseError::TooLarge)?;
        if cents > MONEY_CENTS_MAX {
            return Err(MoneyParseError::TooLarge);
        }
        Ok(Money(cents))
    }

    /// A JSON number's text, exactly: digits, at most one point, no sign, no exponent; a string or
    /// anything else is refused.
    pub fn from_json_text(text: &str) -> Result<Money, MoneyParseError> {
        match text.as_bytes().first() {
            Some(b'0'..=b'9') => {}
            Some(b'-') => return Err(MoneyParseError::Negative),
            Some(b'"') => return Err(MoneyParseError::Quoted),
            _ => return Err(MoneyParseError::NotANumber),
        }
        if text.contains(['e', 'E']) {
            return Err(MoneyParseError::Exponent);
        }
        Money::parse_decimal(text)
    }

    /// Reads a JSON number exactly through its shortest round-trip text.
    pub fn from_json_f64(value: f64) -> Result<Money, MoneyParseError> {
        if !value.is_finite() {
            return Err(MoneyParseError::NotANumber);
        }
        if value < 0.0 {
            return Err(MoneyParseError::Negative);
        }
        if value > (MONEY_CENTS_MAX / 100) as f64 {
            return Err(MoneyParseError::TooLarge);
        }
        // `Display` for f64 prints the shortest text that reads back as the same f64, without exponent.
        Money::parse_decimal(&value.to_string())
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, (self.0 % 100).abs())
    }
}

impl FromStr for Money {
    type Err = MoneyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Money::parse_decimal(s)
    }
}

/// Serialised as a JSON number (`29.99`), like the seed. Exact: `cents / 100` rounds to the same f64 as
/// the literal, and f64 printing is shortest round-trip. A binary format (not human-readable: the
/// standalone database's records) gets the cents as an integer.
impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match serializer.is_human_readable() {
            true => serializer.serialize_f64(self.0 as f64 / 100.0),
            false => serializer.serialize_i64(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MoneyVisitor;
        impl Visitor<'_> for MoneyVisitor {
            type Value = Money;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative amount with at most two decimals")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Money, E> {
                Money::from_json_f64(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Money, E> {
                Money::parse_decimal(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Money, E> {
                Money::parse_decimal(&v.to_string()).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Money, E> {
                Money::parse_decimal(v).map_err(E::custom)
            }
        }
        match deserializer.is_human_readable() {
            true => deserializer.deserialize_any(MoneyVisitor),
            false => match i64::deserialize(deserializer)? {
                cents @ 0..=MONEY_CENTS_MAX => Ok(Money(cents)),
                cents if cents < 0 => Err(de::Error::custom(MoneyParseError::Negative)),
                _ => Err(de::Error::custom(MoneyParseError::TooLarge)),
            },
        }
    }
}

/// A JSON number with at most two decimals and no exponent, 0 to [`MONEY_CENTS_MAX`] cents. (No
/// `multipleOf: 0.01`: JSON Schema validators check it in binary floating point, where `29.99` is no
/// multiple of `0.01`.)
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Money {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Number)
            .minimum(Some(0))
            .maximum(Some(MONEY_CENTS_MAX / 100))
            .examples([29.99])
            .description(Some("An amount: a JSON number with at most two decimals, no exponent, not a string."))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Money {}

/// For the amounts of a request body (`#[serde(deserialize_with = ...)]`): the number as its JSON text,
/// read by [`Money::from_json_text`] — `f64` would have made `29.9899999999999999999` into `29.99`.
/// Needs serde_json's deserializer, which keeps the number's text.
pub fn deserialize_exact<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Money, D::Error> {
    let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
    Money::from_json_text(raw.get()).map_err(de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_prices_are_exact() {
        assert_eq!(Money::from_json_f64(29.99), Ok(Money::from_cents(2999)));
        assert_eq!(Money::from_json_f64(49.99), Ok(Money::from_cents(4999)));
        assert_eq!(Money::from_json_f64(0.1 + 0.2), Err(MoneyParseError::TooPrecise));
        let parsed: Money = serde_json::from_str("29.99").expect("valid json");
        assert_eq!(parsed.cents(), 2999);
        assert_eq!(serde_json::to_string(&parsed).expect("serialises"), "29.99");
        let from_string: Money = serde_json::from_str("\"0.5\"").expect("string form");
        assert_eq!(from_string.cents(), 50);
    }

    #[test]
    fn bad_amounts_are_named() {
        assert_eq!(Money::parse_decimal("-1"), Err(MoneyParseError::Negative));
        assert_eq!(Money::parse_decimal("1.234"), Err(MoneyParseError::TooPrecise));
        assert_eq!(Money::parse_decimal("1e3"), Err(MoneyParseError::NotANumber));
        assert_eq!(Money::parse_decimal(""), Err(MoneyParseError::NotANumber));
        assert_eq!(Money::parse_decimal("99999999999999999999"), Err(MoneyParseError::TooLarge));
        assert_eq!(Money::parse_decimal("1.230"), Ok(Money::from_cents(123)));
        assert_eq!(Money::parse_decimal("000.07"), Ok(Money::from_cents(7)));
        assert!(serde_json::from_str::<Money>("1e400").is_err());
    }

    /// Issue 17: what `f64` would have rounded to the catalog's price is refused with its reason.
    #[test]
    fn request_amounts_are_read_from_their_text() {
        #[derive(Debug, Deserialize)]
        struct Priced {
            #[serde(deserialize_with = "deserialize_exact")]
            price: Money,
        }
        let read = |json: &str| serde_json::from_str::<Priced>(json).map(|p| p.price).map_err(|e| e.to_string());
        assert_eq!(read(r#"{"price":29.99}"#), Ok(Money::from_cents(2999)));
        assert_eq!(read(r#"{"price": 30 }"#), Ok(Money::from_cents(3000)));
        assert_eq!(read(r#"{"price":29.990}"#), Ok(Money::from_cents(2999)));
        let long_tail = format!(r#"{{"price":3.5{}1}}"#, "0".repeat(5_000));
        for (json, reason) in [
            (r#"{"price":29.9899999999999999999}"#, "more than two decimals"),
            (r#"{"price":29.990000000000000001}"#, "more than two decimals"),
            (long_tail.as_str(), "more than two decimals"),
            (r#"{"price":"29.99"}"#, "not a string"),
            (r#"{"price":2.999e1}"#, "without an exponent"),
            (r#"{"price":-1}"#, "negative"),
            (r#"{"price":null}"#, "not a decimal number"),
            (r#"{"price":true}"#, "not a decimal number"),
        ] {
            let answer = read(json);
            assert!(answer.as_ref().is_err_and(|e| e.contains(reason)), "{json:.60}: {answer:?}");
        }
    }

    #[test]
    fn arithmetic_is_bounded() {
        assert_eq!(Money::from_cents(2999).times(3), Some(Money::from_cents(8997)));
        assert_eq!(Money::from_cents(MONEY_CENTS_MAX).times(2), None);
        assert_eq!(Money::from_cents(MONEY_CENTS_MAX).plus(Money::from_cents(1)), None);
        assert_eq!(Money::from_cents(2999).to_string(), "29.99");
    }

    proptest::proptest! {
        #[test]
        fn every_cent_amount_round_trips_through_json(cents in 0i64..MONEY_CENTS_MAX) {
            let money = Money::from_cents(cents);
            let json = serde_json::to_string(&money).expect("serialises");
            let back: Money = serde_json::from_str(&json).expect("parses");
            proptest::prop_assert_eq!(back, money);
        }
    }
}
