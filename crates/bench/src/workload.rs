//! What the bench sends: a catalog of SKUs over shops with a few hot ones, and buyers' carts drawn from
//! it with a fixed seed, so two runs with the same arguments send the same requests.

use rand::Rng;
use rand::rngs::SmallRng;
use serde::Serialize;
use serde_json::{Value, json};

/// The load shapes of ARCHITECTURE.md's benchmark plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// One hot SKU with a small stock and many buyers: exactly the stock is sold, the rest is sold out.
    Flash,
    /// A long tail plus hot SKUs, carts across shops, pay now / later / cancel / abandon.
    Mixed,
    /// `mixed` offered at 70 %, then three times the measured capacity: the service must shed, not
    /// collapse, and keep the accepted requests' latency.
    Overload,
    /// `mixed` buyers at half the capacity, alone and then beside two abusers (one buyer hammering, and a
    /// crowd hammering one commodity, each offering half the capacity) under per-buyer and per-commodity
    /// rules: the ordinary buyers' latency and success must not change.
    Abuse,
    /// The cart issues 12 and 18 measure their first targets with: one line of one unit, on a commodity
    /// drawn evenly from `mixed`'s catalog with none hot (nothing sells out), with `mixed`'s follow-ups.
    OneLine,
}

impl Scenario {
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Flash => "flash",
            Scenario::Mixed => "mixed",
            Scenario::Overload => "overload",
            Scenario::Abuse => "abuse",
            Scenario::OneLine => "one-line",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sku {
    pub commodity_id: u64,
    pub shop_id: u64,
    pub price_cents: i64,
    pub stock: u32,
}

impl Sku {
    /// The JSON number of the price: `cents / 100` is the double nearest the decimal, the same the
    /// server gets when it parses "29.99".
    fn price(&self) -> f64 {
        self.price_cents as f64 / 100.0
    }
}

/// What a buyer does with an accepted order that was not paid at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowUp {
    PayLater,
    Cancel,
    Abandon,
}

#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    #[serde(skip)]
    pub skus: Vec<Sku>,
    pub sku_count: usize,
    pub shop_count: u64,
    /// The first `hot` SKUs are hot.
    pub hot: usize,
    /// Chance that a cart line picks a hot SKU.
    pub hot_share: f64,
    pub lines_max: usize,
    pub quantity_max: u32,
    pub pay_at_once_share: f64,
    /// Of the orders not paid at once: paid later, cancelled; the rest are abandoned (closed by timeout).
    pub pay_later_share: f64,
    pub cancel_share: f64,
    pub buyers: u64,
    /// Buyer ids are `buyer_base + 1 ..= buyer_base + buyers`: the naive design's carts come from buyers
    /// of their own, so the buyer's-word checks of our entry never judge a buyer by a naive cart.
    pub buyer_base: u64,
}

/// Shop ids start here; buyer ids stay below, so no buyer buys from their own shop.
const SHOP_ID_BASE: u64 = 1_000_000;

impl Workload {
    /// `id_base` keeps the commodity ids of this run apart from any earlier run on the same server.
    pub fn new(scenario: Scenario, id_base: u64, flash_stock: u32, rng: &mut SmallRng) -> Workload {
        match scenario {
            Scenario::Flash => Workload {
                skus: vec![Sku {
                    commodity_id: id_base,
                    shop_id: SHOP_ID_BASE,
                    price_cents: 9_900,
                    stock: flash_stock,
                }],
                sku_count: 1,
                shop_count: 1,
                hot: 1,
                hot_share: 1.0,
                lines_max: 1,
                quantity_max: 1,
                pay_at_once_share: 1.0,
                pay_later_share: 0.0,
                cancel_share: 0.0,
                buyers: 100_000,
                buyer_base: 0,
            },
            Scenario::Mixed | Scenario::Overload | Scenario::Abuse => {
                Workload { hot_share: 0.3, lines_max: 3, quantity_max: 3, ..Workload::spread(id_base, 10, rng) }
            }
            // The issues' 200 buyers.
            Scenario::OneLine => Workload { buyers: 200, ..Workload::spread(id_base, 0, rng) },
        }
    }

