//! The seed's order request, validated and priced against the catalog, then split one order per shop.
//!
//! Prices and totals are the server's. Every line's `prices` and `actual_price` must equal the catalog's
//! unit price, or the request is refused naming the line. The body's order-level `origin_price` and
//! `actual_price` are never used: the server computes each order's total from the catalog. (The seed's
//! own example sends `origin_price: 29.99` for two lines worth 79.98, so refusing on them would refuse
//! the seed's request; ignoring them charges nothing the buyer did not confirm line by line.)
//! Field names are the seed's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{CommodityId, ShopId, Uid};
use crate::money::Money;

/// The seed's request body (`POST /api/orders`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({
    "uid": 1, "to_uid": 2, "origin_price": 29.99, "actual_price": 29.99, "pay_at_once": false,
    "commodity_details": [
        {"actual_price": 29.99, "commodity_id": 1, "good_type": 1, "page_type": 0, "prices": 29.99, "user_id": 100001, "num": 1},
        {"actual_price": 49.99, "commodity_id": 2, "good_type": 1, "page_type": 0, "prices": 49.99, "user_id": 100002, "num": 1}
    ]
})))]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderBody {
    pub uid: Uid,
    pub to_uid: Uid,
    /// The client's idea of the list total. Informational only: never used for charging.
    #[serde(deserialize_with = "crate::money::deserialize_exact")]
    pub origin_price: Money,
    /// The client's idea of the total to pay. Informational only: never used for charging.
    #[serde(deserialize_with = "crate::money::deserialize_exact")]
    pub actual_price: Money,
    #[serde(default)]
    pub pay_at_once: bool,
    pub commodity_details: Vec<PlaceOrderLine>,
}

/// One line of the seed's cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderLine {
    /// Unit price the buyer pays.
    #[serde(deserialize_with = "crate::money::deserialize_exact")]
    pub actual_price: Money,
    pub commodity_id: CommodityId,
    #[serde(default)]
    pub good_type: u32,
    #[serde(default)]
    pub page_type: u32,
    /// Unit list price.
    #[serde(deserialize_with = "crate::money::deserialize_exact")]
    pub prices: Money,
    /// The shop selling this line.
    pub user_id: ShopId,
    /// Quantity, 1 to the cart limit (1 000 by default). Signed so that a negative number gets a precise
    /// rejection, not a parse error.
    pub num: i64,
}

/// What the catalog says about a commodity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub commodity_id: CommodityId,
    pub shop_id: ShopId,
    pub unit_price: Money,
}

/// Bounds on a cart; every one has a configured default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartLimits {
    pub lines_max: usize,
    pub quantity_per_line_max: u32,
}

impl Default for CartLimits {
    fn default() -> Self {
        CartLimits { lines_max: 50, quantity_per_line_max: 1_000 }
    }
}

/// Why a cart is refused. `line` is the index in `commodity_details`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CartRejection {
    #[error("the cart has no lines")]
    Empty,
    #[error("the cart has {lines} lines, at most {lines_max} allowed")]
    TooManyLines { lines: usize, lines_max: usize },
    #[error("line {line}: quantity {num} must be between 1 and {quantity_max}")]
    QuantityOutOfRange { line: usize, num: i64, quantity_max: u32 },
    #[error("line {line}: commodity {commodity_id} appears more than once")]
    DuplicateCommodity { line: usize, commodity_id: CommodityId },
    #[error("line {line}: unknown commodity {commodity_id}")]
    UnknownCommodity { line: usize, commodity_id: CommodityId },
    #[error("line {line}: commodity {commodity_id} is sold by shop {actual}, not {claimed}")]
    WrongShop { line: usize, commodity_id: CommodityId, claimed: ShopId, actual: ShopId },
    #[error("line {line}: price {claimed} disagrees with the catalog price {catalog}")]
    PriceMismatch { line: usize, claimed: Money, catalog: Money },
    #[error("the total is too large")]
    TotalTooLarge,
    #[error("buyer {uid} cannot be the seller of line {line}")]
    BuyingFromSelf { line: usize, uid: Uid },
}

