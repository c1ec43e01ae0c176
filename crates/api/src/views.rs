//! What the API shows, one type per answer: the handlers serialise these, and the OpenAPI document
//! ([`crate::openapi`]) describes these same types. Internal fields (reservation generations) stay inside.

use std::collections::BTreeMap;

use orderly_app::admin::WorkToDo;
use orderly_app::model::{Order, Topic};
use orderly_domain::{CommodityId, Money, OrderNo, OrderState, ShopId, Uid};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// The seed's success envelope around an answer's `data`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Envelope<T> {
    /// Equals the HTTP status.
    pub status: u16,
    /// `"OK"`.
    pub message: &'static str,
    pub data: T,
}

/// `POST /api/orders`: the accepted orders, one per shop, by shop id.
#[derive(Debug, Serialize, ToSchema)]
pub struct Placed {
    pub order_no: Vec<OrderNo>,
}

/// An order as its buyer sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderView {
    pub order_no: OrderNo,
    pub state: OrderState,
    /// The buyer.
    pub uid: Uid,
    pub to_uid: Uid,
    pub shop_id: ShopId,
    pub pay_at_once: bool,
    /// Computed by the server from the catalog's prices.
    pub total: Money,
    pub lines: Vec<LineView>,
    pub payment: PaymentView,
    /// The commodity that ran out when the order was rejected after acceptance.
    #[schema(required = true)]
    pub rejected_for: Option<CommodityId>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LineView {
    pub commodity_id: CommodityId,
    pub num: u32,
    pub unit_price: Money,
}

/// Where the order's payment stands.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PaymentView {
    /// No charge succeeded; the last one declined, if any, says why.
    None {
        #[schema(required = true)]
        last_decline: Option<String>,
    },
    /// A charge without a definite answer: the reconciler settles it.
    Pending,
    Succeeded {
        payment_id: String,
    },
}

pub fn order(order: &Order) -> OrderView {
    let payment = match (&order.payment_id, &order.payment_attempt) {
        (Some(payment_id), _) => PaymentView::Succeeded { payment_id: payment_id.clone() },
        (None, Some(_)) => PaymentView::Pending,
        (None, None) => PaymentView::None { last_decline: order.last_decline.clone() },
    };
    OrderView {
        order_no: order.order_no,
        state: order.state,
        uid: order.buyer,
        to_uid: order.to_uid,
        shop_id: order.shop_id,
        pay_at_once: order.pay_at_once,
        total: order.total,
        lines: order
            .lines
            .iter()
            .map(|l| LineView { commodity_id: l.commodity_id, num: l.quantity, unit_price: l.unit_price })
            .collect(),
        payment,
        rejected_for: order.rejected_for,
        created_ms: order.created_ms,
        updated_ms: order.updated_ms,
    }
}

/// `GET /api/orders`: a page of the caller's orders, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    pub orders: Vec<OrderView>,
    /// Pass as `before` for the next page; null on an empty page.
    #[schema(required = true)]
    pub next_before: Option<OrderNo>,
}

/// `GET /api/commodities/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommodityView {
    pub commodity_id: CommodityId,
    pub shop_id: ShopId,
    pub price: Money,
    /// What can still be sold (the stock cache's count).
    pub stock: u64,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub ok: bool,
}

/// `POST /api/admin/catalog`: how many commodities the request held.
#[derive(Debug, Serialize, ToSchema)]
pub struct CatalogLoaded {
    pub commodities: usize,
}

/// `POST /api/admin/stock`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StockAdded {
    pub commodity_id: CommodityId,
    pub available: u64,
}

/// `GET /api/admin/bus`: work still to do.
#[derive(Debug, Serialize, ToSchema)]
pub struct Work {
    /// `[topic, messages waiting]` per topic, delayed ones included; `reservation_check` counts the checks
    /// the stock cache keeps too (armed with each reservation, not published).
    #[schema(value_type = Vec<Vec<Value>>)]
    pub queued: Vec<(Topic, usize)>,
    pub dead_letters: usize,
    /// Outbox events not relayed yet, counted up to 1 000.
    pub outbox: usize,
    /// Payments without a definite answer.
    pub payments_pending: usize,
}

impl From<WorkToDo> for Work {
    fn from(work: WorkToDo) -> Self {
        Work {
            queued: work.queued,
            dead_letters: work.dead_letters,
            outbox: work.outbox,
            payments_pending: work.payments_pending,
        }
    }
}

/// `GET /api/admin/audit`: the invariants' report and the bus's depth.
#[derive(Debug, Serialize, ToSchema)]
pub struct Audit {
    /// `quiet`, `orders_by_state`, `stock`, `violations` (docs/ARCHITECTURE.md, I1–I5).
    #[schema(value_type = Object)]
    pub report: Value,
    #[schema(value_type = Object)]
    pub bus: Value,
}

/// `GET /api/admin/config`: settings changed at run time, and every setting in force here.
#[derive(Debug, Serialize, ToSchema)]
pub struct Config {
    /// Key → JSON text of the value.
    pub settings: BTreeMap<String, String>,
    pub effective: BTreeMap<String, String>,
}

/// `PUT` and `DELETE /api/admin/config/{key}`: the setting now in force (null when removed).
#[derive(Debug, Serialize, ToSchema)]
pub struct Setting {
    pub key: String,
    #[schema(required = true)]
    pub value: Option<String>,
}

/// `GET /api/admin/cluster`: `servers`, `members`, `worker_ids`, `leaders` of the registry.
#[derive(Debug, Serialize, ToSchema)]
#[schema(value_type = Object)]
pub struct Cluster(pub Value);

/// `GET /api/admin/limits`: the rate rules in force with what they refused, and the concurrency limit.
#[derive(Debug, Serialize, ToSchema)]
pub struct Limits {
    pub rules: Vec<RuleView>,
    pub caps: CapsView,
    pub concurrency: crate::adaptive::LimitView,
}

/// The buyer's caps in force (`flow.buyer_caps.…`; 0: off) and the carts they refused since the process
/// started.
#[derive(Debug, Serialize, ToSchema)]
pub struct CapsView {
    /// Units of one commodity a buyer may hold in live orders (`purchase_cap_reached`).
    pub units_per_commodity: u32,
    /// How far back a paid order counts towards them.
    pub window_ms: u64,
    /// Orders a buyer may have unpaid at once (`unpaid_orders_cap_reached`).
    pub unpaid_orders: u32,
    pub refused_purchase_cap: u64,
    pub refused_unpaid_orders_cap: u64,
}

/// One rate rule: its setting, the keys it tracks, the carts it refused since the process started.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleView {
    /// `global`, `buyer`, `commodity` or `shop`.
    pub rule: &'static str,
    /// Its 429's code.
    pub code: &'static str,
    /// Admitted per second (per key); 0: off.
    pub per_second: u32,
    pub burst: u32,
    /// 0: refuse at once; more: wait up to this long for a token.
    pub queue_ms: u64,
    /// Taken from the cluster's shared buckets (the rate holds across every API), not this process's.
    pub shared: bool,
    /// Keys with a bucket now (buyers, commodities or shops seen lately).
    pub keys: usize,
    pub refused: u64,
}