    /// 1 000 SKUs over 50 shops, the first `hot` of them hot (with a stock that sells out during a run, so
    /// the sold-out path is exercised too), one-line carts of one unit, and `mixed`'s buyers and follow-ups.
    fn spread(id_base: u64, hot: usize, rng: &mut SmallRng) -> Workload {
        let (sku_count, shop_count) = (1_000usize, 50u64);
        let skus = (0..sku_count)
            .map(|index| Sku {
                commodity_id: id_base + index as u64,
                shop_id: SHOP_ID_BASE + (index as u64 % shop_count),
                price_cents: rng.random_range(100..=99_999),
                stock: if index < hot { 2_000 } else { 1_000_000 },
            })
            .collect();
        Workload {
            skus,
            sku_count,
            shop_count,
            hot,
            hot_share: 0.0,
            lines_max: 1,
            quantity_max: 1,
            pay_at_once_share: 0.3,
            pay_later_share: 0.4,
            cancel_share: 0.15,
            buyers: 20_000,
            buyer_base: 0,
        }
    }

    /// `abuse`: one buyer hammering one-line carts over ten commodities of a shop of their own; its orders
    /// are left unpaid (closed by the timeout).
    pub fn hammering_buyer(id_base: u64) -> Workload {
        Workload::hammering(id_base, 10, SHOP_ID_BASE + 900, 1)
    }

    /// `abuse`: a thousand buyers hammering one commodity (a sale too hot for its own good).
    pub fn hammering_crowd(id_base: u64) -> Workload {
        Workload::hammering(id_base, 1, SHOP_ID_BASE + 901, 1_000)
    }

    fn hammering(id_base: u64, sku_count: usize, shop_id: u64, buyers: u64) -> Workload {
        let skus = (0..sku_count)
            .map(|index| Sku { commodity_id: id_base + index as u64, shop_id, price_cents: 1_000, stock: 1_000_000 })
            .collect();
        Workload {
            skus,
            sku_count,
            shop_count: 1,
            hot: sku_count,
            hot_share: 1.0,
            lines_max: 1,
            quantity_max: 1,
            pay_at_once_share: 0.0,
            pay_later_share: 0.0,
            cancel_share: 0.0,
            buyers,
            buyer_base: 0,
        }
    }

    /// The admin catalog bodies, in chunks the endpoint accepts (items and body size).
    pub fn catalog_bodies(&self) -> Vec<Value> {
        self.skus
            .chunks(orderly_api::routes::CATALOG_ITEMS_MAX.min(250))
            .map(|chunk| {
                let commodities: Vec<Value> = chunk
                    .iter()
                    .map(|sku| {
                        json!({"commodity_id": sku.commodity_id, "shop_id": sku.shop_id, "price": sku.price(),
                               "add_stock": sku.stock})
                    })
                    .collect();
                json!({ "commodities": commodities })
            })
            .collect()
    }

    fn pick_sku(&self, rng: &mut SmallRng) -> usize {
        if self.hot >= self.skus.len() || rng.random_bool(self.hot_share) {
            rng.random_range(0..self.hot.min(self.skus.len()))
        } else {
            rng.random_range(self.hot..self.skus.len())
        }
    }

    /// The same workload for buyers after those of `other` (ids never shared with it).
    pub fn with_buyers_after(mut self, other: &Workload) -> Workload {
        self.buyer_base = other.buyer_base + other.buyers;
        assert!(self.buyer_base + self.buyers < SHOP_ID_BASE, "buyer ids stay below shop ids");
        self
    }

    /// A buyer and the seed's request body for one cart; whether it pays at once.
    pub fn cart(&self, rng: &mut SmallRng) -> (u64, Value, bool) {
        let uid = self.buyer_base + rng.random_range(1..=self.buyers);
        let lines = rng.random_range(1..=self.lines_max);
        let mut picked: Vec<usize> = Vec::with_capacity(lines);
        for _ in 0..lines {
            let index = self.pick_sku(rng);
            if !picked.contains(&index) {
                picked.push(index);
            }
        }
        let pay_at_once = rng.random_bool(self.pay_at_once_share);
        let details: Vec<Value> = picked
            .iter()
            .map(|&index| {
                let sku = &self.skus[index];
                json!({"actual_price": sku.price(), "commodity_id": sku.commodity_id, "good_type": 1, "page_type": 0,
                       "prices": sku.price(), "user_id": sku.shop_id, "num": rng.random_range(1..=self.quantity_max)})
            })
            .collect();
        let body = json!({"uid": uid, "to_uid": uid, "origin_price": 0, "actual_price": 0, "pay_at_once": pay_at_once,
                          "commodity_details": details});
        (uid, body, pay_at_once)
    }