/// A priced line of one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub commodity_id: CommodityId,
    pub quantity: u32,
    pub unit_price: Money,
}

/// One order per shop, priced by the server, not yet numbered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderDraft {
    pub buyer: Uid,
    pub to_uid: Uid,
    pub shop_id: ShopId,
    pub pay_at_once: bool,
    pub lines: Vec<OrderLine>,
    pub total: Money,
}

impl CartLimits {
    /// A cart of `lines` lines is within bounds: checked before anything is looked up or limited for
    /// it, so a huge cart costs nothing.
    pub fn check_size(&self, lines: usize) -> Result<(), CartRejection> {
        match lines > self.lines_max {
            true => Err(CartRejection::TooManyLines { lines, lines_max: self.lines_max }),
            false => Ok(()),
        }
    }
}

/// Validates the body, prices it from `catalog`, and splits it one order per shop (ordered by shop id,
/// lines in request order). `catalog` answers `None` for an unknown commodity.
pub fn price_and_split(
    body: &PlaceOrderBody,
    limits: CartLimits,
    catalog: impl Fn(CommodityId) -> Option<CatalogEntry>,
) -> Result<Vec<OrderDraft>, CartRejection> {
    let lines = &body.commodity_details;
    if lines.is_empty() {
        return Err(CartRejection::Empty);
    }
    limits.check_size(lines.len())?;
    let mut seen = BTreeMap::new();
    let mut by_shop: BTreeMap<ShopId, Vec<OrderLine>> = BTreeMap::new();
    let mut cart_total = Money::ZERO;
    for (index, line) in lines.iter().enumerate() {
        let quantity = u32::try_from(line.num).ok().filter(|q| (1..=limits.quantity_per_line_max).contains(q)).ok_or(
            CartRejection::QuantityOutOfRange {
                line: index,
                num: line.num,
                quantity_max: limits.quantity_per_line_max,
            },
        )?;
        if seen.insert(line.commodity_id, index).is_some() {
            return Err(CartRejection::DuplicateCommodity { line: index, commodity_id: line.commodity_id });
        }
        let entry = catalog(line.commodity_id)
            .ok_or(CartRejection::UnknownCommodity { line: index, commodity_id: line.commodity_id })?;
        if entry.shop_id != line.user_id {
            return Err(CartRejection::WrongShop {
                line: index,
                commodity_id: line.commodity_id,
                claimed: line.user_id,
                actual: entry.shop_id,
            });
        }
        if entry.shop_id.0 == body.uid.0 {
            return Err(CartRejection::BuyingFromSelf { line: index, uid: body.uid });
        }
        for claimed in [line.prices, line.actual_price] {
            if claimed != entry.unit_price {
                return Err(CartRejection::PriceMismatch { line: index, claimed, catalog: entry.unit_price });
            }
        }
        let line_total = entry.unit_price.times(quantity).ok_or(CartRejection::TotalTooLarge)?;
        // Bounding the whole cart bounds every order's total, so the sums below cannot overflow.
        cart_total = cart_total.plus(line_total).ok_or(CartRejection::TotalTooLarge)?;
        by_shop.entry(entry.shop_id).or_default().push(OrderLine {
            commodity_id: line.commodity_id,
            quantity,
            unit_price: entry.unit_price,
        });
    }
    Ok(by_shop
        .into_iter()
        .map(|(shop_id, lines)| {
            let total = Money::from_cents(lines.iter().map(|l| l.unit_price.cents() * i64::from(l.quantity)).sum());
            OrderDraft { buyer: body.uid, to_uid: body.to_uid, shop_id, pay_at_once: body.pay_at_once, lines, total }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(id: CommodityId) -> Option<CatalogEntry> {
        match id.0 {
            1 => Some(CatalogEntry { commodity_id: id, shop_id: ShopId(100_001), unit_price: Money::from_cents(2999) }),
            2 => Some(CatalogEntry { commodity_id: id, shop_id: ShopId(100_002), unit_price: Money::from_cents(4999) }),
            3 => Some(CatalogEntry { commodity_id: id, shop_id: ShopId(100_001), unit_price: Money::from_cents(100) }),
            _ => None,
        }
    }

    pub(crate) fn seed_body() -> PlaceOrderBody {
        serde_json::from_str(
            r#"{"uid":1,"to_uid":2,"origin_price":29.99,"actual_price":29.99,"pay_at_once":true,
            "commodity_details":[
              {"actual_price":29.99,"commodity_id":1,"good_type":1,"page_type":0,"prices":29.99,"user_id":100001,"num":1},
              {"actual_price":49.99,"commodity_id":2,"good_type":1,"page_type":0,"prices":49.99,"user_id":100002,"num":1}]}"#,
        )
        .expect("the seed's body parses")
    }

    #[test]
    fn seed_request_splits_into_one_order_per_shop() {
        // The seed's body claims 29.99 in total for lines worth 79.98: the server's totals win.
        let body = seed_body();
        let orders = price_and_split(&body, CartLimits::default(), catalog).expect("valid cart");
        assert_eq!(orders.len(), 2);
        assert_eq!(orders[0].shop_id, ShopId(100_001));
        assert_eq!(orders[0].total, Money::from_cents(2999));
        assert_eq!(orders[1].shop_id, ShopId(100_002));
        assert_eq!(orders[1].total, Money::from_cents(4999));
        assert!(orders.iter().all(|o| o.pay_at_once && o.buyer == Uid(1)));
    }

    #[test]
    fn lines_of_one_shop_stay_in_one_order() {
        let mut body = seed_body();
        body.commodity_details[1] = PlaceOrderLine {
            actual_price: Money::from_cents(100),
            commodity_id: CommodityId(3),
            good_type: 0,
            page_type: 0,
            prices: Money::from_cents(100),
            user_id: ShopId(100_001),
            num: 5,
        };
        let orders = price_and_split(&body, CartLimits::default(), catalog).expect("valid cart");
        assert_eq!(orders.len(), 1);
        assert_eq!(orders[0].lines.len(), 2);
        assert_eq!(orders[0].total, Money::from_cents(3499));
    }

    #[test]
    fn every_bad_cart_gets_a_named_rejection() {
        let limits = CartLimits { lines_max: 2, quantity_per_line_max: 10 };
        let check = |edit: &dyn Fn(&mut PlaceOrderBody), expected: CartRejection| {
            let mut body = seed_body();
            edit(&mut body);
            assert_eq!(price_and_split(&body, limits, catalog), Err(expected));
        };
        check(&|b| b.commodity_details.clear(), CartRejection::Empty);
        check(
            &|b| {
                let extra = b.commodity_details[0].clone();
                b.commodity_details.push(extra);
            },
            CartRejection::TooManyLines { lines: 3, lines_max: 2 },
        );
        for num in [0, -1, 11, i64::MAX] {
            check(
                &|b| b.commodity_details[1].num = num,
                CartRejection::QuantityOutOfRange { line: 1, num, quantity_max: 10 },
            );
        }
        check(
            &|b| b.commodity_details[1] = b.commodity_details[0].clone(),
            CartRejection::DuplicateCommodity { line: 1, commodity_id: CommodityId(1) },
        );
        check(
            &|b| b.commodity_details[1].commodity_id = CommodityId(9),
            CartRejection::UnknownCommodity { line: 1, commodity_id: CommodityId(9) },
        );
        check(
            &|b| b.commodity_details[1].user_id = ShopId(100_001),
            CartRejection::WrongShop {
                line: 1,
                commodity_id: CommodityId(2),
                claimed: ShopId(100_001),
                actual: ShopId(100_002),
            },
        );
        check(
            &|b| b.commodity_details[0].actual_price = Money::from_cents(1),
            CartRejection::PriceMismatch { line: 0, claimed: Money::from_cents(1), catalog: Money::from_cents(2999) },
        );
        check(&|b| b.uid = Uid(100_002), CartRejection::BuyingFromSelf { line: 1, uid: Uid(100_002) });
    }
}
