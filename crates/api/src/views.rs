//! What the API shows. Internal fields (reservation generations) stay inside.

use orderly_app::model::Order;
use serde_json::{Value, json};

pub fn order(order: &Order) -> Value {
    let payment = match (&order.payment_id, &order.payment_attempt) {
        (Some(payment_id), _) => json!({ "state": "succeeded", "payment_id": payment_id }),
        (None, Some(_)) => json!({ "state": "pending" }),
        (None, None) => json!({ "state": "none", "last_decline": order.last_decline }),
    };
    json!({
        "order_no": order.order_no,
        "state": order.state.as_str(),
        "uid": order.buyer,
        "to_uid": order.to_uid,
        "shop_id": order.shop_id,
        "pay_at_once": order.pay_at_once,
        "total": order.total,
        "lines": order.lines.iter().map(|l| json!({
            "commodity_id": l.commodity_id,
            "num": l.quantity,
            "unit_price": l.unit_price,
        })).collect::<Vec<_>>(),
        "payment": payment,
        "rejected_for": order.rejected_for,
        "created_ms": order.created_ms,
        "updated_ms": order.updated_ms,
    })
}