    pub fn follow_up(&self, rng: &mut SmallRng) -> FollowUp {
        let draw: f64 = rng.random();
        if draw < self.pay_later_share {
            FollowUp::PayLater
        } else if draw < self.pay_later_share + self.cancel_share {
            FollowUp::Cancel
        } else {
            FollowUp::Abandon
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    /// `one-line`: every cart is one unit of one commodity, drawn evenly from a catalog with nothing hot,
    /// so nothing sells out.
    #[test]
    fn one_line_carts_are_one_unit_of_any_commodity() {
        let mut rng = SmallRng::seed_from_u64(7);
        let workload = Workload::new(Scenario::OneLine, 5_000_000, 10, &mut rng);
        assert_eq!((workload.skus.len(), workload.shop_count, workload.buyers), (1_000, 50, 200));
        assert!(workload.skus.iter().all(|sku| sku.stock == 1_000_000), "no SKU sells out");
        assert_eq!((workload.hot, workload.hot_share), (0, 0.0), "no SKU drawn more than another");
        let mixed = Workload::new(Scenario::Mixed, 5_000_000, 10, &mut SmallRng::seed_from_u64(7));
        let shares = |w: &Workload| (w.pay_at_once_share, w.pay_later_share, w.cancel_share);
        assert_eq!(shares(&workload), shares(&mixed), "mixed's follow-ups");
        let mut drawn = std::collections::HashSet::new();
        for _ in 0..5_000 {
            let (uid, body, _) = workload.cart(&mut rng);
            assert!((1..=200).contains(&uid));
            let lines = body["commodity_details"].as_array().expect("lines");
            assert_eq!(lines.len(), 1, "{body}");
            assert_eq!(lines[0]["num"].as_u64(), Some(1), "{body}");
            drawn.insert(lines[0]["commodity_id"].as_u64().expect("id"));
        }
        // 5 000 even draws over 1 000 SKUs miss each with a chance of e^-5: about 7 missed.
        assert!(drawn.len() > 950, "drawn from the whole catalog: {} SKUs", drawn.len());
    }

    #[test]
    fn carts_are_valid_and_reproducible() {
        let mut rng = SmallRng::seed_from_u64(7);
        let workload = Workload::new(Scenario::Mixed, 5_000_000, 10, &mut rng);
        let draw = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            (0..200).map(|_| workload.cart(&mut rng)).collect::<Vec<_>>()
        };
        let carts = draw(1);
        assert_eq!(carts, draw(1), "the same seed sends the same requests");
        for (uid, body, _) in &carts {
            assert!(*uid < SHOP_ID_BASE);
            let lines = body["commodity_details"].as_array().expect("lines");
            assert!((1..=workload.lines_max).contains(&lines.len()));
            for line in lines {
                let id = line["commodity_id"].as_u64().expect("id");
                let sku = workload.skus.iter().find(|s| s.commodity_id == id).expect("a catalog SKU");
                assert_eq!(line["user_id"].as_u64(), Some(sku.shop_id));
                // The price the server will parse is the catalog's, to the cent.
                let price: orderly_domain::Money = serde_json::from_value(line["prices"].clone()).expect("money");
                assert_eq!(price, orderly_domain::Money::from_cents(sku.price_cents));
            }
        }
        let hot = carts
            .iter()
            .flat_map(|(_, body, _)| body["commodity_details"].as_array().cloned().unwrap_or_default())
            .filter(|line| line["commodity_id"].as_u64().is_some_and(|id| id < 5_000_000 + workload.hot as u64))
            .count();
        assert!(hot > 0, "hot SKUs are drawn");
    }
}
